"""Memory of distillation at scale, on tiny models with a large vocabulary (no model download):

  1. peak RSS of one training step (forward, KD loss, backward, optimizer step) with full-vocabulary logits
     against the chunked loss (--kd-chunk), for a cached top-k teacher and a live teacher, at batch x length;
  2. the RAM of reading every batch of one epoch from a logit cache, memory-mapped shards (how training reads
     it now) against the whole cache loaded in memory (how it was read before the shards: int64 ids and float32
     log-probs held for every token).

Each variant runs in its own process (so peaks do not mix), with an address-space limit (--ram-limit-gb): a
variant over it ends with "out of memory" instead of the kernel's OOM killer. Step time is a median over
--repeats steps; compare variants as ratios within one run.

    .venv/bin/python benchmarks/kd_memory.py     # writes benchmarks/results/distill/kd_memory.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgedistill.runinfo import run_record, write_result

HERE = Path(__file__).resolve().parent


def _status() -> dict:
    """Current VmRSS / RssAnon / RssFile in MB, and the peak RSS so far."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) / 1024
    out["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _models(vocab: int, hidden: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    def make(layers, seed):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                          tie_word_embeddings=False)
        return LlamaForCausalLM(cfg).float()

    return make(2, 1).eval().requires_grad_(False), make(1, 2).train()


def step_variant(args) -> dict:
    """One variant of part 1, in this process."""
    import torch

    from edgedistill.distill.settings import LossSettings
    from edgedistill.distill.train import kd_objective
    from edgedistill.tensors import IGNORE

    torch.set_num_threads(args.threads)
    teacher, student = _models(args.vocab, args.hidden)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch, args.length), generator=g)
    mask = torch.ones_like(ids)
    labels = torch.roll(ids, -1, 1)
    labels[:, : args.length // 4] = IGNORE  # the first quarter is the prompt
    labels[:, -1] = IGNORE
    topk = None
    if args.teacher == "cache":  # what a k=64 cache hands the loss: (B, T, k) log-probs and ids
        lp = torch.log_softmax(torch.randn(args.batch, args.length, 64, generator=g), -1)
        topk = (lp, torch.randint(0, args.vocab, (args.batch, args.length, 64), generator=g))
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    cfg = LossSettings(loss="forward_kl", kd_weight=0.5)
    before = _status()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        total, _ = kd_objective(student, ids, mask, labels, cfg, teacher=teacher if args.teacher == "live" else None,
                                topk=topk, chunk=args.chunk)
        (total / (labels != IGNORE).sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        del total
    after = _status()
    return {"rss_before_step_mb": round(before["VmRSS"], 1), "peak_rss_mb": round(after["peak"], 1),
            "step_peak_mb": round(after["peak"] - before["VmRSS"], 1), "step_s_median": round(statistics.median(times), 3),
            "step_s": [round(t, 3) for t in times]}


def _cache_data(sequences: int, tokens: int):
    from edgedistill.distill.dataset import Encoded
    from edgedistill.tensors import IGNORE

    examples = []
    for i in range(sequences):
        ids = [(i * 7 + j) % 30000 + 1 for j in range(tokens + 16)]
        labels = [IGNORE] * 15 + ids[16:] + [IGNORE]
        examples.append({"id": f"s{i}", "input_ids": ids, "labels": labels})
    return Encoded(examples)


def cache_variant(args) -> dict:
    """One variant of part 2, in this process: every batch of one epoch read as training reads it."""
    import numpy as np
    import torch

    from edgedistill.distill import logit_cache as lc
    from edgedistill.tensors import collate

    data = _cache_data(args.sequences, args.tokens)
    before = _status()
    t0 = time.perf_counter()
    if args.mode == "mmap":
        cache = lc.load(args.cache, data)
        teacher_for = cache.teacher_for
    else:  # the loader before shards: every array in memory, widened once as it used to be
        arrays = lc.load_arrays(args.cache)
        ids = torch.from_numpy(arrays["ids"].astype(np.int64))
        lps = torch.from_numpy(arrays["logprobs"].astype(np.float32))
        offsets = arrays["offsets"]
        k = ids.shape[1]

        def teacher_for(indices, labels):
            B, T = labels.shape
            lp = torch.full((B, T, k), -5.0)
            out = torch.zeros((B, T, k), dtype=torch.long)
            for row, i in enumerate(indices):
                pos = (labels[row] != -100).nonzero().squeeze(-1)
                lp[row, pos] = lps[offsets[i]:offsets[i + 1]]
                out[row, pos] = ids[offsets[i]:offsets[i + 1]]
            return lp, out
    opened = time.perf_counter() - t0
    peak_batch = 0.0
    t0 = time.perf_counter()
    for start in range(0, len(data.examples), args.batch):
        idx = list(range(start, min(start + args.batch, len(data.examples))))
        batch = collate([data.examples[i] for i in idx], 0)
        lp, tid = teacher_for(idx, batch["labels"])
        peak_batch = max(peak_batch, (lp.nbytes + tid.nbytes) / 2**20)
    epoch = time.perf_counter() - t0
    after = _status()
    return {"open_s": round(opened, 3), "epoch_read_s": round(epoch, 2),
            "batches": -(-len(data.examples) // args.batch), "peak_rss_mb": round(after["peak"], 1),
            "peak_over_start_mb": round(after["peak"] - before["VmRSS"], 1),
            "end_rss_anon_mb": round(after["RssAnon"], 1), "end_rss_file_mb": round(after["RssFile"], 1),
            "batch_tensors_mb": round(peak_batch, 1)}


def _child(argv: list[str], ram_gb: float) -> dict:
    def limit():
        b = int(ram_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (b, b))

    p = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, preexec_fn=limit)
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        oom = "memory" in tail.lower() or "alloc" in tail.lower()
        return {"error": ("out of memory under the limit: " if oom else "failed: ") + tail[:200]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=150_000)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--chunks", default="0,1024", help="kd_chunk values; 0 = full logits")
    ap.add_argument("--small-batch", type=int, default=2, help="a second, smaller batch (both teacher forms)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ram-limit-gb", type=float, default=20.0)
    ap.add_argument("--sequences", type=int, default=4000, help="cache part: sequences of --tokens response tokens")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "distill" / "kd_memory.json")
    # one variant, in a child process
    ap.add_argument("--one", choices=["step", "cache"])
    ap.add_argument("--teacher", choices=["cache", "live"], default="cache")
    ap.add_argument("--chunk", type=int, default=0)
    ap.add_argument("--mode", choices=["mmap", "memory"], default="mmap")
    ap.add_argument("--cache", type=Path)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(step_variant(args) if args.one == "step" else cache_variant(args)))
        return

    common = ["--vocab", str(args.vocab), "--hidden", str(args.hidden), "--length", str(args.length),
              "--repeats", str(args.repeats), "--threads", str(args.threads)]
    steps = []
    for teacher, batch in (("cache", args.batch), ("cache", args.small_batch), ("live", args.batch),
                           ("live", args.small_batch)):
        for chunk in [int(c) for c in args.chunks.split(",")]:
            r = _child(["--one", "step", *common, "--batch", str(batch), "--teacher", teacher, "--chunk", str(chunk)],
                       args.ram_limit_gb)
            steps.append({"teacher": teacher, "batch": batch, "length": args.length, "kd_chunk": chunk, **r})
            print(json.dumps(steps[-1]), flush=True)
    for teacher, batch in {(r["teacher"], r["batch"]) for r in steps}:
        rows = [r for r in steps if (r["teacher"], r["batch"]) == (teacher, batch) and "step_peak_mb" in r]
        full = next((r for r in rows if r["kd_chunk"] == 0), None)
        for r in rows:
            if full is not None and r is not full:
                r["full_over_chunked_step_memory"] = round(full["step_peak_mb"] / r["step_peak_mb"], 2)
                r["chunked_over_full_step_time"] = round(r["step_s_median"] / full["step_s_median"], 3)

    reads = []
    with tempfile.TemporaryDirectory(dir=HERE.parent / "build" if (HERE.parent / "build").is_dir() else None) as tmp:
        import numpy as np

        from edgedistill.distill import logit_cache as lc

        data = _cache_data(args.sequences, args.tokens)
        rng = np.random.default_rng(0)

        def rows():
            for ex in data.examples:
                n = sum(1 for x in ex["labels"] if x != -100)
                lp = np.log(rng.dirichlet(np.ones(64), size=n)).astype(np.float32)
                yield rng.integers(0, 49152, size=(n, 64)), lp

        cache = Path(tmp) / "cache"
        meta = lc.build(rows(), "synthetic", "fp", data, cache, k=64, vocab=49152)
        for mode in ("memory", "mmap"):
            r = _child(["--one", "cache", "--cache", str(cache), "--mode", mode, "--sequences", str(args.sequences),
                        "--tokens", str(args.tokens), "--batch", str(args.batch)], args.ram_limit_gb)
            reads.append({"mode": mode, **r})
            print(json.dumps(reads[-1]), flush=True)
        cache_info = {k: meta[k] for k in ("tokens", "sequences", "k", "bytes_per_token", "file_bytes")}
        cache_info["shards"] = len(meta["shards"])
    write_result(args.out, {**run_record(), "settings": {k: v for k, v in vars(args).items() if k not in
                                                         ("one", "teacher", "chunk", "mode", "cache", "out")},
                            "training_step": steps, "cache": cache_info, "cache_read": reads})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
