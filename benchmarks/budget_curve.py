"""The budget a student needs: in-domain fidelity of the laptop student against the optimizer steps it trained.

  1. the teacher's F16 GGUF (llama.cpp's converter) answers the test prompts of every domain: the in-domain
     fidelity set, the same cached answers `edgedistill bench` scores every variant on;
  2. the llama.cpp engine answers --train-prompts train prompts per domain; the teacher's top-64 log-probs of
     those answers go into one logit cache (the fastest teacher path: benchmarks/results/distill/teacher_engines);
  3. one 10-layer hardware-friendly student is pruned from the teacher (what `run --target laptop` makes);
  4. for each budget in --steps, a fresh copy is distilled from the cache (forward KL + CE 0.5/0.5, batch 4 x 2,
     lr 5e-4, cosine schedule over that budget), then scored teacher-forced on the teacher's test answers:
     mean KL(teacher || student) and top-1 agreement over the answer positions, 95% bootstrap intervals over
     prompts (edgedistill.bench.fidelity, the bench's own code, here in torch for both models);
  5. the lever the demo has: at --lever-steps, the demo's 24 teacher answers (8 per domain, many epochs) against
     the many-answer cache (fewer repeats), both from the cache;
  6. fit: log KL = log a - b log tokens (least squares on the budgets), and the tokens, FLOPs (6 x parameters x
     tokens for training, 2 x teacher parameters per cached token) and hours at which the fit reaches the
     profile's floor, on this CPU (measured tokens/s) and on one GPU at a stated share of its peak.

    .venv/bin/python benchmarks/budget_curve.py           # ~1 h on 2 cores: results/distill/budget_curve.{json,md,png}
    .venv/bin/python benchmarks/budget_curve.py --refit    # only step 6, from the saved JSON (e.g. a new floor)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "distill" / "budget_curve"
TEACHER = "smollm2-135m-instruct"
GPU = {"name": "one H100-class GPU, bf16 dense peak 989 TFLOP/s", "peak_flops": 989e12, "utilisation": 0.3}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def teacher_data(work: Path, per_domain: int, val_per_domain: int, threads: int) -> dict[str, Path]:
    from edgedistill.data.stage import GenerateSettings, generate_data

    files = {}
    for split, n in (("train", per_domain), ("validation", val_per_domain), ("train-demo", 8)):
        out = work / f"teacher-{split}.jsonl"
        s = GenerateSettings(teacher=TEACHER, split=split.split("-")[0], limit=n, out=out, max_new_tokens=128,
                             teacher_engine="llama.cpp")
        log(f"teacher answers: {split}, {n} per domain")
        generate_data(s)
        files[split] = out
    return files


def build_cache(work: Path, data: Path, name: str) -> Path:
    from edgedistill.distill.stage import CacheSettings, cache_logits

    out = work / f"cache-{name}"
    if not (out / "cache.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        log(f"logit cache {name} (llama.cpp F16, top-64)")
        cache_logits(CacheSettings(teacher=TEACHER, generations=[data], out=out, k=64, max_length=512,
                                   teacher_engine="llama.cpp"))
    return out


def test_sequences(work: Path, threads: int) -> tuple[list[dict], Path]:
    from edgedistill.bench.fidelity import teacher_answers, test_prompts
    from edgedistill.data import default_data_dir
    from edgedistill.export.pipeline import ExportSettings, export_model

    ref = work / "teacher-export" / "gguf-f16"
    if not (ref / "manifest.json").exists():
        shutil.rmtree(work / "teacher-export", ignore_errors=True)
        export_model(TEACHER, work / "teacher-export", ExportSettings(variants=["gguf:f16"]))
    log("teacher answers to the test prompts (cached for the bench)")
    return teacher_answers(ref, test_prompts(default_data_dir()), 128, threads=threads), ref


def teacher_logprobs(teacher, seqs: list[dict]) -> list[np.ndarray]:
    import torch

    from edgedistill.runtime.logits import log_softmax

    out = []
    with torch.inference_mode():
        for s in seqs:
            logits = teacher(torch.tensor([s["ids"]])).logits[0, s["start"] - 1 : -1].float().numpy()
            out.append(log_softmax(logits).astype(np.float32))
    return out


def in_domain(student, seqs: list[dict], ref_lp: list[np.ndarray]) -> dict:
    import torch

    from edgedistill.bench.fidelity import by_domain
    from edgedistill.runtime.logits import sequence_stats

    stats = []
    with torch.inference_mode():
        for s, lp in zip(seqs, ref_lp):
            logits = student(torch.tensor([s["ids"]])).logits[0, s["start"] - 1 : -1].float().numpy()
            stats.append(sequence_stats(lp, logits, s["ids"][s["start"]:]))
    return by_domain(stats, [s["domain"] for s in seqs])


def distill_one(work: Path, init: Path, cache: Path, data: Path, validation: Path, steps: int, teacher, label: str):
    from edgedistill.distill.stage import DistillSettings, distill

    out = work / f"distill-{label}"
    shutil.rmtree(out, ignore_errors=True)
    s = DistillSettings(teacher=TEACHER, student=str(init), generations=[data], validation=[validation], out=out,
                        loss="forward_kl", kd_weight=0.5, steps=steps, batch_size=4, grad_accum=2, lr=5e-4,
                        warmup_steps=min(6, steps // 4), save_steps=100_000, keep_checkpoints=False,
                        logit_cache=cache)
    log(f"distilling {label}: {steps} steps from {cache.name}")
    r = distill(s, teacher=teacher)
    return out / "student", r


def fit(rows: list[dict], floor: dict, student_params: int, teacher_params: int, cpu_tokens_per_s: float) -> dict:
    """log KL = log a - b log T over the budgets; the tokens where it meets the floor's KL, and its cost."""
    t = np.array([r["train_tokens"] for r in rows], dtype=float)
    kl = np.array([r["in_domain"]["overall"]["mean_kl"] for r in rows], dtype=float)
    slope, intercept = np.polyfit(np.log(t), np.log(kl), 1)
    out = {"model": "mean_kl = a * train_tokens ** -b", "a": float(np.exp(intercept)), "b": float(-slope),
           "floor_max_mean_kl": floor["max_mean_kl"], "floor_from": floor["source"]}
    if slope >= 0:
        out["projection"] = None
        out["note"] = "KL does not fall with tokens over these budgets: no projection"
        return out
    tokens = float(np.exp((np.log(floor["max_mean_kl"]) - intercept) / slope))
    train_flops = 6 * student_params * tokens
    cache_flops = 2 * teacher_params * tokens  # the teacher scores every token once (fewer with repeated epochs)
    gpu_s = (train_flops + cache_flops) / (GPU["peak_flops"] * GPU["utilisation"])
    out["projection"] = {"train_tokens": tokens, "train_flops": train_flops, "teacher_cache_flops": cache_flops,
                         "cpu_hours": tokens / cpu_tokens_per_s / 3600, "cpu_tokens_per_s": cpu_tokens_per_s,
                         "gpu": GPU, "gpu_hours": gpu_s / 3600,
                         "optimizer_steps_at_this_batch": tokens / np.mean([r["train_tokens"] / r["steps"]
                                                                             for r in rows])}
    return out


def floor_of(profile: str) -> dict:
    from edgedistill.targets import load_target

    t = load_target(profile)
    return {"max_mean_kl": t.quality_floor.max_mean_kl, "min_top1_agreement": t.quality_floor.min_top1_agreement,
            "source": f"targets/{Path(t.source).name}"}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["budgets"]
    t = np.array([r["train_tokens"] for r in rows], dtype=float)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((ax1, "mean_kl", "in-domain mean KL (nats)"), (ax2, "top1_agreement", "in-domain top-1")):
        y = np.array([r["in_domain"]["overall"][key] for r in rows])
        ci = np.array([r["in_domain"]["overall"][f"{key}_ci"] for r in rows]).T
        ax.errorbar(t, y, yerr=[y - ci[0], ci[1] - y], fmt="o", capsize=3, label="student (95% CI over prompts)")
        ax.set_xscale("log")
        ax.set_xlabel("training tokens")
        ax.set_ylabel(label)
    f = report["fit"]
    ax1.set_yscale("log")
    if f.get("projection"):
        xs = np.geomspace(t.min(), max(t.max(), f["projection"]["train_tokens"]), 50)
        ax1.plot(xs, f["a"] * xs ** -f["b"], "--", color="tab:gray", label=f"fit: a·T^-{f['b']:.2f}")
    ax1.axhline(f["floor_max_mean_kl"], color="tab:green", ls=":", label="laptop floor")
    ax2.axhline(report["floor"]["min_top1_agreement"], color="tab:green", ls=":", label="laptop floor")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.suptitle("laptop student (10 layers) distilled from SmolLM2-135M-Instruct: fidelity on the test prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict) -> str:
    lines = ["# Budget curve: the laptop student's in-domain fidelity against its training budget", "",
             f"`{report['command']}`; {report['machine']['cpu']}, {report['torch_threads']} torch threads. "
             f"In-domain set: the teacher's answers to {report['test_prompts']} test prompts "
             f"({report['test_positions']} answer tokens).", "",
             "| run | steps | train tokens | train s | tokens/s | in-domain KL [95% CI] | top-1 [95% CI] |",
             "|---|---:|---:|---:|---:|---|---|"]
    for r in report["budgets"] + report.get("lever", []):
        o = r["in_domain"]["overall"]
        lines.append(f"| {r['label']} | {r['steps']} | {r['train_tokens']} | {r['train_s']:.0f} | "
                     f"{r['train_tokens'] / r['train_s']:.0f} | {o['mean_kl']:.3f} [{o['mean_kl_ci'][0]:.3f}, "
                     f"{o['mean_kl_ci'][1]:.3f}] | {100 * o['top1_agreement']:.1f}% "
                     f"[{100 * o['top1_agreement_ci'][0]:.1f}, {100 * o['top1_agreement_ci'][1]:.1f}] |")
    f = report["fit"]
    lines += ["", f"Fit: mean KL = {f['a']:.3g} x tokens^-{f['b']:.3f}. Floor: KL <= {f['floor_max_mean_kl']} "
                  f"({f['floor_from']}).", "", report["sentence"], ""]
    return "\n".join(lines)


def sentence(report: dict) -> str:
    f, p = report["fit"], report["fit"].get("projection")
    if not p:
        return f"No projection: {f.get('note')}."
    return (f"Extrapolated from {len(report['budgets'])} budgets up to {report['budgets'][-1]['train_tokens']:,} "
            f"tokens, the laptop student would reach the laptop floor (in-domain KL <= {f['floor_max_mean_kl']}) "
            f"after about {p['train_tokens']:.2g} training tokens ({p['optimizer_steps_at_this_batch']:.2g} steps "
            f"at this batch; {p['train_flops'] + p['teacher_cache_flops']:.2g} FLOPs with the teacher's cache): "
            f"about {p['cpu_hours']:.3g} hours on this CPU at {p['cpu_tokens_per_s']:.0f} tokens/s, "
            f"{p['gpu_hours']:.2g} hours on {p['gpu']['name']} at {100 * p['gpu']['utilisation']:.0f}% of peak. "
            f"That many tokens are about {p['train_tokens'] / report['tokens_per_answer']:.2g} teacher answers, "
            f"not epochs over the {report['budgets'][0]['answers']} used here (at 40 steps, the demo's 24 answers "
            f"gave KL {report['lever'][0]['in_domain']['overall']['mean_kl']:.2f} against "
            f"{_at(report, 40):.2f} for {report['budgets'][0]['answers']}). An extrapolation of a power law far "
            f"past the measured range: an order of magnitude, not a promise.")


def _at(report: dict, steps: int) -> float:
    return next(r["in_domain"]["overall"]["mean_kl"] for r in report["budgets"] if r["steps"] == steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("build/bench-budget"))
    ap.add_argument("--steps", default="10,20,40,80,160")
    ap.add_argument("--lever-steps", type=int, default=40)
    ap.add_argument("--train-prompts", type=int, default=128, help="per domain")
    ap.add_argument("--profile", default="laptop", help="whose quality floor the projection aims at")
    ap.add_argument("--refit", action="store_true", help="only refit and replot the saved results")
    args = ap.parse_args()
    from edgedistill.runinfo import run_record, write_result

    OUT.parent.mkdir(parents=True, exist_ok=True)
    if args.refit:
        report = json.loads(OUT.with_suffix(".json").read_text())
    else:
        import torch

        from edgedistill.distill.stage import PruneSettings, prune
        from edgedistill.models import load_model

        threads = torch.get_num_threads()
        work = args.work
        work.mkdir(parents=True, exist_ok=True)
        seqs, _ = test_sequences(work, threads)
        files = teacher_data(work, args.train_prompts, 8, threads)
        caches = {"many": build_cache(work, files["train"], "many"),
                  "demo": build_cache(work, files["train-demo"], "demo")}
        teacher = load_model(TEACHER)
        init = work / "student-init"
        if not (init / "config.json").exists():
            prune(PruneSettings(teacher=TEACHER, out=init, layers=10, hw_friendly=True, calibration_tokens=8192),
                  teacher=teacher)
        ref_lp = teacher_logprobs(teacher[0], seqs)
        rows, lever = [], []
        for label, steps, cache, data, dest in (
                [(f"{n} steps, {args.train_prompts * 3} answers", n, "many", "train", rows)
                 for n in map(int, args.steps.split(","))]
                + [(f"{args.lever_steps} steps, 24 answers (the demo's data)", args.lever_steps, "demo",
                    "train-demo", lever)]):
            student_dir, r = distill_one(work, init, caches[cache], files[data], files["validation"], steps, teacher,
                                         label.split(",")[0].replace(" ", "") + "-" + cache)
            student = load_model(str(student_dir))[0].eval()
            fid = in_domain(student, seqs, ref_lp)
            o = fid["overall"]
            log(f"  {label}: in-domain KL {o['mean_kl']:.3f} [{o['mean_kl_ci'][0]:.3f}, {o['mean_kl_ci'][1]:.3f}], "
                f"top-1 {100 * o['top1_agreement']:.1f}%")
            dest.append({"label": label, "steps": r["steps"], "train_tokens": r["train_tokens"],
                         "train_s": r["train_s"], "answers": sum(1 for _ in open(files[data])),
                         "parameters": r["parameters"], "in_domain": fid})
        report = {"benchmark": "budget_curve", "command": "benchmarks/budget_curve.py " + " ".join(sys.argv[1:]),
                  **run_record(), "torch_threads": threads, "teacher": TEACHER,
                  "teacher_parameters": sum(p.numel() for p in teacher[0].parameters()),
                  "test_prompts": len(seqs), "test_positions": sum(len(s["ids"]) - s["start"] for s in seqs),
                  "settings": vars(args) | {"work": str(args.work)}, "budgets": rows, "lever": lever}
    report["floor"] = floor_of(args.profile)
    report["tokens_per_answer"] = report["budgets"][-1]["train_tokens"] / (report["budgets"][-1]["steps"] * 8)
    rows = report["budgets"]
    tps = float(np.median([r["train_tokens"] / r["train_s"] for r in rows]))
    report["fit"] = fit(rows, report["floor"], rows[0]["parameters"], report["teacher_parameters"], tps)
    report["sentence"] = sentence(report)
    write_result(OUT.with_suffix(".json"), report)
    OUT.with_suffix(".md").write_text(markdown(report))
    plot(report, OUT.with_suffix(".png"))
    print(report["sentence"])


if __name__ == "__main__":
    main()
