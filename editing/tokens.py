"""Token resolution: the words and entities an edit names, as the bank's token ids.

A bank's rows are indexed by token id, so every edit starts here. The vocabulary is either a
plain word list (id = position; entities are split on whitespace) or a Hugging Face
``tokenizer.json`` (entities are the tokenizer's own encoding, without special tokens), so an
edit hits exactly the rows the model reads for that text.

    >>> v = Vocabulary(["Spain", "Germany", "Berlin"])
    >>> v.id_of("Germany"), v.encode_entity("Spain Berlin"), v.add("Atlantis")
    (1, [0, 2], 3)
"""
from memsvc.core.errors import InvalidArgument, NotFound, OutOfRange


class Vocabulary:
    """Word <-> token id for one bank; grows by ``add`` (injection).

    Ids are contiguous 0..len-1 because they index the rows of the bank's tables.
    """

    def __init__(self, words, tokenizer=None):
        """words: the token strings in id order. tokenizer: a ``tokenizers.Tokenizer`` whose
        vocabulary these are (use ``from_tokenizer_file`` / ``from_tokenizer_json``)."""
        self._words = list(words)
        self._ids = {}
        for i, word in enumerate(self._words):
            if word in self._ids:
                raise InvalidArgument(f"words: duplicate word {word!r} at ids {self._ids[word]} and {i}")
            self._ids[word] = i
        self._tokenizer = tokenizer

    @classmethod
    def from_tokenizer(cls, tokenizer):
        """Wrap a ``tokenizers.Tokenizer``; its added tokens count as words too."""
        by_id = {i: w for w, i in tokenizer.get_vocab(with_added_tokens=True).items()}
        missing = [i for i in range(len(by_id)) if i not in by_id]
        if missing:
            raise InvalidArgument(f"tokenizer: token ids are not contiguous (id {missing[0]} is missing)")
        return cls([by_id[i] for i in range(len(by_id))], tokenizer=tokenizer)

    @classmethod
    def from_tokenizer_file(cls, path):
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception on unreadable/invalid files
            raise InvalidArgument(f"tokenizer: cannot read {str(path)!r}: {e}") from e
        return cls.from_tokenizer(tokenizer)

    @classmethod
    def from_tokenizer_json(cls, text):
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_str(text)
        except Exception as e:
            raise InvalidArgument(f"tokenizer: invalid tokenizer.json: {e}") from e
        return cls.from_tokenizer(tokenizer)

    def __len__(self):
        return len(self._words)

    def id_of(self, word, field="token"):
        """The token id of one exact token string; NotFound names ``field``."""
        try:
            return self._ids[word]
        except KeyError:
            raise NotFound(f"{field}: unknown token {word!r}") from None

    def word_of(self, token_id, field="token_id"):
        if not 0 <= token_id < len(self._words):
            raise OutOfRange(f"{field}: token id {token_id} out of range [0, {len(self._words)})")
        return self._words[token_id]

    def encode_entity(self, text, field="entity"):
        """The token ids of an entity's text, in order (one or more tokens).

        Word list: whitespace-separated words, each must exist. Tokenizer: its encoding without
        special tokens; a piece that falls back to the unknown token raises NotFound.
        """
        if not text or not text.strip():
            raise InvalidArgument(f"{field}: empty entity")
        if self._tokenizer is None:
            return [self.id_of(word, field) for word in text.split()]
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        unk = getattr(self._tokenizer.model, "unk_token", None)
        for token, (start, end) in zip(encoding.tokens, encoding.offsets):
            if unk is not None and token == unk and text[start:end] != unk:
                raise NotFound(f"{field}: unknown token {text[start:end]!r}")
        if not encoding.ids:
            raise InvalidArgument(f"{field}: {text!r} encodes to no tokens")
        return list(encoding.ids)

    def add(self, word):
        """Inject a new token; it gets the next id (= the old length), which is returned."""
        if not isinstance(word, str) or not word.strip():
            raise InvalidArgument("token: a new token must be a non-empty, non-whitespace string")
        if word in self._ids:
            raise InvalidArgument(f"token: {word!r} already exists (id {self._ids[word]})")
        new_id = len(self._words)
        if self._tokenizer is not None:
            # An added token is matched before pre-tokenization, so encode_entity finds it too.
            self._tokenizer.add_tokens([word])
            assigned = self._tokenizer.token_to_id(word)
            if assigned != new_id:
                raise InvalidArgument(f"token: the tokenizer gave {word!r} id {assigned}, expected {new_id}")
        self._words.append(word)
        self._ids[word] = new_id
        return new_id

    def words(self):
        """All token strings in id order (a copy)."""
        return list(self._words)
