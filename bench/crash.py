"""Crash safety: concurrent editors against a `memsvc serve` process that is killed at random.

Each round starts the server on the same data directory, runs `clients` editing threads (each
edit sets all layers of a few tokens to vectors derived from (client, seq), so any commit's rows
can be recomputed from its message), SIGKILLs the server after a random delay (some rounds
instead die inside a commit through MEMSVC_CRASH_AT), runs fsck, restarts, and checks:

    lost     acknowledged commits missing from the log or not reading their exact rows
    partial  commits (acknowledged or not) whose rows are not all there, or that changed more

There is no speed baseline here: the figures are counts that must be 0. Run: .venv/bin/python bench/crash.py --rounds 20   (~7 min on 2 cores: each restart re-checks every commit)
Test: tests/test_crash.py runs 3 rounds.
"""
import argparse
import json
import logging
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from clients.client import MemoryClient  # noqa: E402
from memsvc.core.dtypes import to_float32, to_storage  # noqa: E402
from memsvc.core.errors import MemsvcError  # noqa: E402
from memsvc.core.values import RowOp  # noqa: E402
from memsvc.server.spawn import spawn_server  # noqa: E402
from memsvc.store import KnowledgeBase, StoreConfig  # noqa: E402
from memsvc.store.backup import fsck  # noqa: E402

LOG = logging.getLogger("bench.crash")
ROOT = Path(__file__).resolve().parent.parent
TABLE = "stem"
MESSAGE = re.compile(r"^crash c(\d+) s(\d+)$")


@dataclass
class CrashConfig:
    rounds: int = 20
    clients: int = 4
    vocab: int = 256
    layers: int = 3
    dim: int = 16
    dtype: str = "float16"
    tokens_per_edit: int = 3
    kill_after: tuple = (0.2, 1.5)  # seconds of editing before the kill, uniform
    # Every round SIGKILLs at a random moment, except these rounds (1-based) that die inside a
    # commit instead: after its rows are written, and just before SQLite's COMMIT.
    crash_points: tuple = ((5, "commit:after-rows"), (10, "commit:before-commit"))
    seed: int = 0


def make_kb(data, vocab=64, layers=3, dim=8, dtype="float16", seed=0):
    """A KB with one random bank TABLE of words t0, t1, ... at version 1."""
    rows = np.random.default_rng(seed).standard_normal((vocab, layers, dim)).astype(np.float32)
    with KnowledgeBase(StoreConfig(data_dir=data, create=True)) as kb:
        kb.import_table(TABLE, rows, [f"t{i}" for i in range(vocab)], dtype=dtype)


def edit_of(config: CrashConfig, client: int, seq: int):
    """The (token ids, rows (n, L, d) as stored) that edit `seq` of `client` sets."""
    rng = np.random.default_rng((config.seed, client, seq))
    tokens = rng.choice(config.vocab, config.tokens_per_edit, replace=False)
    rows = rng.standard_normal((config.tokens_per_edit, config.layers, config.dim)).astype(np.float32)
    return tokens, to_float32(to_storage(rows, config.dtype), config.dtype)


def editor(address, config, client, seq0, acked, stop):
    """Edit until the server goes away; acked[version] = (client, seq) for every OK reply."""
    with MemoryClient(address, timeout=10) as c:
        seq = seq0
        while not stop.is_set():
            tokens, rows = edit_of(config, client, seq)
            ops = [RowOp("set", token_id=int(t), vector=r) for t, r in zip(tokens, rows)]
            try:
                acked[c.edit(TABLE, ops, message=f"crash c{client} s{seq}").version] = (client, seq)
            except MemsvcError:
                return
            seq += 1


def run_round(proc, address, config, round_no, acked, rng):
    """Edit against a started server, then kill it; returns (mode, seconds before the kill,
    commits acknowledged this round)."""
    mode = crash_mode(config, round_no)
    before, stop = len(acked), threading.Event()
    # Each round's editors use fresh sequence numbers, so every message names one edit only.
    threads = [threading.Thread(target=editor, args=(address, config, c, round_no * 1_000_000, acked, stop))
               for c in range(config.clients)]
    for t in threads:
        t.start()
    delay = float(rng.uniform(*config.kill_after))
    try:
        proc.wait(delay)  # a crash point ends the process by itself
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL if mode == "sigkill" else signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # a drain that never ends is a failure, not a hang
            proc.kill()
            raise
    stop.set()
    for t in threads:
        t.join(30)  # each editor's call has a 10 s deadline
        assert not t.is_alive(), "an editor did not stop after the server died"
    return mode, delay, len(acked) - before


def crash_mode(config, round_no) -> str:
    return dict(config.crash_points).get(round_no, "sigkill")


def verify(address, config, acked) -> dict:
    """Counts of lost (acknowledged but missing or wrong) and partial commits after a restart."""
    with MemoryClient(address, timeout=60) as c:
        log = {x.version: x for x in c.log(TABLE)}
        lost = sum(1 for v, (client, seq) in acked.items() if v not in log or log[v].message != f"crash c{client} s{seq}")
        partial = wrong = 0
        for v, info in log.items():
            m = MESSAGE.match(info.message)
            if not m:
                continue
            tokens, rows = edit_of(config, int(m[1]), int(m[2]))
            got = c.lookup(TABLE, tokens.tolist(), version=v).in_request_order()
            changed = {ch.token_id for ch in c.diff(v - 1, v, TABLE)}
            whole = np.array_equal(got, rows) and changed <= set(tokens.tolist()) and info.rows_changed == rows.shape[0] * rows.shape[1]
            partial += not whole
            wrong += v in acked and not whole
        versions = sorted(log)
        gaps = versions != list(range(1, versions[-1] + 1))
    return {"commits": len(log) - 1, "lost": lost + wrong, "partial": partial + gaps}


def run(config: CrashConfig, workdir) -> dict:
    """All rounds; the server that round n+1 starts first verifies what round n's crash left."""
    data = Path(workdir) / "kb"
    make_kb(data, config.vocab, config.layers, config.dim, config.dtype, config.seed)
    rng = np.random.default_rng(config.seed)
    acked, totals, row, row_fsck = {}, {"rounds": 0, "lost": 0, "partial": 0, "fsck_failures": 0}, None, None
    print(f"{'round':>5} {'kill':<22} {'after s':>7} {'acked':>6} {'commits':>8} {'lost':>5} {'partial':>8} {'fsck':>5}")
    for round_no in range(1, config.rounds + 2):
        mode = crash_mode(config, round_no)
        proc, address = spawn_server(data, env={"MEMSVC_CRASH_AT": mode} if mode != "sigkill" else None)
        if row is not None:
            result = verify(address, config, acked)
            totals["lost"], totals["partial"] = max(totals["lost"], result["lost"]), max(totals["partial"], result["partial"])
            print(f"{row} {result['commits']:>8} {result['lost']:>5} {result['partial']:>8} {row_fsck:>5}", flush=True)
        if round_no > config.rounds:
            proc.terminate()
            proc.wait(30)
            break
        mode, delay, new = run_round(proc, address, config, round_no, acked, rng)
        report = fsck(data)
        for p in report.problems:
            LOG.error("fsck: %s", p)
        totals["rounds"] += 1
        totals["fsck_failures"] += not report.ok
        row, row_fsck = f"{round_no:>5} {mode:<22} {delay:>7.2f} {new:>6}", "ok" if report.ok else "FAIL"
    totals["acked_commits"] = len(acked)
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=CrashConfig.rounds)
    parser.add_argument("--clients", type=int, default=CrashConfig.clients)
    parser.add_argument("--seed", type=int, default=CrashConfig.seed)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        totals = run(CrashConfig(rounds=args.rounds, clients=args.clients, seed=args.seed), tmp)
    print(f"\n{totals['rounds']} crash rounds x {totals['acked_commits']} acknowledged commits: "
          f"{totals['lost']} lost, {totals['partial']} partial, {totals['fsck_failures']} fsck failures "
          f"({time.perf_counter() - start:.0f} s)")
    print(json.dumps({"crash_rounds": totals["rounds"], "acked_commits": totals["acked_commits"], "lost": totals["lost"],
                      "partial": totals["partial"], "fsck_failures": totals["fsck_failures"]}))


if __name__ == "__main__":
    main()
