"""The tokenizers models ship, behind one small interface, so a table's words are encoded as its
model encodes them: Hugging Face ``tokenizer.json`` (BPE, WordPiece, Unigram, byte-level),
sentencepiece ``.model`` and tiktoken rank files (Llama 3's ``tokenizer.model``).

An encoder has ``kind``, ``pieces`` (token strings by id), ``encode(text) -> (ids, unknown)``
(``unknown``: the pieces of text that fell to an unknown token), ``add(word)`` (the new id, or None
when the format cannot learn words) and ``data`` (the bytes to store it with the table).
"""
import base64
import re
from functools import lru_cache
from pathlib import Path

from memsvc.core.errors import InvalidArgument

# Llama 3's pre-tokenizer split (the public tiktoken pattern its tokenizer.model is used with).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
RANK_LINE = re.compile(rb"[A-Za-z0-9+/=]+ \d+")


class HuggingFaceEncoder:
    kind = "tokenizer.json"

    def __init__(self, tokenizer):
        tokenizer.no_padding()  # a tokenizer.json saved with padding pads every encoding (to 128 ids with id 0)
        tokenizer.no_truncation()
        self.tokenizer = tokenizer
        by_id = {i: w for w, i in tokenizer.get_vocab(with_added_tokens=True).items()}
        missing = [i for i in range(len(by_id)) if i not in by_id]
        if missing:
            raise InvalidArgument(f"tokenizer: token ids are not contiguous (id {missing[0]} is missing)")
        self.pieces = [by_id[i] for i in range(len(by_id))]

    @classmethod
    def from_text(cls, text):
        from tokenizers import Tokenizer

        try:
            return cls(Tokenizer.from_str(text))
        except InvalidArgument:
            raise
        except Exception as e:  # tokenizers raises plain Exception on invalid files
            raise InvalidArgument(f"tokenizer: invalid tokenizer.json: {e}") from None

    @property
    def data(self) -> bytes:
        return self.tokenizer.to_str().encode("utf-8")

    def encode(self, text):
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        unk = getattr(self.tokenizer.model, "unk_token", None)
        unknown = [text[a:b] for token, (a, b) in zip(encoding.tokens, encoding.offsets)
                   if unk is not None and token == unk and text[a:b] != unk]
        return list(encoding.ids), unknown

    def add(self, word):
        # An added token is matched before pre-tokenization, so encode finds it whole.
        self.tokenizer.add_tokens([word])
        self.pieces.append(word)
        return self.tokenizer.token_to_id(word)


class SentencePieceEncoder:
    kind = "sentencepiece"

    def __init__(self, data: bytes):
        import sentencepiece

        self.processor = sentencepiece.SentencePieceProcessor()
        try:
            self.processor.LoadFromSerializedProto(data)
        except Exception as e:  # a RuntimeError naming protobuf's parse failure
            raise InvalidArgument(f"tokenizer: not a sentencepiece model ({str(e).splitlines()[0][:120]})") from None
        self.data = data
        self.pieces = [self.processor.id_to_piece(i) for i in range(self.processor.get_piece_size())]

    def encode(self, text):
        ids = self.processor.encode(text)
        unk = self.processor.unk_id()
        if unk not in ids:
            return ids, []
        return ids, [ch for ch in text if not ch.isspace() and unk in self.processor.encode(ch)]  # the characters it lacks

    def add(self, word):
        return None  # a serialized model cannot learn pieces: the vocabulary keeps the word itself


class TiktokenEncoder:
    kind = "tiktoken"

    def __init__(self, data: bytes, pattern: str = LLAMA3_PATTERN):
        import tiktoken

        ranks = {}
        for n, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            if not RANK_LINE.fullmatch(line.strip()):
                raise InvalidArgument(f"tokenizer: line {n} of the tiktoken file is not '<base64 token> <rank>'")
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        if sorted(ranks.values()) != list(range(len(ranks))):
            raise InvalidArgument("tokenizer: tiktoken ranks are not contiguous from 0")
        self.data = data
        self.encoding = tiktoken.Encoding("memsvc", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
        printable = byte_printable()
        by_rank = sorted(ranks, key=ranks.get)
        self.pieces = ["".join(printable[b] for b in token) for token in by_rank]  # "Ġ"-style: unique and readable

    def encode(self, text):
        return self.encoding.encode_ordinary(text), []  # byte-level: nothing is unknown

    def add(self, word):
        return None


@lru_cache(maxsize=1)
def byte_printable() -> dict:
    """Byte -> one printable character, as byte-level BPE names its pieces (space -> 'Ġ')."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    shifted = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in shifted:
            shifted[b] = chr(256 + extra)
            extra += 1
    return shifted


def encoder_from(kind: str, data: bytes):
    """An encoder from what a table stores (its ``kind`` and ``data``)."""
    if kind == HuggingFaceEncoder.kind:
        return HuggingFaceEncoder.from_text(data.decode("utf-8"))
    if kind == SentencePieceEncoder.kind:
        return SentencePieceEncoder(data)
    if kind == TiktokenEncoder.kind:
        return TiktokenEncoder(data)
    raise InvalidArgument(f"tokenizer: unknown kind {kind!r} (expected tokenizer.json, sentencepiece or tiktoken)")


def read_tokenizer_file(path):
    """(encoder or None for a plain word list, words) of a vocabulary file, by its content."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InvalidArgument(f"vocab: cannot read {str(path)!r}: {e.strerror}") from None
    return read_tokenizer_bytes(data, path)


def read_tokenizer_bytes(data: bytes, path: Path):
    """(encoder or None, words) of a vocabulary file's bytes; ``path`` names it (its suffix is a hint)."""
    first = data.lstrip()[:1]
    if path.suffix == ".json" or first == b"{":
        encoder = HuggingFaceEncoder.from_text(_text(data, path))
    elif first and RANK_LINE.fullmatch(data.split(b"\n", 1)[0].strip()):
        encoder = TiktokenEncoder(data)
    elif path.suffix == ".model" or not _is_text(data):
        encoder = SentencePieceEncoder(data)
    else:
        return None, _text(data, path).splitlines()
    return encoder, list(encoder.pieces)


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in data


def _text(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidArgument(f"vocab: {path.name} is neither UTF-8 text nor a tokenizer model (byte {e.start})") from None
