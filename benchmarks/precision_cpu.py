"""bf16 against fp32 training on this CPU: the demo's student, the same steps from the same logit cache.

`--precision auto` takes bf16 autocast on a CPU where a short probe measures bf16 matmuls at least twice as fast
as fp32 (AMX), fp32 elsewhere (edgedistill.distill.train.resolve_precision). This measures what that choice
buys and whether it costs fidelity, with the demo's recipe (benchmarks/budget_curve.py's pieces):

  1. the teacher's F16 GGUF answers the test prompts of every domain (the bench's in-domain fidelity set);
  2. the llama.cpp engine answers --train-prompts train prompts per domain; their top-64 log-probs go into one
     logit cache;
  3. one 10-layer hardware-friendly student is pruned from the teacher (what `run --target laptop` makes);
  4. for each seed and each precision, a fresh copy is distilled from the cache for --steps steps (forward KL +
     CE 0.5/0.5, batch 4 x 2, lr 5e-4: the demo's settings), timed (training tokens per second), and scored
     teacher-forced in float32 on the teacher's test answers: mean KL(teacher || student) and top-1 agreement
     with 95% bootstrap intervals over prompts.

The runs alternate precisions within each seed, one at a time (two torch processes on 2 cores slow each other).

    .venv/bin/python benchmarks/precision_cpu.py     # results/distill/precision_cpu.{json,md}
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from budget_curve import TEACHER, build_cache, in_domain, log, teacher_logprobs, test_sequences

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "distill" / "precision_cpu"


def teacher_train_data(work: Path, per_domain: int) -> Path:
    from edgedistill.data.stage import GenerateSettings, generate_data

    out = work / f"teacher-train-{per_domain}.jsonl"
    if not out.exists():
        log(f"teacher answers: train, {per_domain} per domain")
        generate_data(GenerateSettings(teacher=TEACHER, split="train", limit=per_domain, out=out, max_new_tokens=128,
                                       teacher_engine="llama.cpp"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("build/bench-precision"))
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--train-prompts", type=int, default=32, help="per domain (the demo's)")
    ap.add_argument("--seeds", default="0,1")
    args = ap.parse_args()
    import torch

    from edgedistill.distill.stage import DistillSettings, PruneSettings, distill, prune
    from edgedistill.distill.train import cpu_bf16_speedup, resolve_precision
    from edgedistill.models import load_model
    from edgedistill.runinfo import run_record, write_result

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    seqs, _ = test_sequences(work, threads)
    data = teacher_train_data(work, args.train_prompts)
    cache = build_cache(work, data, f"train-{args.train_prompts}")
    teacher = load_model(TEACHER)
    init = work / "student-init"
    if not (init / "config.json").exists():
        prune(PruneSettings(teacher=TEACHER, out=init, layers=10, hw_friendly=True, calibration_tokens=8192), teacher=teacher)
    ref_lp = teacher_logprobs(teacher[0], seqs)
    probe = cpu_bf16_speedup()
    auto = resolve_precision("auto", "cpu")
    log(f"probe: bf16 matmul {probe:.2f}x fp32; auto -> {auto[0]} ({auto[1]})")
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for precision in ("fp32", "bf16"):
            out = work / f"distill-{precision}-seed{seed}"
            shutil.rmtree(out, ignore_errors=True)
            s = DistillSettings(teacher=TEACHER, student=str(init), generations=[data], out=out, loss="forward_kl",
                                kd_weight=0.5, steps=args.steps, batch_size=4, grad_accum=2, lr=5e-4,
                                warmup_steps=min(6, args.steps // 4), save_steps=100_000, keep_checkpoints=False,
                                logit_cache=cache, precision=precision, seed=seed)
            log(f"distilling: {precision}, seed {seed}, {args.steps} steps")
            t = time.perf_counter()
            r = distill(s)  # the cache stands in for the teacher
            wall = time.perf_counter() - t
            student, _ = load_model(str(out / "student"))
            fid = in_domain(student.float().eval(), seqs, ref_lp)
            rows.append({"precision": precision, "seed": seed, "steps": r["steps"], "train_tokens": r["train_tokens"],
                         "train_s": r["train_s"], "wall_s": round(wall, 2),
                         "tokens_per_s": r["train_tokens"] / r["train_s"], "in_domain": fid})
            o = fid["overall"]
            log(f"  {r['train_tokens'] / r['train_s']:.0f} tokens/s, KL {o['mean_kl']:.3f}, top-1 "
                f"{o['top1_agreement']:.3f}")
            shutil.rmtree(out, ignore_errors=True)
    by = {(r["precision"], r["seed"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    ratios = {"tokens_per_s_bf16_over_fp32": [by["bf16", s]["tokens_per_s"] / by["fp32", s]["tokens_per_s"]
                                              for s in seeds],
              "mean_kl_bf16_minus_fp32": [by["bf16", s]["in_domain"]["overall"]["mean_kl"]
                                          - by["fp32", s]["in_domain"]["overall"]["mean_kl"] for s in seeds],
              "mean_kl_seed_spread_fp32": (max(by["fp32", s]["in_domain"]["overall"]["mean_kl"] for s in seeds)
                                           - min(by["fp32", s]["in_domain"]["overall"]["mean_kl"] for s in seeds))}
    # the budget curve's projection (tokens to reach the laptop floor) at the rates measured here
    import json

    curve = json.loads((HERE / "results" / "distill" / "budget_curve.json").read_text())
    proj = (curve.get("fit") or {}).get("projection")
    projection = None
    if proj:
        rate = {p: sorted(r["tokens_per_s"] for r in rows if r["precision"] == p) for p in ("fp32", "bf16")}
        med = {p: v[len(v) // 2] for p, v in rate.items()}
        projection = {"train_tokens": proj["train_tokens"], "budget_curve_cpu": curve["machine"]["cpu"],
                      "budget_curve_tokens_per_s": proj["cpu_tokens_per_s"],
                      "hours_fp32_here": proj["train_tokens"] / med["fp32"] / 3600,
                      "hours_bf16_here": proj["train_tokens"] / med["bf16"] / 3600}
    report = {"benchmark": "precision_cpu", **run_record(), "torch_threads": threads, "probe_bf16_over_fp32": probe,
              "auto_choice": list(auto), "settings": {k: str(v) for k, v in vars(args).items()},
              "test_prompts": len(seqs), "runs": rows, "ratios": ratios,
              "budget_curve_projection": projection}
    write_result(OUT.with_suffix(".json"), report)
    lines = [f"# bf16 against fp32 training on {report['machine']['cpu']}", "",
             f"`{report['command']}`; CPU features {' '.join(report['machine']['cpu_features'])}; {threads} torch "
             f"threads. Probe: bf16 matmul {probe:.2f}x fp32; `--precision auto` chose {auto[0]}. "
             f"{args.steps} steps from one logit cache of {args.train_prompts} teacher answers per domain; fidelity on "
             f"the teacher's answers to {len(seqs)} test prompts (95% bootstrap intervals over prompts).", "",
             "| precision | seed | train tokens | train s | tokens/s | in-domain KL [95% CI] | top-1 [95% CI] |",
             "|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        o = r["in_domain"]["overall"]
        lines.append(f"| {r['precision']} | {r['seed']} | {r['train_tokens']} | {r['train_s']:.0f} | "
                     f"{r['tokens_per_s']:.0f} | {o['mean_kl']:.3f} [{o['mean_kl_ci'][0]:.3f}, {o['mean_kl_ci'][1]:.3f}]"
                     f" | {100 * o['top1_agreement']:.1f}% [{100 * o['top1_agreement_ci'][0]:.1f}, "
                     f"{100 * o['top1_agreement_ci'][1]:.1f}] |")
    lines += ["", "bf16 / fp32 tokens/s per seed: " + ", ".join(f"{x:.2f}" for x in
                                                               ratios["tokens_per_s_bf16_over_fp32"]),
              "KL bf16 - fp32 per seed: " + ", ".join(f"{x:+.3f}" for x in ratios["mean_kl_bf16_minus_fp32"])
              + f"; fp32 seed-to-seed spread {ratios['mean_kl_seed_spread_fp32']:.3f}.", ""]
    if projection:
        lines += [f"The budget curve's projection ({projection['train_tokens']:.2g} training tokens to the laptop floor, "
                  f"benchmarks/results/distill/budget_curve.md) at the rates measured here: "
                  f"{projection['hours_fp32_here']:.3g} hours in fp32, {projection['hours_bf16_here']:.3g} hours in "
                  f"bf16 (the curve's own run: {projection['budget_curve_tokens_per_s']:.0f} tokens/s on "
                  f"{projection['budget_curve_cpu']}).", ""]
    OUT.with_suffix(".md").write_text("\n".join(lines))
    log(f"wrote {OUT.with_suffix('.json')}")


if __name__ == "__main__":
    main()
