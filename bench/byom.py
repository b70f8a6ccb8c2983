"""Bring your own model at real size (issue 18): an official-layout STEM checkpoint imported, and a
transformers model decoding through memsvc.

1. Import. A STEM step directory as the authors' training writes it (params.json +
   stem_shards/stem_model_mp<r>.pt, fp32, each table split along d_ff over `--shards` ranks) is
   built on disk without holding it in memory (every tensor is file-backed, torch.from_file, and
   torch.save streams it), then `memsvc import STEP_DIR` runs as its own process while a sampler
   reads its anonymous RSS (/proc/PID/status RssAnon) every 0.1 s. Baseline, side by side: reading
   the shard files once (`cat > /dev/null`). Rows of sampled tokens are checked against the shards.
   Default: 128,256 x 8 layers x 5,632 in 4 shards (23 GB on disk; ~25 GB more for the imported
   base); `--scale 0.02` for a quick run.
2. Decode. A Gemma 3n text model (random weights, `--hidden`, per-layer table vocab x layers x d)
   generates greedily: unmodified in process, then with its per-layer table read from memsvc
   through RemoteBank (LFU cache, prefetch) and LocalBank, in alternating rounds; tokens/s as a
   ratio to the unmodified model, and the tokens checked equal.

Run: .venv/bin/python bench/byom.py [--scale 0.02] [--skip-import] [--skip-decode]
The last line is a JSON object of the headline figures.
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from memsvc.store import KnowledgeBase, StoreConfig  # noqa: E402

CHUNK = 8192  # rows filled per step when building a shard


def build_step_dir(folder: Path, vocab, layers, d_ff, shards, scratch: Path):
    """params.json + stem_shards/stem_model_mp<r>.pt with deterministic rows, never in memory."""
    (folder / "stem_shards").mkdir(parents=True)
    params = {"name": "byom", "model": {"dim": 2048, "n_layers": layers + 1, "n_heads": 32, "n_kv_heads": 8,
                                        "vocab_size": vocab, "stem_layers": list(range(1, layers + 1)),
                                        "stem_embedding_dim": d_ff}}
    (folder / "params.json").write_text(json.dumps(params))
    width = d_ff // shards
    for r in tqdm(range(shards), desc="building shards", unit="shard"):
        state = {}
        for i in range(layers):
            path = scratch / f"mp{r}_t{i}.bin"
            t = torch.from_file(str(path), shared=True, size=vocab * width, dtype=torch.float32).view(vocab, width)
            for start in range(0, vocab, CHUNK):
                stop = min(vocab, start + CHUNK)
                g = torch.Generator().manual_seed(r * 1_000_003 + i * 1009 + start)
                t[start:stop] = torch.randn(stop - start, width, generator=g)
            state[f"stem_embeddings.{i}.weight"] = t
        torch.save(state, folder / "stem_shards" / f"stem_model_mp{r}.pt")
        del state, t
        for f in scratch.glob(f"mp{r}_*.bin"):
            f.unlink()


class ProcessWatch:
    """Peak RssAnon and disk bytes read of a running process (a CLI step, a server), sampled every 0.1 s."""

    def __init__(self, pid):
        self.pid, self.peak, self.done = pid, 0, False
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while not self.done:
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            except FileNotFoundError:
                return
            time.sleep(0.1)

    def read_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
        return 0


def run_sampled(cmd) -> dict:
    """Run cmd; its wall time and the peak of its anonymous RSS (sampled every 0.1 s)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watch = ProcessWatch(proc.pid)
    out = proc.communicate()[0]
    watch.done = True
    if proc.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{out}")
    return {"seconds": time.perf_counter() - start, "peak_anon_bytes": watch.peak, "output": out.strip().splitlines()[-1]}


def bench_import(args, work: Path) -> dict:
    vocab = int(round(128_256 * args.scale))
    step, kb = work / "0000100000", work / "kb"
    build_step_dir(step, vocab, args.layers, args.d_ff, args.shards, work)
    (work / "words.txt").write_text("\n".join(f"t{i}" for i in range(vocab)))
    shard_bytes = sum(f.stat().st_size for f in (step / "stem_shards").iterdir())
    read = run_sampled(["bash", "-c", f"cat {step}/stem_shards/*.pt > /dev/null; echo read"])
    imported = run_sampled([sys.executable, "-m", "memsvc", "import", str(step), "--vocab", str(work / "words.txt"),
                            "--table", "stem", "--data", str(kb), "--dtype", args.dtype])
    shards = [torch.load(f, mmap=True, weights_only=True) for f in sorted((step / "stem_shards").glob("stem_model_mp*.pt"))]
    sample = np.random.default_rng(0).choice(vocab, 64, replace=False)
    with KnowledgeBase(StoreConfig(data_dir=kb)) as store:
        got = store.lookup("stem", sample.tolist())
        rows = got.rows[got.inverse]
        for j, t in enumerate(sample.tolist()):
            for i in range(args.layers):
                want = torch.cat([s[f"stem_embeddings.{i}.weight"][t] for s in shards])
                stored = torch.from_numpy(rows[j, i].astype(np.float32) if args.dtype != "bfloat16"
                                          else (rows[j, i].astype(np.uint32) << 16).view(np.float32))
                expect = want.to(torch.bfloat16).float() if args.dtype == "bfloat16" else want
                if not torch.equal(stored, expect):
                    raise SystemExit(f"row {t} layer {i} differs from the checkpoint")
    return {"vocab": vocab, "shard_gb": shard_bytes / 1e9, "import_s": imported["seconds"], "read_once_s": read["seconds"],
            "import_over_read": imported["seconds"] / read["seconds"], "import_peak_anon_gb": imported["peak_anon_bytes"] / 1e9,
            "rows_checked": len(sample) * args.layers}


def bench_decode(args, work: Path) -> dict:
    import transformers

    from clients.banks import LocalBank, RemoteBank
    from clients.client import MemoryClient
    from clients.hf import attach, generate
    from memsvc.server.spawn import spawn_server, stop_server
    from memsvc.store.checkpoints import read_tensor

    layers, vocab = 4, args.decode_vocab
    config = transformers.Gemma3nTextConfig(
        vocab_size=vocab, vocab_size_per_layer_input=vocab, hidden_size=args.hidden, hidden_size_per_layer_input=64,
        intermediate_size=4 * args.hidden, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        head_dim=args.hidden // 4, num_kv_shared_layers=0, activation_sparsity_pattern=[0.0] * layers,
        layer_types=["sliding_attention"] * (layers - 1) + ["full_attention"], max_position_embeddings=512)
    torch.manual_seed(0)
    model = transformers.Gemma3nForCausalLM(config).eval()
    model.save_pretrained(work / "gemma")
    rows, dtype = read_tensor(work / "gemma")
    with KnowledgeBase(StoreConfig(data_dir=work / "decode-kb", create=True)) as kb:
        kb.import_table("ple", rows, [f"t{i}" for i in range(vocab)], dtype=dtype)
    prompt = torch.randint(0, vocab, (1, 16), generator=torch.Generator().manual_seed(1))
    steps = dict(max_new_tokens=args.new_tokens, do_sample=False)
    original = model.model.embed_tokens_per_layer
    proc, address = spawn_server(work / "decode-kb")
    try:
        with MemoryClient(address) as client:
            banks = {"remote": RemoteBank(client, "ple", cache_tokens=vocab // 20), "local": LocalBank(client, "ple")}
            times = {"in_process": [], "remote": [], "local": []}
            expected = model.generate(prompt, **steps)
            for _ in tqdm(range(args.rounds), desc="decode rounds"):
                model.model.embed_tokens_per_layer = original
                t = time.perf_counter()
                model.generate(prompt, **steps)
                times["in_process"].append(time.perf_counter() - t)
                for name, bank in banks.items():
                    attach(model, bank)
                    t = time.perf_counter()
                    out = generate(model, prompt, **steps)
                    times[name].append(time.perf_counter() - t)
                    if not torch.equal(out, expected):
                        raise SystemExit(f"{name}: tokens differ from the unmodified model")
            hit_rate = banks["remote"].cache.hit_rate
    finally:
        stop_server(proc)
    tps = {k: args.new_tokens / float(np.median(v)) for k, v in times.items()}
    return {"decode_tokens_per_s": tps, "remote_over_in_process": tps["remote"] / tps["in_process"],
            "local_over_in_process": tps["local"] / tps["in_process"], "remote_cache_hit_rate": hit_rate}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the 128,256-token vocabulary")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--d-ff", type=int, default=5632)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one under /tmp, removed)")
    parser.add_argument("--skip-import", action="store_true")
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--decode-vocab", type=int, default=32768)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="memsvc-byom-", dir="/tmp"))
    result = {}
    try:
        if not args.skip_import:
            result |= bench_import(args, work / "import")
            print(f"import: {result['vocab']:,} x {args.layers} x {args.d_ff} fp32 in {args.shards} shards "
                  f"({result['shard_gb']:.1f} GB): {result['import_s']:.1f} s ({result['import_over_read']:.2f}x reading "
                  f"the shards once), peak anonymous RSS {result['import_peak_anon_gb']:.2f} GB; "
                  f"{result['rows_checked']} rows equal to the checkpoint")
        if not args.skip_decode:
            result |= bench_decode(args, work / "decode")
            tps = result["decode_tokens_per_s"]
            print(f"decode ({args.new_tokens} tokens, batch 1): in process {tps['in_process']:.1f} tok/s, "
                  f"remote {tps['remote']:.1f} ({result['remote_over_in_process']:.2f}x, cache hits "
                  f"{result['remote_cache_hit_rate']:.2f}), local {tps['local']:.1f} ({result['local_over_in_process']:.2f}x)")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
