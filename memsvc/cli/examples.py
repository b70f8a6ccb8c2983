"""`memsvc examples DIR`: the files the README's tour reads, written from the shipped demo
backbone and its synthetic world (research/corpus.py), so every word in them is one the demo
knowledge base has and every run writes the same bytes."""
import json
from pathlib import Path

import click
import numpy as np

PAIRS = 250  # mosaic pairs: one per (entity, relation) of the first 50 demo entities
KEY_DIM = VALUE_DIM = 64  # the tour's `memsvc mosaic create facts --key-dim 64 --value-dim 64`
QUERY_PAIRS = [0, 7, 42, 99]  # queries.npy holds these pairs' keys (the tour removes pair 7)
FILES = ("bank.safetensors", "tokenizer.json", "row.npy", "q.npy", "pairs.npz", "queries.npy", "edits.jsonl")
EDIT_RECORDS = 4  # eval-edits decodes a dozen prompts per record: seconds, not minutes


def write_bank(out: Path) -> tuple:
    """bank.safetensors (the demo bank in the STEM layout, stem_embeddings [V, L*d]) and
    tokenizer.json; returns the bank's rows (V, L, d)."""
    import shutil

    from safetensors import safe_open
    from safetensors.numpy import save_file

    from memsvc.cli.demo import SHIPPED

    with safe_open(str(SHIPPED / "model.safetensors"), framework="np") as f:
        flat = f.get_tensor("stem_embeddings")  # (V, L*d)
    layers = len(json.loads((SHIPPED / "config.json").read_text())["stem_layers"])
    save_file({"stem_embeddings": flat}, str(out / "bank.safetensors"), metadata={"stem_layers": str(layers)})
    shutil.copyfile(SHIPPED / "tokenizer.json", out / "tokenizer.json")
    return flat.reshape(flat.shape[0], layers, -1)  # (V, L, d)


def write_vectors(out: Path, rows: np.ndarray, words: list):
    """q.npy: Elbriar's layer-0 row (a search query whose nearest token is Elbriar); row.npy: a
    layer's row (d,) of seeded noise at the bank's typical row norm, for `edit --vector`."""
    np.save(out / "q.npy", rows[words.index("Elbriar"), 0])
    noise = np.random.default_rng(0).standard_normal(rows.shape[2]).astype(np.float32)
    np.save(out / "row.npy", noise * np.float32(np.median(np.linalg.norm(rows[:, 0], axis=1)) / np.linalg.norm(noise)))


def write_pairs(out: Path, corpus):
    """pairs.npz (keys, values, labels "Elbriar capital Morburg", ...) and queries.npy (the keys
    of QUERY_PAIRS: a query reads back about its pair's value)."""
    from clients.backbone.templates import RELATIONS

    rng = np.random.default_rng(0)
    labels = [f"{e} {r} {corpus.attributes[e][r]}" for e in corpus.entities for r in RELATIONS][:PAIRS]
    keys = rng.standard_normal((PAIRS, KEY_DIM)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    values = rng.standard_normal((PAIRS, VALUE_DIM)).astype(np.float32)
    np.savez(out / "pairs.npz", keys=keys, values=values, labels=np.array(labels))
    np.save(out / "queries.npy", keys[QUERY_PAIRS])


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False))
def examples(out_dir):
    """Write the files the README's tour uses into OUT_DIR: bank.safetensors + tokenizer.json
    (the demo bank, for `memsvc import`), row.npy and q.npy (a row and a search query, d_ff
    values), pairs.npz + queries.npy (a Memory Mosaic store's pairs, key and value dim 64) and
    edits.jsonl (EasyEdit records of the demo world, for `memsvc eval-edits`).

    \b
    Example:
        memsvc examples tour
        memsvc import tour/bank.safetensors --vocab tour/tokenizer.json --table stem --layers 4 --data ./my-kb
    """
    from research.corpus import DemoCorpus, write_edit_records

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = write_bank(out)
    corpus = DemoCorpus()  # the world the shipped backbone was trained on
    write_vectors(out, rows, corpus.tokenizer().vocab)
    write_pairs(out, corpus)
    write_edit_records(out / "edits.jsonl", corpus, n_records=EDIT_RECORDS)
    for name in FILES:
        click.echo(f"  {out / name}")
    click.echo(f"wrote the tour's files into {out}")
