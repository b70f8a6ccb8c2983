"""The embedded default knowledge base: the demo backbone's STEM bank as table `stem`, and its
checkpoint (dense weights, config, vocabulary) under <data>/models/demo so that `memsvc generate`
can decode against the service; `memsvc train-demo` trains a new one (research/train.py)."""
import shutil
from pathlib import Path

import click
import numpy as np

from memsvc.cli.options import data_option, open_store, table_option
from memsvc.store import KnowledgeBase, StoreConfig

SHIPPED = Path(__file__).resolve().parents[1] / "demo_data"  # a trained demo checkpoint shipped with memsvc
MODEL_DIR = Path("models") / "demo"
TABLE = "stem"


def import_checkpoint(kb: KnowledgeBase, ckpt_dir, table=TABLE, message="") -> int:
    """Import a backbone checkpoint's bank [V, n_stem, d_ff] as a table; returns the version."""
    from clients.backbone.checkpoint import load_checkpoint

    _, bank, tokenizer = load_checkpoint(ckpt_dir)
    rows = bank.weight.detach().numpy().astype(np.float32)  # (V, n_stem, d_ff)
    words = list(tokenizer.vocab)
    return kb.import_table(table, rows, words, dtype="float32", message=message or f"import {Path(ckpt_dir).name} bank",
                           progress=True).version


def train_into(data_dir, preset="demo", steps=None, progress=True) -> dict:
    """Train the demo backbone into <data>/models/demo (see research/train.py)."""
    from dataclasses import replace

    from research.train import presets, train_demo

    model_config, train_config = presets()[preset]
    if steps:
        train_config = replace(train_config, steps=steps)
    return train_demo(model_config, train_config, Path(data_dir) / MODEL_DIR, progress=progress)


def seed_demo_kb(data_dir):
    """Create the default KB in an empty data dir: the shipped demo checkpoint (or, without
    one, a freshly trained one) and its bank as table `stem`."""
    data_dir = Path(data_dir)
    model_dir = data_dir / MODEL_DIR
    if (SHIPPED / "model.safetensors").exists():
        shutil.copytree(SHIPPED, model_dir, dirs_exist_ok=True)
    else:
        print("memsvc: training the demo backbone for the default knowledge base (first run only)", flush=True)
        train_into(data_dir)
    with KnowledgeBase(StoreConfig(data_dir=data_dir, create=True)) as kb:
        import_checkpoint(kb, model_dir, message="the demo backbone's STEM bank")


@click.command(name="train-demo")
@data_option
@click.option("--preset", type=click.Choice(["demo", "tiny"]), default="demo", show_default=True)
@click.option("--steps", type=int, default=None, help="Training steps (default: the preset's).")
@table_option
def train_demo(data, preset, steps, table):
    """Train the demo backbone on its synthetic fact corpus (CPU, a progress bar), save the
    checkpoint under DATA/models/demo and import its STEM bank as a table.

    \b
    Example:
        memsvc train-demo --data ./demo-kb
        memsvc train-demo --data ./tiny-kb --preset tiny --table stem
    """
    metrics = train_into(data, preset, steps)
    with open_store(data, None, create=True) as kb:
        version = import_checkpoint(kb, Path(data) / MODEL_DIR, table)
    click.echo(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    click.echo(f"imported the bank as table {table!r} at version {version}")
