"""Teacher-logit cache on the default teacher: bytes per token, what top-k loses, and training speed from the
cache vs with the live teacher, measured in the same run on the same student and data.

Steps (outputs under --work, reused when present):
  1. the teacher answers --prompts train prompts per domain (greedy, --max-new-tokens);
  2. a 10-layer, K-quant friendly student is pruned from the teacher;
  3. the cache is built at each k in --ks (time, bytes/token, teacher mass inside the top k);
  4. the loss of accuracy of top-k: forward KL of the untrained student against the full teacher distribution
     vs against the k+1-bin approximation, on the same tokens;
  5. --steps training steps with the live teacher and --steps from the cache (k = 64), each --repeats times;
     tokens/s is the median over repeats.

    .venv/bin/python benchmarks/logit_cache.py      # writes benchmarks/results/logit_cache.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from edgedistill.runinfo import write_result

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("build/bench-logit-cache"))
    ap.add_argument("--prompts", type=int, default=16, help="train prompts per domain")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--ks", default="16,64,128")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "distill" / "logit_cache.json")
    args = ap.parse_args()

    import torch

    from edgedistill.data import default_data_dir
    from edgedistill.data.stage import GenerateSettings, generate_data
    from edgedistill.distill import logit_cache
    from edgedistill.distill.dataset import encode, load_generations
    from edgedistill.tensors import collate
    from edgedistill.distill.losses import bins, get, masked_mean
    from edgedistill.distill.stage import CacheSettings, DistillSettings, PruneSettings, cache_logits, distill, prune
    from edgedistill.models import DEFAULT_TEACHER, load_model
    from edgedistill.models.pull import pull
    from edgedistill.runinfo import run_record

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    teacher_dir, _ = pull(DEFAULT_TEACHER)
    teacher = load_model(str(teacher_dir))
    data_dir = default_data_dir()

    gen_path = work / "generations.jsonl"
    t = time.perf_counter()
    generate_data(GenerateSettings(split="train", limit=args.prompts, data_dir=data_dir, out=gen_path,
                                   max_new_tokens=args.max_new_tokens, teacher_engine="torch"), teacher=teacher)
    print(f"generations ready ({time.perf_counter() - t:.0f} s)", file=sys.stderr)

    student_dir = work / "student-10L-hw"
    if not student_dir.exists():
        prune(PruneSettings(teacher=DEFAULT_TEACHER, out=student_dir, layers=10, hw_friendly=True, data_dir=data_dir,
                            max_tokens=8192), teacher=teacher)

    data = encode(teacher[1], load_generations([gen_path]), 512)
    caches = {}
    for k in (int(x) for x in args.ks.split(",")):
        cdir = work / f"cache-k{k}"
        shutil.rmtree(cdir, ignore_errors=True)
        t = time.perf_counter()
        meta = cache_logits(CacheSettings(teacher=DEFAULT_TEACHER, generations=[gen_path], out=cdir, k=k, max_length=512, teacher_engine="torch"))
        caches[k] = {**meta, "build_s": time.perf_counter() - t}

    # What top-k costs: the untrained student's forward KL against the full teacher vs the k+1-bin version.
    student0 = load_model(str(student_dir))[0].eval()
    batch = collate(data.examples[:8], teacher[1].pad_token_id)
    mask = batch["labels"] != -100
    with torch.inference_mode():
        t_logits = teacher[0](input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        s_logits = student0(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        full = {n: float(masked_mean(get(n).fn(*bins(s_logits, t_logits)), mask)) for n in ("forward_kl", "reverse_kl")}
        for k in caches:
            c = logit_cache.load(work / f"cache-k{k}", data)
            lp, ids = c.teacher_for(list(range(8)), batch["labels"])
            approx = {n: float(masked_mean(get(n).fn(*bins(s_logits, (lp, ids))), mask)) for n in full}
            caches[k]["loss_vs_full_logits"] = {n: {"full": full[n], "top_k": approx[n],
                                                    "relative_error": abs(approx[n] - full[n]) / full[n]} for n in full}

    # Training speed, live teacher vs cache (k = 64), alternating so drift on a shared machine hits both.
    speeds = {"live_teacher": [], "cache_k64": []}
    for r in range(args.repeats):
        for mode in speeds:
            run = work / f"run-{mode}-{r}"
            shutil.rmtree(run, ignore_errors=True)
            got = distill(DistillSettings(teacher=DEFAULT_TEACHER, student=str(student_dir), generations=[gen_path], out=run, kd_weight=1.0,
                                        steps=args.steps, batch_size=4, grad_accum=1, lr=1e-4, warmup_steps=0,
                                        save_steps=10_000, keep_checkpoints=False,
                                        logit_cache=work / "cache-k64" if mode == "cache_k64" else None),
                        teacher=teacher if mode == "live_teacher" else None)
            speeds[mode].append(got["train_tokens"] / got["train_s"])  # all tokens through the student, in training
    report = {
        "benchmark": "logit_cache",
        **run_record(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "torch_threads": torch.get_num_threads(),
        "data": {"sequences": len(data.examples), "response_tokens": data.response_tokens},
        "student": json.loads((student_dir / "pruning.json").read_text())["shape"],
        "caches": {str(k): v for k, v in caches.items()},
        "training_tokens_per_s": {m: {"median": statistics.median(v), "runs": v} for m, v in speeds.items()},
        "speedup_cache_over_live": statistics.median(speeds["cache_k64"]) / statistics.median(speeds["live_teacher"]),
    }
    write_result(args.out, report)
    for k, v in caches.items():
        e = v["loss_vs_full_logits"]["forward_kl"]["relative_error"]
        print(f"k={k:4d}: {v['bytes_per_token']:.0f} B/token, top-k mass {100 * v['teacher_mass_in_top_k']:.1f}%, "
              f"forward-KL error {100 * e:.1f}%, build {v['build_s']:.0f} s")
    print(f"training tokens/s: live {statistics.median(speeds['live_teacher']):.0f}, cache "
          f"{statistics.median(speeds['cache_k64']):.0f} (x{report['speedup_cache_over_live']:.2f}); wrote {args.out}")


if __name__ == "__main__":
    main()
