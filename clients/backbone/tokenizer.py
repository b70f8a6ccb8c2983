"""The demo backbone's word-level tokenizer: one token per whitespace-split word."""

SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>"]


class WordTokenizer:
    """Whitespace-split words -> ids; unknown words map to <unk>. encode() prepends <bos>.

    An empty word marks an id that does not exist, as in a bank's vocabulary at a version where
    an injected token was removed: `WordTokenizer(kb.vocabulary(table, v))` knows the words
    injected by then."""

    def __init__(self, words: list[str]):
        named = [w for w in words if w]
        if words[: len(SPECIAL_TOKENS)] != SPECIAL_TOKENS or len(set(named)) != len(named):
            raise ValueError(f"vocab must start with {SPECIAL_TOKENS} and have no repeats")
        self.vocab = list(words)
        self.index = {w: i for i, w in enumerate(self.vocab) if w}
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = range(len(SPECIAL_TOKENS))

    def __len__(self):
        return len(self.vocab)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = [self.index.get(w, self.unk_id) for w in text.split()]
        return [self.bos_id] + ids if add_bos else ids

    def decode(self, ids, skip_special: bool = True) -> str:
        words = (self.vocab[int(i)] for i in ids)
        return " ".join(w for w in words if not (skip_special and w in SPECIAL_TOKENS))

    def save(self, path):
        """One word per line, in id order."""
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(self.vocab) + "\n")

    @classmethod
    def load(cls, path) -> "WordTokenizer":
        with open(path, encoding="utf-8") as f:
            return cls(f.read().split("\n")[:-1])

    def save_hf(self, path):
        """Write a tokenizer.json that `tokenizers.Tokenizer.from_file` reads with the same ids."""
        from tokenizers import Tokenizer, models, pre_tokenizers, processors

        hf = Tokenizer(models.WordLevel(vocab=self.index, unk_token="<unk>"))
        hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        hf.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", self.bos_id)]
        )
        hf.add_special_tokens(SPECIAL_TOKENS)
        hf.save(str(path))
