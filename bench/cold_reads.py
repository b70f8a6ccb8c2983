"""Bytes read from disk by a cold first lookup of a memory-mapped base, per kernel advice.

A base file is a .npy token-major [vocab, layers, dim] array that the store memory-maps. A lookup
touches a few rows, but by default the kernel reads ahead around each first-touched page of a
mapped file (read_ahead_kb, 8 MB on this machine's disk): issue 17 measured 0.98 GB read for a
cold 10 MB lookup at STEM-1B size. Three ways to map the same file, side by side:

- default: np.load(mmap_mode="r"), the kernel's default advice (the baseline);
- random: memsvc.store.bank_table.map_for_lookups, the map advised MADV_RANDOM (what the store does);
- random+willneed: the same map, and MADV_WILLNEED on each requested row before the gather (the
  rows' reads are queued at once instead of one page fault at a time): what the store does for
  rows it has not read before (bank_table.will_need).

For each batch size, each mode gathers the same random token ids with the file evicted from the
page cache first (posix_fadvise DONTNEED on this one file, which needs no root and leaves the
page cache of other processes alone, unlike /proc/sys/vm/drop_caches), and reads
/proc/self/io read_bytes before and after. Wall times are of single cold gathers: indicative.
Run: .venv/bin/python bench/cold_reads.py              (a 2 GB file in /tmp, ~1 min)
     .venv/bin/python bench/cold_reads.py --gb 0.2     (a quick look)
"""
import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from memsvc.store.bank_table import map_for_lookups, will_need  # noqa: E402

LOG = logging.getLogger("bench.cold_reads")
LAYERS, DIM = 5, 8192  # STEM-1B's row: 5 STEM layers x d_ff 8,192, bf16 (80 KB)


def read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise OSError("/proc/self/io has no read_bytes")


def write_bank(path: Path, vocab: int):
    """A bf16 bank of ``vocab`` tokens written a chunk at a time (never held in memory), fsynced."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(vocab, LAYERS, DIM))
    for start in range(0, vocab, 256):
        out[start:start + 256] = np.arange(start, min(vocab, start + 256), dtype=np.uint16)[:, None, None]
    out.flush()
    del out
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def evict(path: Path):
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


def cold_gather(path, mode, ids):
    """(bytes read from disk, seconds) of one gather of ``ids`` from a freshly evicted file."""
    evict(path)
    base = np.load(path, mmap_mode="r") if mode == "default" else map_for_lookups(path)
    before, t0 = read_bytes(), time.perf_counter()
    if mode == "random+willneed":
        will_need(base, ids)
    rows = np.take(base, ids, axis=0)
    seconds, read = time.perf_counter() - t0, read_bytes() - before
    assert (rows[:, 0, 0] == ids.astype(np.uint16)).all()  # the rows read are the tokens asked for
    del base
    return read, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=2.0, help="size of the bank file")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--trials", type=int, default=3, help="cold gathers per mode and batch (fresh ids each)")
    args = parser.parse_args()
    vocab = int(args.gb * 2**30 / (LAYERS * DIM * 2))
    rng = np.random.default_rng(0)
    modes = ["default", "random", "random+willneed"]
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        path = Path(tmp) / "bank.npy"
        write_bank(path, vocab)
        print(f"bank: {vocab} tokens x {LAYERS} x {DIM} bf16 = {path.stat().st_size / 2**30:.2f} GB, "
              f"rows of {LAYERS * DIM * 2 // 1024} KB")
        print(f"{'batch':>5} {'mode':>16} {'MB returned':>12} {'MB read':>10} {'read/returned':>14} {'ms':>8}")
        results = {}
        for batch in args.batches:
            id_sets = [rng.choice(vocab, batch, replace=False) for _ in range(args.trials)]
            for mode in modes:
                reads, times = zip(*(cold_gather(path, mode, ids) for ids in id_sets))
                returned = batch * LAYERS * DIM * 2
                read, ms = float(np.median(reads)), float(np.median(times)) * 1e3
                results[(batch, mode)] = (read, returned, ms)
                print(f"{batch:>5} {mode:>16} {returned / 2**20:>12.2f} {read / 2**20:>10.2f} {read / returned:>14.2f} {ms:>8.1f}")
    headline = {}
    for batch in args.batches:
        default, rand, will = (results[(batch, m)] for m in modes)
        headline[f"cold_b{batch}_read_default_over_random"] = round(default[0] / max(1.0, rand[0]), 2)
        headline[f"cold_b{batch}_read_over_returned_random"] = round(rand[0] / rand[1], 3)
        headline[f"cold_b{batch}_ms_willneed_over_random"] = round(will[2] / rand[2], 3)
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
