"""Every whole-table step of issue 17 at the STEM-1B shape, with wall time and peak anonymous RSS.

The bank (default 128,256 x 5 x 8,192, 10.5 GB: float16 in the .npy, which has no bfloat16; imported
as is and converted to bfloat16; `--scale 0.05` for a quick run) is written to disk a chunk at a
time, never held in memory. Each CLI step runs as its own process while a sampler
reads its RssAnon every 0.1 s (bench/byom.run_sampled); the server's RssAnon is sampled for its whole
life. Side by side where the issue asks for a baseline: reading the bank file once (`cat`) for
imports, exports and compact, and copying it once (cp, synced) for compact; an in-process gather from the same base file for lookups, with the
bytes each read from disk (the server's /proc/PID/io). Base files are evicted from the page cache
(posix_fadvise DONTNEED) before every cold step. Rows are checked against the source after the
imports, the exports (local and through the server) and the edits.

Steps: import (.npy; with dtype conversion; from the exported .safetensors; through --server),
export (local, --server), cold start with 0 and with --delta-tokens delta tokens (time, the server's
anonymous memory and disk reads once serving, against the start with 0), lookups b=1/32/128 cold
and warm, 1,000 single-token edits, LocalBank open and a b=32 read, fsck, backup and restore of
the KB with every delta row (restore fscks the copy), compact, ChangedTokens across
the compaction through a cold server (against comparing the candidates' rows in process, the way
it was answered before checksums), gc, then LocalBank open with --localbank-tokens edited tokens
(against the open with --delta-tokens; anonymous memory of the worker and the server).

Run: .venv/bin/python bench/realscale.py [--scale 0.05] [--work /var/tmp/rs]   (full size: ~70 GB free)
The last line is a JSON object of the headline figures.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.byom import ProcessWatch, run_sampled  # noqa: E402
from bench.cold_reads import evict  # noqa: E402
from bench.decode import write_bank  # noqa: E402
from clients.banks import LocalBank  # noqa: E402
from clients.client import MemoryClient  # noqa: E402
from memsvc.core.values import RowOp  # noqa: E402
from memsvc.server.spawn import spawn_server, stop_server  # noqa: E402
from memsvc.store import KnowledgeBase, StoreConfig  # noqa: E402

MEMSVC = [sys.executable, "-m", "memsvc"]
GIB = 1 << 30


def evict_bases(kb_dir: Path):
    for f in (kb_dir / "bases").rglob("*.npy"):
        evict(f)


def step(results, name, cmd, baseline=None):
    r = run_sampled(cmd)
    results[name] = {"s": round(r["seconds"], 2), "peak_anon_gb": round(r["peak_anon_bytes"] / GIB, 3)}
    if baseline:
        results[name]["over_read_once"] = round(r["seconds"] / baseline, 2)
    print(f"{name:<34} {r['seconds']:8.1f} s  peak anon {r['peak_anon_bytes'] / GIB:6.3f} GB"
          + (f"  ({r['seconds'] / baseline:.2f}x reading the bank once)" if baseline else ""), flush=True)
    return r


def check_rows(store, table, source, ids):
    got = store.lookup(table, ids.tolist())
    if not np.array_equal(got.rows[got.inverse], source[ids]):
        raise SystemExit(f"{table}: rows differ from the source bank")


def anon_bytes(pid) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def started(data, results, name, baseline=None):
    """A server over data started cold (bases and catalog evicted): (process, address, watch,
    seconds to serve), with its anonymous memory and the bytes it read from disk once serving."""
    evict_bases(data)
    evict(data / "catalog.db")
    t = time.perf_counter()
    proc, address = spawn_server(data)
    seconds = time.perf_counter() - t
    watch = ProcessWatch(proc.pid)
    anon, read = anon_bytes(proc.pid), watch.read_bytes()
    results[name] = {"s": round(seconds, 2), "anon_gb": round(anon / GIB, 3), "read_gb": round(read / GIB, 3)}
    if baseline:
        results[name]["over_0_delta"] = round(seconds / baseline, 2)
    print(f"{name:<34} {seconds:8.1f} s  anon {anon / GIB:6.3f} GB  read {read / GIB:6.3f} GB"
          + (f"  ({seconds / baseline:.2f}x the start with 0 delta tokens)" if baseline else ""), flush=True)
    return proc, address, watch, seconds


def lookups(client, watch, base_file, table, vocab, results, rng):
    """b=1/32/128, cold (bases evicted) then warm, against an in-process gather from the same file."""
    base = np.load(base_file, mmap_mode="r")
    for b in (1, 32, 128):
        ids = rng.choice(vocab, b, replace=False)
        evict(base_file)
        before, t = watch.read_bytes(), time.perf_counter()
        rows = client.lookup(table, ids.tolist()).request_rows()
        cold_ms, read = (time.perf_counter() - t) * 1e3, watch.read_bytes() - before
        warm = []
        for _ in range(20):
            t = time.perf_counter()
            client.lookup(table, ids.tolist()).request_rows()
            warm.append(time.perf_counter() - t)
        gather = []
        for _ in range(20):
            t = time.perf_counter()
            np.take(base, ids, axis=0)
            gather.append(time.perf_counter() - t)
        results[f"lookup_b{b}"] = {"cold_ms": round(cold_ms, 2), "warm_p50_ms": round(np.median(warm) * 1e3, 3),
                                   "warm_over_gather": round(np.median(warm) / np.median(gather), 2),
                                   "cold_read_over_returned": round(read / rows.nbytes, 2)}
        print(f"lookup b={b:<4} cold {cold_ms:8.2f} ms (read {read / rows.nbytes:.2f}x the bytes returned), "
              f"warm p50 {np.median(warm) * 1e3:.3f} ms = {np.median(warm) / np.median(gather):.1f}x an in-process gather",
              flush=True)


def local_bank(address, name, vocab, rng, baseline=None) -> dict:
    """LocalBank open (every Snapshot page) and a b=32 read, with this process's peak anonymous memory."""
    import torch

    watch, before = ProcessWatch(os.getpid()), anon_bytes(os.getpid())
    with MemoryClient(address) as client:
        t = time.perf_counter()
        local = LocalBank(client, "stem")
        opened = time.perf_counter() - t
        batch = torch.from_numpy(rng.choice(vocab, 32, replace=False))
        t = time.perf_counter()
        local.request(batch).result()
        read32 = time.perf_counter() - t
    time.sleep(0.15)  # one more sample
    watch.done = True
    out = {"open_s": round(opened, 2), "delta_tokens": int(len(local.delta_ids)), "b32_read_ms": round(read32 * 1e3, 2),
           "worker_peak_anon_gb": round(watch.peak / GIB, 3), "anon_growth_gb": round((watch.peak - before) / GIB, 3)}
    if baseline:
        out["open_over_localbank"] = round(opened / baseline, 2)
    print(f"{name}: opened with {len(local.delta_ids)} delta tokens in {opened:.2f} s"
          + (f" ({opened / baseline:.2f}x the first open)" if baseline else "")
          + f", b=32 read {read32 * 1e3:.2f} ms, worker anon +{(watch.peak - before) / GIB:.3f} GB", flush=True)
    return out


def changed_tokens(kb, before_edits, edited, results):
    """ChangedTokens across the compaction through a cold server (what RemoteBank.move_to calls),
    against comparing the candidates' rows at both versions in process (the answer before checksums)."""
    with KnowledgeBase(StoreConfig(data_dir=kb)) as store:
        head, t = store.version, store.table("stem")
        candidates = np.union1d(np.flatnonzero(t.edited), t.folded_pairs(before_edits, head)[:, 0])
        evict_bases(kb)
        start, step, differ = time.perf_counter(), t.chunk_tokens(), []
        for i in range(0, len(candidates), step):
            part = candidates[i:i + step]
            differ += part[np.any(t.gather(part, before_edits) != t.gather(part, head), axis=(1, 2))].tolist()
        rows_ms = (time.perf_counter() - start) * 1e3
    proc, address, watch, _ = started(kb, results, "cold start after compact")
    try:
        with MemoryClient(address) as client:
            start = time.perf_counter()
            changed = client.changed_tokens("stem", before_edits, head)
            ms = (time.perf_counter() - start) * 1e3
    finally:
        stop_server(proc)
        watch.done = True
    if set(changed.tolist()) != edited or set(differ) != edited:
        raise SystemExit(f"ChangedTokens across the compaction: {len(changed)} tokens ({len(differ)} by rows), "
                         f"{len(edited)} were edited")
    results["changed_tokens_across_compact_ms"] = round(ms, 2)
    results["changed_tokens"] = {"ms": round(ms, 2), "rows_compared_ms": round(rows_ms, 2),
                                 "over_rows_compared": round(ms / rows_ms, 4), "server_peak_anon_gb": round(watch.peak / GIB, 3)}
    print(f"ChangedTokens across the compaction: the {len(changed)} edited tokens in {ms:.2f} ms over gRPC "
          f"({ms / rows_ms:.4f}x comparing the candidates' rows: {rows_ms:.1f} ms)", flush=True)


def copy_once(kb, work) -> float:
    """Seconds to copy the newest base file once from a cold page cache, to disk and synced."""
    newest = max((kb / "bases").rglob("*.npy"), key=lambda f: f.stat().st_mtime)
    evict_bases(kb)
    seconds = run_sampled(["bash", "-c", f"cp {newest} {work}/copy.npy && sync {work}/copy.npy; echo copied"])["seconds"]
    (work / "copy.npy").unlink()
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the 128,256-token vocabulary")
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--d-ff", type=int, default=8192)
    parser.add_argument("--edits", type=int, default=1000)
    parser.add_argument("--delta-tokens", type=int, default=10_000)
    parser.add_argument("--localbank-tokens", type=int, default=100_000, help="edited tokens of the last LocalBank open")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one under /tmp, removed)")
    args = parser.parse_args()
    vocab = int(round(128_256 * args.scale))
    work = Path(args.work or tempfile.mkdtemp(prefix="memsvc-realscale-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    results, rng = {"vocab": vocab, "layers": args.layers, "d_ff": args.d_ff}, np.random.default_rng(0)
    try:
        source = write_bank(work / "bank.npy", vocab, args.layers, args.d_ff, "float16")
        (work / "words.txt").write_text("\n".join(f"t{i}" for i in range(vocab)))
        bank_gb = (work / "bank.npy").stat().st_size / 1e9
        print(f"bank: {vocab:,} x {args.layers} x {args.d_ff} float16 = {bank_gb:.2f} GB", flush=True)
        evict(work / "bank.npy")
        read_once = run_sampled(["bash", "-c", f"cat {work}/bank.npy > /dev/null; echo read"])["seconds"]
        results["read_once_s"] = round(read_once, 2)
        sample = rng.choice(vocab, 256, replace=False)
        kb, words = work / "kb", str(work / "words.txt")

        evict(work / "bank.npy")
        step(results, "import .npy", [*MEMSVC, "import", str(work / "bank.npy"), "--vocab", words, "--table", "stem",
                                      "--data", str(kb)], read_once)
        with KnowledgeBase(StoreConfig(data_dir=kb)) as store:
            check_rows(store, "stem", source, sample)
        step(results, "export .safetensors (local)", [*MEMSVC, "export", str(work / "out.safetensors"), "--table", "stem",
                                                      "--data", str(kb)], read_once)
        step(results, "import .safetensors", [*MEMSVC, "import", str(work / "out.safetensors"), "--table", "stem",
                                              "--data", str(work / "kb2")], read_once)
        with KnowledgeBase(StoreConfig(data_dir=work / "kb2")) as store:
            check_rows(store, "stem", source, sample)
        shutil.rmtree(work / "kb2")
        (work / "out.safetensors").unlink()
        step(results, "import with conversion (bfloat16)", [*MEMSVC, "import", str(work / "bank.npy"), "--vocab", words,
                                                           "--table", "stem", "--dtype", "bfloat16", "--data", str(work / "kb3")],
             read_once)
        shutil.rmtree(work / "kb3")

        proc, address, watch, start0 = started(kb, results, "cold start, 0 delta tokens")
        edited = set()
        try:
            with MemoryClient(address) as client:  # lookups first: nothing has read the base since it was evicted
                lookups(client, watch, next((kb / "bases" / "stem").glob("*.npy")), "stem", vocab, results, rng)
                before_edits = client.version
                times = []
                for i in range(args.edits):
                    token = int(rng.integers(vocab))
                    edited.add(token)
                    t = time.perf_counter()
                    client.edit("stem", [RowOp("scale", token_id=token, alpha=1.0 + 1e-3 * (i % 7 + 1))])
                    times.append(time.perf_counter() - t)
                results["edits"] = {"n": args.edits, "p50_ms": round(np.median(times) * 1e3, 2)}
                print(f"{args.edits} edits: p50 {np.median(times) * 1e3:.2f} ms", flush=True)
            step(results, "import --server", [*MEMSVC, "import", str(work / "bank.npy"), "--vocab", words, "--table",
                                              "stem_served", "--server", address], read_once)
            step(results, "export --server (.npy)", [*MEMSVC, "export", str(work / "served.npy"), "--table",
                                                     "stem_served", "--server", address], read_once)
            exported = np.load(work / "served.npy", mmap_mode="r")
            if not np.array_equal(exported[sample], source[sample]):
                raise SystemExit("export --server: rows differ from the source bank")
            del exported, source
            (work / "served.npy").unlink()
            (work / "bank.npy").unlink()  # room for the backup and the restored copy (the KB now holds two banks)
        finally:
            stop_server(proc)
            watch.done = True
        results["server_peak_anon_gb"] = round(watch.peak / GIB, 3)

        ids = rng.choice(vocab, min(args.delta_tokens, vocab), replace=False)
        with KnowledgeBase(StoreConfig(data_dir=kb)) as store:  # one commit rewriting every layer of each token
            for start in range(0, len(ids), 1000):
                store.edit("stem", [RowOp("scale", token_id=int(t), alpha=1.001) for t in ids[start:start + 1000]])
        edited |= set(ids.tolist())
        proc, address, watch, seconds = started(kb, results, f"cold start, {len(ids)} delta tokens", start0)
        try:
            results["localbank"] = local_bank(address, "localbank", vocab, rng)
        finally:
            stop_server(proc)
            watch.done = True
        results["server_peak_anon_gb"] = max(results["server_peak_anon_gb"], round(watch.peak / GIB, 3))
        evict_bases(kb)  # fsck, backup and restore (itself an fsck of the copy) over every version and delta row
        step(results, "fsck", [*MEMSVC, "fsck", "--data", str(kb)], read_once)
        step(results, "backup", [*MEMSVC, "backup", "--data", str(kb), "--to", str(work / "kb.tar")], read_once)
        step(results, "restore", [*MEMSVC, "restore", str(work / "kb.tar"), "--data", str(work / "restored")], read_once)
        shutil.rmtree(work / "restored")
        (work / "kb.tar").unlink()

        copies = [copy_once(kb, work)]  # the baseline the issue names, just before and just after
        evict_bases(kb)
        step(results, "compact", [*MEMSVC, "compact", "--data", str(kb)], read_once)
        copies.append(copy_once(kb, work))
        results["copy_once_s"] = [round(c, 2) for c in copies]
        results["compact"]["over_copy_once"] = round(results["compact"]["s"] / np.mean(copies), 2)
        results["compact"]["over_copy_once_range"] = [round(results["compact"]["s"] / c, 2) for c in (max(copies), min(copies))]
        print(f"compact: {results['compact']['over_copy_once']:.2f}x copying the bank file once "
              f"(copies before and after: {copies[0]:.1f} s, {copies[1]:.1f} s)", flush=True)
        changed_tokens(kb, before_edits, edited, results)
        step(results, "gc", [*MEMSVC, "gc", "--retention", "0", "--data", str(kb)])
        many = rng.choice(vocab, min(args.localbank_tokens, vocab), replace=False)
        with KnowledgeBase(StoreConfig(data_dir=kb)) as store:  # every layer of each token, 1,000 tokens a commit
            for start in range(0, len(many), 1000):
                store.edit("stem", [RowOp("scale", token_id=int(t), alpha=1.01) for t in many[start:start + 1000]])
        proc, address, watch, _ = started(kb, results, f"cold start, {len(many)} delta tokens", start0)
        try:
            results["localbank_many"] = local_bank(address, "localbank_many", vocab, rng, results["localbank"]["open_s"])
        finally:
            stop_server(proc)
            watch.done = True
        results["server_peak_anon_gb"] = max(results["server_peak_anon_gb"], round(watch.peak / GIB, 3))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    results["peak_anon_gb_max"] = max(v["peak_anon_gb"] for v in results.values() if isinstance(v, dict) and "peak_anon_gb" in v)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
