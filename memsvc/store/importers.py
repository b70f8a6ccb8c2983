"""Reading banks and vocabularies from the files models ship, and writing them back.

Bank layouts (all token-major, rows returned as [vocab, layers, dim] in storage form):
- ``.npy``: [V, L, d] or [V, d] (one layer);
- ``.pt`` / ``.safetensors`` with one ``stem_embeddings`` tensor [V, L*d] (the STEM inference
  layout; L from ``num_layers`` or the file's ``stem_layers`` metadata);
- ``.pt`` / ``.safetensors`` with per-layer [V, d] tensors (in natural key order);
- one named tensor of a file or a Hugging Face model directory, or a directory whose config.json
  names a per-layer table (Gemma 3n / Gemma 4), and official STEM checkpoint directories
  (memsvc/store/checkpoints.py: read a slice of tokens at a time).
Vocabularies: a word list (one word per line), tokenizer.json, sentencepiece .model or tiktoken
file; a file memsvc exported carries its own (``words`` in the safetensors metadata, or a word list
``<name>.vocab.txt`` beside a ``.npy``).

Exports and the ImportTable stream's temporary file are written a chunk of tokens at a time
(BankWriter), never holding the table.
"""
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memsvc.core.dtypes import storage_dtype
from memsvc.core.errors import InvalidArgument
from memsvc.store.checkpoints import (is_stem_checkpoint, read_stem_checkpoint, read_tensor, refuse_lone_shard,
                                      torch_to_storage)

STEM_KEY = "stem_embeddings"
WORDS_KEY = "words"  # safetensors metadata of an export: the words of its rows, as a JSON list
SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def _load_tensors(path: Path) -> tuple:
    """{name: torch tensor} and metadata from a .pt state dict or a safetensors file."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise InvalidArgument(f"file: {path} holds no state dict")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, {}


def _safetensors_contents(path: Path) -> tuple:
    """(tensor names, metadata) of a safetensors file, from its header alone."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys()), f.metadata() or {}


def _natural_key(name):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


@dataclass
class BankFile:
    rows: object  # [V, L, d] in storage form: an array, a memmap or ChunkedRows (read a slice at a time)
    dtype: str
    model_layers: list = field(default_factory=list)  # the transformer layer each table layer feeds, when known
    words: list | None = None  # the words in an export's safetensors metadata, if any


def load_bank(path, num_layers=None, tensor=None) -> BankFile:
    """A bank from a file or checkpoint directory (see module doc); big ones are read lazily."""
    path = Path(path)
    if not path.exists():
        raise InvalidArgument(f"file: {path} does not exist")
    refuse_lone_shard(path)
    if path.is_dir() and tensor is None and is_stem_checkpoint(path):
        ckpt = read_stem_checkpoint(path)
        return BankFile(ckpt.rows, ckpt.dtype, ckpt.model_layers)
    if path.is_dir() or tensor is not None:
        return BankFile(*read_tensor(path, tensor, num_layers))
    if path.suffix == ".safetensors" and STEM_KEY in (contents := _safetensors_contents(path))[0]:
        meta = contents[1]  # the STEM layout, memsvc's exports among others: read a slice of tokens at a time
        layers = int(num_layers or meta.get("stem_layers") or 0)
        if layers <= 0:
            raise InvalidArgument(f"num_layers: {path.name} does not record its layer count; give --layers")
        return BankFile(*read_tensor(path, STEM_KEY, layers), words=json.loads(meta[WORDS_KEY]) if WORDS_KEY in meta else None)
    words = None
    if path.suffix == ".npy":
        rows = np.load(path, mmap_mode="r")
        rows = rows[:, None, :] if rows.ndim == 2 else rows
        dtype = {np.dtype("<f2"): "float16", np.dtype("<f4"): "float32"}.get(rows.dtype)
        if dtype is None:
            rows, dtype = np.asarray(rows, dtype=np.float32), "float32"
    elif path.suffix in (".pt", ".pth", ".bin", ".safetensors"):
        tensors, meta = _load_tensors(path)
        words = json.loads(meta[WORDS_KEY]) if WORDS_KEY in meta else None
        if STEM_KEY in tensors:
            flat, dtype = torch_to_storage(tensors[STEM_KEY])
            layers = int(num_layers or meta.get("stem_layers") or 0)
            if layers <= 0 or flat.ndim != 2 or flat.shape[1] % layers:
                raise InvalidArgument(f"num_layers: {STEM_KEY} of shape {tuple(flat.shape)} needs a layer count dividing {flat.shape[-1]}")
            rows = flat.reshape(flat.shape[0], layers, flat.shape[1] // layers)  # (V, L, d)
        else:
            tables = [k for k in sorted(tensors, key=_natural_key) if tensors[k].ndim == 2]
            shapes = {tuple(tensors[k].shape) for k in tables}
            if not tables or len(shapes) != 1:
                raise InvalidArgument(f"file: {path} has no {STEM_KEY} tensor and no set of equal per-layer [V, d] tensors")
            parts = [torch_to_storage(tensors[k]) for k in tables]
            rows, dtype = np.stack([p for p, _ in parts], axis=1), parts[0][1]  # (V, L, d)
    else:
        raise InvalidArgument(f"file: {path.suffix} is not a bank format (.npy, .pt, .safetensors, a checkpoint directory)")
    if rows.ndim != 3:
        raise InvalidArgument(f"file: expected [vocab, layers, dim] rows, got shape {rows.shape}")
    return BankFile(rows, dtype, words=words)


def load_vocab(path, vocab_size) -> tuple:
    """(words by token id for a table of vocab_size rows, tokenizer (kind, file bytes) or None) of a
    word list, tokenizer.json, sentencepiece .model or tiktoken file."""
    path = Path(path)
    if not path.exists():
        raise InvalidArgument(f"vocab: {path} does not exist")
    from editing.tokens import Vocabulary

    return fitted(Vocabulary.from_file(path), vocab_size)


def fitted(vocab, vocab_size) -> tuple:
    """(words, tokenizer or None) of a Vocabulary for a table of vocab_size rows. A model's table and
    its tokenizer need not have the same size: ids past the tokenizer's pieces (Llama 3's 256 special
    tokens beyond its 128,000 BPE ranks) get placeholder words, and pieces past the table (Gemma 3n's
    per-layer table covers the first 262,144 of 262,400 ids) are left out."""
    words = vocab.words()[:vocab_size]
    words += [f"<token {i}>" for i in range(len(words), vocab_size)]
    return words, (vocab.encoder.kind, vocab.encoder.data) if vocab.encoder is not None else None


def bank_vocab(bank_file, bank: BankFile, vocab_file=None) -> tuple:
    """(words, tokenizer or None) of an import: from ``vocab_file`` if given, else the words the
    bank file carries (an export's: in its safetensors metadata, or the word list beside its .npy)."""
    vocab_size = bank.rows.shape[0]
    if vocab_file is not None:
        return load_vocab(vocab_file, vocab_size)
    if bank.words is not None:
        return bank.words, None
    if Path(bank_file).suffix == ".npy" and vocab_beside(bank_file).is_file():
        return load_vocab(vocab_beside(bank_file), vocab_size)
    raise InvalidArgument(f"vocab: {Path(bank_file).name} carries no vocabulary; give --vocab")


def vocab_from_bytes(data: bytes, vocab_size) -> tuple:
    """(words, tokenizer or None) from a vocabulary file's bytes (ImportTableHeader.vocab_file),
    told apart by content as load_vocab does."""
    from editing.tokenizers import read_tokenizer_bytes
    from editing.tokens import Vocabulary

    encoder, words = read_tokenizer_bytes(data, Path("vocab_file"))
    return fitted(Vocabulary(words, encoder), vocab_size)


def vocab_beside(path) -> Path:
    """The word list an export to ``path`` (.npy) writes beside it: out.npy -> out.vocab.txt."""
    return Path(path).with_suffix(".vocab.txt")


class BankWriter:
    """A bank file written a chunk of tokens at a time: ``header`` bytes, then token-major rows of
    ``shape`` [V, L, d] in C order, to ``path`` + ".tmp", renamed into place by ``finish`` (fsync
    first) once exactly V rows came; ``abort`` (or leaving a ``with`` block on an error) removes it."""

    def __init__(self, path, header: bytes, dtype, shape):
        self.path, self.tmp = Path(path), Path(str(path) + ".tmp")
        self.dtype, self.shape, self.count = np.dtype(dtype), tuple(int(n) for n in shape), 0
        self.file = open(self.tmp, "wb")
        self.file.write(header)

    def write(self, rows, field="rows"):
        rows = np.ascontiguousarray(rows)
        if rows.dtype != self.dtype or rows.ndim != 3 or rows.shape[1:] != self.shape[1:]:
            raise InvalidArgument(f"{field}: expected (n, {self.shape[1]}, {self.shape[2]}) {self.dtype.str} rows, "
                                  f"got {rows.shape} {rows.dtype.str}")
        if self.count + len(rows) > self.shape[0]:
            raise InvalidArgument(f"{field}: more than the {self.shape[0]} tokens announced")
        self.file.write(memoryview(rows).cast("B"))
        self.file.flush()  # to the kernel now: the process holds one chunk at most
        self.count += len(rows)

    def finish(self) -> Path:
        if self.count != self.shape[0]:
            raise InvalidArgument(f"rows: the stream ended after {self.count} of {self.shape[0]} tokens")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self):
        try:
            self.file.close()  # on a full disk, flushing what is left fails again: the file goes all the same
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, kind, *exc):
        if kind is not None or not self.file.closed:
            self.abort()


def npy_writer(path, dtype: str, shape) -> BankWriter:
    """A BankWriter of a .npy file [V, L, d] in ``dtype``'s storage form."""
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(storage_dtype(dtype)),
                                                   "fortran_order": False, "shape": tuple(shape)})
    return BankWriter(path, header.getvalue(), storage_dtype(dtype), shape)


def safetensors_writer(path, dtype: str, shape, metadata: dict) -> BankWriter:
    """A BankWriter of a safetensors file in the STEM inference layout: one tensor stem_embeddings
    [V, L*d] (its bytes are the token-major rows as they are). The format: an 8-byte little-endian
    header length, a JSON header (dtype, shape, data_offsets; string metadata), then raw bytes."""
    v, layers, dim = shape
    nbytes = v * layers * dim * storage_dtype(dtype).itemsize
    header = json.dumps({"__metadata__": metadata, STEM_KEY: {"dtype": SAFETENSORS_DTYPES[dtype], "shape": [v, layers * dim],
                                                             "data_offsets": [0, nbytes]}}).encode()
    header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return BankWriter(path, len(header).to_bytes(8, "little") + header, storage_dtype(dtype), shape)


def write_export(export, path, progress=False) -> list:
    """Write a TableExport to ``path`` (.safetensors: STEM layout with the words in its metadata;
    .npy: [V, L, d] with a word list beside it), a chunk at a time; returns the files written."""
    from tqdm import tqdm

    path, info = Path(path), export.info
    shape = (len(export.token_ids), info.num_layers, info.dim)
    if path.suffix == ".safetensors":
        meta = {"format": "pt", "stem_layers": str(info.num_layers), WORDS_KEY: json.dumps(export.words),
                "table": info.name, "version": str(info.version)}
        writer, files = safetensors_writer(path, info.dtype, shape, meta), [path]
    elif path.suffix == ".npy":
        if info.dtype == "bfloat16":
            raise InvalidArgument("out: .npy has no bfloat16 (its rows would read back as integers); export to .safetensors")
        bad = next((w for w in export.words if w.splitlines() != [w]), None)
        if bad is not None:
            raise InvalidArgument(f"out: the word {bad!r} cannot be a line of a word list; export to .safetensors "
                                  "(it keeps the words in its metadata)")
        writer, files = npy_writer(path, info.dtype, shape), [path, vocab_beside(path)]
    else:
        raise InvalidArgument(f"out: {path.suffix or path.name!r} is not an export format (.safetensors or .npy)")
    with writer, tqdm(total=shape[0], desc=f"exporting {info.name}", unit="token", disable=not progress) as bar:
        for rows in export.chunks:
            writer.write(rows)
            bar.update(len(rows))
        writer.finish()
    if path.suffix == ".npy":
        vocab_beside(path).write_text("\n".join(export.words) + "\n", encoding="utf-8")
    return files
