"""Token resolution: the words and entities an edit names, as the bank's token ids.

A bank's rows are indexed by token id, so every edit starts here. The vocabulary is a plain word
list (id = position; entities are split on whitespace) or a real tokenizer (editing/tokenizers.py:
a Hugging Face ``tokenizer.json``, a sentencepiece ``.model`` or a tiktoken rank file). With a
tokenizer an entity is the ids the model reads for it *in running text*: byte-level BPE and
tiktoken give " Spain" (mid-sentence) another id than "Spain" (start of text), WordPiece splits an
unknown word into ``##`` pieces and lowercases for an uncased model; so an edit hits exactly the
rows the model reads for that text.

    >>> v = Vocabulary(["Spain", "Germany", "Berlin"])
    >>> v.id_of("Germany"), v.encode_entity("Spain Berlin"), v.add("Atlantis")
    (1, [0, 2], 3)
"""
import re

from editing.tokenizers import HuggingFaceEncoder, encoder_from, read_tokenizer_file
from memsvc.core.errors import InvalidArgument, NotFound, OutOfRange

RUNNING_TEXT = "the"  # encoded before an entity and dropped: the entity's pieces as mid-sentence text


class Vocabulary:
    """Word <-> token id for one bank; grows by ``add`` (injection).

    Ids are contiguous 0..len-1 because they index the rows of the bank's tables.
    """

    def __init__(self, words, encoder=None):
        """words: the token strings in id order. encoder: the tokenizer these are the pieces of
        (editing/tokenizers.py), or None for a plain word list."""
        self._words = list(words)
        self._ids = {}
        for i, word in enumerate(self._words):
            if not word:
                continue  # an id that does not exist at this version (a removed injection)
            if word in self._ids:
                raise InvalidArgument(f"words: duplicate word {word!r} at ids {self._ids[word]} and {i}")
            self._ids[word] = i
        self.encoder = encoder
        self._added = {}  # injected words an encoder cannot learn: matched whole before encoding

    @classmethod
    def from_tokenizer(cls, tokenizer):
        """Wrap a ``tokenizers.Tokenizer``; its added tokens count as words too."""
        encoder = HuggingFaceEncoder(tokenizer)
        return cls(encoder.pieces, encoder)

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
        encoder = HuggingFaceEncoder.from_text(text)
        return cls(encoder.pieces, encoder)

    @classmethod
    def from_file(cls, path):
        """A word list, tokenizer.json, sentencepiece .model or tiktoken rank file, told apart by content."""
        encoder, words = read_tokenizer_file(path)
        return cls(words, encoder)

    @classmethod
    def of(cls, store, table, version=None):
        """The vocabulary of a store's table at a version (a KnowledgeBase or a MemoryClient): its
        words, encoded by the tokenizer imported with it; words past the tokenizer's own pieces
        (injected since, or ids the tokenizer has no text for) are matched whole."""
        return cls.stored(store.vocabulary(table, version), store.tokenizer(table, version))

    @classmethod
    def stored(cls, words, tokenizer):
        """The vocabulary of a table's words by id ('' for ids that do not exist) and the tokenizer
        (kind, file bytes) imported with it; kind '' is a plain word list."""
        kind, data = tokenizer
        vocab = cls(words, encoder_from(kind, data) if kind else None)
        if vocab.encoder is not None:  # words the tokenizer has no pieces for are matched whole
            vocab._added = {w: i for i, w in enumerate(words) if i >= len(vocab.encoder.pieces) and w}
        return vocab

    def __len__(self):
        return len(self._words)

    def id_of(self, word, field="token"):
        """The token id of one exact token string; NotFound names ``field``."""
        try:
            return self._ids[word]
        except KeyError:
            raise NotFound(f"{field}: unknown token {word!r}") from None

    def resolve(self, word, field="token"):
        """The id of a word as typed: an exact token string, else (with a tokenizer) the one piece
        the model reads for it in running text ("Paris" -> "paris" uncased, "Spain" -> "ĠSpain")."""
        if word in self._ids or self.encoder is None:
            return self.id_of(word, field)
        ids = self.encode_entity(word, field)
        if len(ids) != 1:
            raise NotFound(f"{field}: {word!r} is {len(ids)} pieces ({', '.join(self.pieces(ids))}), not one token; "
                           f"edit it as an entity")
        return ids[0]

    def word_of(self, token_id, field="token_id"):
        if not 0 <= token_id < len(self._words):
            raise OutOfRange(f"{field}: token id {token_id} out of range [0, {len(self._words)})")
        return self._words[token_id]

    def pieces(self, ids):
        return [self._words[i] for i in ids]

    def encode_entity(self, text, field="entity"):
        """The token ids of an entity's text, in order (one or more tokens).

        Word list: whitespace-separated words, each must exist. Tokenizer: the pieces the model
        reads for the text in running text (after a word, without special tokens); a piece that
        falls back to the unknown token raises NotFound.
        """
        if not text or not text.strip():
            raise InvalidArgument(f"{field}: empty entity")
        if self.encoder is None:
            return [self.id_of(word, field) for word in text.split()]
        ids = []
        for part, added in self._split_added(text.strip()):
            ids += [added] if added is not None else self._running_text(part, field)
        if not ids:
            raise InvalidArgument(f"{field}: {text!r} encodes to no tokens")
        return ids

    def _split_added(self, text):
        """(text, None) parts to encode and (word, id) for injected words the encoder cannot learn."""
        if not self._added:
            return [(text, None)]
        pattern = "|".join(re.escape(w) for w in sorted(self._added, key=len, reverse=True))
        parts, pos = [], 0
        for m in re.finditer(pattern, text):
            parts += [(text[pos:m.start()], None)] if text[pos:m.start()].strip() else []
            parts.append((m.group(), self._added[m.group()]))
            pos = m.end()
        return parts + ([(text[pos:], None)] if text[pos:].strip() else [])

    def _running_text(self, text, field):
        alone, unknown = self.encoder.encode(text.strip())
        if unknown:
            raise NotFound(f"{field}: unknown token {unknown[0]!r}")
        before, _ = self.encoder.encode(RUNNING_TEXT)
        ids, _ = self.encoder.encode(f"{RUNNING_TEXT} {text.strip()}")
        return ids[len(before):] if ids[:len(before)] == before else alone  # else the prefix merged into the text

    def shared_pieces(self, ids):
        """The pieces of an entity that other text reads too: every piece of an entity that is not
        a single token of its own ("new" and "york" of "new york", "el" of "el ##bria ##r")."""
        return self.pieces(ids) if len(ids) > 1 else []

    def add(self, word):
        """Inject a new token; it gets the next id (= the old length), which is returned."""
        if not isinstance(word, str) or not word.strip():
            raise InvalidArgument("token: a new token must be a non-empty, non-whitespace string")
        if word in self._ids:
            raise InvalidArgument(f"token: {word!r} already exists (id {self._ids[word]})")
        new_id = len(self._words)
        if self.encoder is not None:
            assigned = self.encoder.add(word)
            if assigned is None:
                self._added[word] = new_id
            elif assigned != new_id:
                raise InvalidArgument(f"token: the tokenizer gave {word!r} id {assigned}, expected {new_id}")
        self._words.append(word)
        self._ids[word] = new_id
        return new_id

    def words(self):
        """All token strings in id order (a copy)."""
        return list(self._words)
