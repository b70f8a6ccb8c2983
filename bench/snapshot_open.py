"""LocalBank open over a bank with many edited tokens: the Snapshot RPC's delta-row read (issue 17).

Writes a bank (default 20,000 x 5 x 8,192, float16 in the .npy, imported as bfloat16, 1.6 GB) a
chunk at a time, rewrites every layer of --edited tokens (default 10,915, as realscale.py's
delta step leaves them) in commits of 1,000, serves it, and times `LocalBank` opening against it
(every Snapshot page; the median of --repeats opens, page cache warm after the first). The
baseline beside it: one SQL scan reading every delta row's bytes from the catalog
(`select data from deltas`), the floor for a snapshot that reads them from SQLite. The opened
bank's delta rows are checked against the store's rows for 64 edited tokens.

Run: .venv/bin/python bench/snapshot_open.py [--vocab 2000 --edited 500] [--work /var/tmp/so]
(--work keeps the bank for the next run). The last line is a JSON object of the figures.
"""
import argparse
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.decode import write_bank  # noqa: E402
from clients.banks import LocalBank  # noqa: E402
from clients.client import MemoryClient  # noqa: E402
from memsvc.core.values import RowOp  # noqa: E402
from memsvc.server.spawn import spawn_server, stop_server  # noqa: E402
from memsvc.store import KnowledgeBase, StoreConfig  # noqa: E402


def make_bank(work: Path, vocab, layers, d_ff, edited) -> np.ndarray:
    """The bank's KB under work/kb (made once); returns the edited token ids."""
    ids = np.sort(np.random.default_rng(0).choice(vocab, edited, replace=False))
    if (work / "kb").exists():
        return ids
    write_bank(work / "bank.npy", vocab, layers, d_ff, "float16")
    (work / "words.txt").write_text("\n".join(f"t{i}" for i in range(vocab)))
    subprocess.run([sys.executable, "-m", "memsvc", "import", str(work / "bank.npy"),
                    "--vocab", str(work / "words.txt"), "--table", "stem", "--dtype", "bfloat16",
                    "--data", str(work / "kb")], check=True, timeout=3600)
    (work / "bank.npy").unlink()
    with KnowledgeBase(StoreConfig(data_dir=work / "kb")) as store:
        for start in range(0, len(ids), 1000):
            store.edit("stem", [RowOp("scale", token_id=int(t), alpha=1.001) for t in ids[start:start + 1000]])
    return ids


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=20_000)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--d-ff", type=int, default=8192)
    parser.add_argument("--edited", type=int, default=10_915)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default=None, help="scratch folder, kept (default: a temporary one, removed)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="memsvc-snapshot-open-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        ids = make_bank(work, args.vocab, args.layers, args.d_ff, args.edited)
        db = sqlite3.connect(f"file:{work / 'kb' / 'catalog.db'}?mode=ro", uri=True)
        start = time.perf_counter()
        scanned = sum(len(data) for (data,) in db.execute("select data from deltas"))
        scan = time.perf_counter() - start
        db.close()
        proc, address = spawn_server(work / "kb")
        opens = []
        try:
            with MemoryClient(address) as client:
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    bank = LocalBank(client, "stem")
                    opens.append(time.perf_counter() - start)
                    assert len(bank.delta_ids) == len(ids), (len(bank.delta_ids), len(ids))
                check = np.random.default_rng(1).choice(ids, 64, replace=False)
                want = client.lookup("stem", check.tolist())
                got = bank.request(torch.from_numpy(check)).result()
                if not np.array_equal(np.asarray(got, np.float32), want.in_request_order()):
                    raise SystemExit("LocalBank: delta rows differ from the server's")
        finally:
            stop_server(proc)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report(args, len(ids), opens, scanned, scan)))


def report(args, edited, opens, scanned, scan) -> dict:
    """Print the figures' line; return them."""
    median = statistics.median(opens)
    print(f"LocalBank open with {edited:,} edited tokens ({scanned / 1e9:.2f} GB of delta rows): median "
          f"{median:.2f} s of {', '.join(f'{s:.2f}' for s in opens)} ({scanned / 1e6 / median:.0f} MB/s); "
          f"a plain SQL scan of the rows {scan:.2f} s: {median / scan:.2f}x", flush=True)
    return {"vocab": args.vocab, "layers": args.layers, "d_ff": args.d_ff, "edited_tokens": edited,
            "delta_gb": round(scanned / 1e9, 3), "open_s": [round(s, 2) for s in opens],
            "open_median_s": round(median, 2),
            "sql_scan_s": round(scan, 2), "open_over_sql_scan": round(median / scan, 2),
            "open_mb_per_s": round(scanned / 1e6 / median, 1)}

if __name__ == "__main__":
    main()
