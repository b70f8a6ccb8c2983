"""What checksums cost (issue 19 item 13), on a small bank (default 8,192 tokens x 5 layers x 256,
bfloat16: 21 MB) with 200 edit commits of 16 rows:

    import   import_table's time, and the crc32 of every token's rows alone (token_sums over the
             same rows): the share of the import that checksums cost
    commit   the median edit commit, and the crc32s of its rows alone (row_sums)
    start    opening the KB (replay of every commit, each checked against delta_sums), against
             opening a copy whose checksum tables are dropped (a catalog from before checksums:
             the same replay, unchecked)

Ratios, no absolute target. Run: .venv/bin/python bench/checksums.py [--quick]. Test:
tests/test_checksums.py.
"""
import argparse
import json
import logging
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from memsvc.core.dtypes import to_storage  # noqa: E402
from memsvc.core.values import RowOp  # noqa: E402
from memsvc.store import KnowledgeBase, StoreConfig  # noqa: E402
from memsvc.store.checksums import row_sums, token_sums  # noqa: E402

LOG = logging.getLogger("bench.checksums")


def timed(fn, repeat=1):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1,024 tokens and 20 commits: shows the script works")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    vocab, commits = (1024, 20) if args.quick else (8192, 200)
    rows = np.random.default_rng(0).standard_normal((vocab, 5, 256)).astype(np.float32)
    words = [f"w{i}" for i in range(vocab)]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "kb"
        kb = KnowledgeBase(StoreConfig(data_dir=data, create=True))
        import_s = timed(lambda: kb.import_table("stem", rows, words, dtype="bfloat16"))
        stored = to_storage(rows, "bfloat16")
        import_crc_s = timed(lambda: token_sums(stored), repeat=3)
        rng = np.random.default_rng(1)
        commit_times = []
        for _ in range(commits):
            ops = [RowOp("set", token_id=int(t), vector=rng.standard_normal(256), layers=[int(rng.integers(5))])
                   for t in rng.choice(vocab, 16, replace=False)]
            commit_times.append(timed(lambda: kb.edit("stem", ops)))
        kb.close()
        commit_crc_s = timed(lambda: row_sums(list(range(16)), [0] * 16, stored[:16, 0]), repeat=20)
        legacy = shutil.copytree(data, Path(tmp) / "legacy")
        with sqlite3.connect(legacy / "catalog.db") as db:
            db.execute("drop table delta_sums")
            db.execute("drop table base_sums")
        start_s = timed(lambda: KnowledgeBase(StoreConfig(data_dir=data)).close(), repeat=5)
        legacy_start_s = timed(lambda: KnowledgeBase(StoreConfig(data_dir=legacy)).close(), repeat=5)
    result = {"tokens": vocab, "commits": commits,
              "import_s": round(import_s, 4), "import_crc_s": round(import_crc_s, 4),
              "import_crc_share": round(import_crc_s / import_s, 3),
              "commit_median_ms": round(1000 * statistics.median(commit_times), 3),
              "commit_crc_ms": round(1000 * commit_crc_s, 4),
              "commit_crc_share": round(commit_crc_s / statistics.median(commit_times), 4),
              "start_s": round(start_s, 4), "start_unchecked_s": round(legacy_start_s, 4),
              "start_ratio": round(start_s / legacy_start_s, 3)}
    LOG.info("import %.3f s (crc32 %.3f s), commit %.2f ms (crc32 %.3f ms), start %.3f s vs %.3f s unchecked",
             import_s, import_crc_s, result["commit_median_ms"], result["commit_crc_ms"], start_s, legacy_start_s)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
