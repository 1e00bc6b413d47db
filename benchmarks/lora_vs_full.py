"""LoRA against full fine-tuning of a pretrained student: Qwen2.5-Coder-1.5B-Instruct teaching its 0.5B sibling.

  1. the teacher (llama.cpp engine, its Q4_K_M GGUF) answers --train-prompts train and --val-prompts validation
     prompts of every built-in domain (greedy, 128 new tokens); its top-64 log-probs of the train answers go into
     one logit cache;
  2. for each variant (LoRA at a rank, or full fine-tuning) and seed, `edgedistill distill` runs in its own process
     from that cache with the same data, steps and objective (forward KL + CE, 0.5/0.5 unless a variant says kd=W;
     batch 4 x 2, cosine; the learning rate given for each: 5e-4 for LoRA, 5e-5 for a pretrained student in full), no
     validation inside (so the process's peak RSS is training's alone, no teacher loaded): tokens/s, peak RSS and
     trainable parameters from its distill.json;
  3. held-out fidelity of the student before and after each run, teacher-forced on the teacher's validation answers
     (the teacher in torch, float32): mean KL(teacher || student) and top-1 agreement over the answer tokens, 95%
     bootstrap intervals over prompts (bench.fidelity's code), and the after - before change paired per prompt.

    .venv/bin/python benchmarks/lora_vs_full.py --steps 30 --seeds 0      # results/distill/lora_vs_full.{json,md}
    .venv/bin/python benchmarks/lora_vs_full.py --steps 10 --variants lora16-nogc:16:5e-4,lora16-gc10:16:5e-4:gc \
        --out benchmarks/results/distill/gradient_checkpointing     # checkpointing's memory and speed, one run
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "results" / "distill" / "lora_vs_full"
TEACHER = "qwen2.5-coder-1.5b-instruct"
STUDENT = "qwen2.5-coder-0.5b-instruct"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def teacher_data(work: Path, per_domain: int, val_per_domain: int) -> dict[str, Path]:
    from edgedistill.data.stage import GenerateSettings, generate_data

    files = {}
    for split, n in (("train", per_domain), ("validation", val_per_domain)):
        out = work / f"teacher-{split}-{n}.jsonl"
        log(f"teacher answers: {split}, {n} per domain")
        generate_data(GenerateSettings(teacher=TEACHER, split=split, limit=n, out=out, max_new_tokens=128,
                                       teacher_engine="llama.cpp"))  # resumes a file it finds
        files[split] = out
    return files


def build_cache(work: Path, data: Path) -> Path:
    from edgedistill.distill.stage import CacheSettings, cache_logits

    out = work / f"cache-{data.stem}"
    if not (out / "cache.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        log("logit cache (llama.cpp engine, top-64)")
        cache_logits(CacheSettings(teacher=TEACHER, generations=[data], out=out, k=64, teacher_engine="llama.cpp"))
    return out


def distill_run(work: Path, label: str, rank: int, lr: str, seed: int, steps: int, data: Path, cache: Path,
                extra: list[str]) -> dict:
    out = work / f"distill-{label}-seed{seed}"
    if not (out / "student" / "distill.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "edgedistill", "distill", "--teacher", TEACHER, "--student", STUDENT,
               "--generations", str(data), "--logit-cache", str(cache), "--steps", str(steps), "--seed", str(seed),
               "--lora-rank", str(rank), "--lr", lr, "--precision", "fp32", "--out", str(out),
               "--no-keep-checkpoints", "--save-steps", str(10 * steps), *extra]
        log(f"distill {label} seed {seed}: {' '.join(cmd[3:])}")
        subprocess.run(cmd, check=True, cwd=REPO)
    return json.loads((out / "student" / "distill.json").read_text()) | {"student": str(out / "student")}


def sequences(tokenizer, records: list[dict]) -> list[dict]:
    from edgedistill.distill.dataset import encode
    from edgedistill.tensors import IGNORE

    enc = encode(tokenizer, records, 512)
    out = []
    for rec, ex in zip(records, enc.examples):
        start = next(t for t, lab in enumerate(ex["labels"]) if lab != IGNORE) + 1
        out.append({"ids": ex["input_ids"], "start": start, "domain": rec.get("domain") or rec["id"].split("-")[0]})
    return out


def fidelity(model_dir: str, seqs: list[dict], ref_lp: list[np.ndarray]) -> tuple[dict, list[float]]:
    """(bench.fidelity's summary over prompts, each prompt's mean KL) of a student against the teacher."""
    import torch

    from edgedistill.bench.fidelity import by_domain
    from edgedistill.models import load_model
    from edgedistill.runtime.logits import sequence_stats

    student, _ = load_model(model_dir)
    stats = []
    with torch.inference_mode():
        for s, lp in zip(seqs, ref_lp):
            logits = student(torch.tensor([s["ids"]])).logits[0, s["start"] - 1 : -1].float().numpy()
            stats.append(sequence_stats(lp, logits, s["ids"][s["start"]:]))
    del student
    return by_domain(stats, [s["domain"] for s in seqs]), [st["kl"] / st["n"] for st in stats]


def paired(before: list[float], after: list[float], seed: int = 0, n: int = 2000) -> dict:
    """after - before mean KL per prompt: the mean and its 95% bootstrap interval over prompts."""
    d = np.array(after) - np.array(before)
    rng = np.random.default_rng(seed)
    boots = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(n)]
    return {"mean": float(d.mean()), "ci": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]}


def markdown(report: dict) -> str:
    b = report["before"]["overall"]
    lines = ["# LoRA against full fine-tuning: Qwen2.5-Coder-1.5B-Instruct teaching Qwen2.5-Coder-0.5B-Instruct", "",
             f"`{report['command']}`; {report['machine']['cpu']}. Teacher data: {report['train_answers']} train "
             f"answers ({report['train_tokens_per_epoch']} answer tokens), held-out: the teacher's answers to "
             f"{report['val_prompts']} validation prompts ({b['positions']} answer tokens). Every run: "
             f"{report['steps']} steps (unless the table says otherwise) of forward KL + CE (weights: the table's kd "
             "column and the rest) from the teacher's "
             "top-64 cache, batch 4 x 2, "
             "cosine schedule at each method's learning rate, fp32. Peak RSS: the distill process (no teacher in "
             "it).", "",
             f"Student before: KL {b['mean_kl']:.3f} [{b['mean_kl_ci'][0]:.3f}, {b['mean_kl_ci'][1]:.3f}], top-1 "
             f"{100 * b['top1_agreement']:.1f}%.", "",
             "| run | lr | steps | kd | seed | trainable params | train s | tokens/s | peak RSS (GB) | held-out KL [95% CI] | "
             "KL change vs before [95% CI] | top-1 [95% CI] |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in report["runs"]:
        o = r["after"]["overall"]
        c = r["kl_change"]
        lines.append(f"| {r['label']} | {r['lr']:g} | {r['run_steps']} | {r.get('kd_weight', 0.5):g} | {r['seed']} | {r['trainable_parameters'] / 1e6:.1f}M | "
                     f"{r['train_s']:.0f} | "
                     f"{r['tokens_per_s']:.0f} | {r['peak_rss_mb'] / 1024:.1f} | {o['mean_kl']:.3f} "
                     f"[{o['mean_kl_ci'][0]:.3f}, {o['mean_kl_ci'][1]:.3f}] | {c['mean']:+.3f} [{c['ci'][0]:+.3f}, "
                     f"{c['ci'][1]:+.3f}] | {100 * o['top1_agreement']:.1f}% [{100 * o['top1_agreement_ci'][0]:.1f}, "
                     f"{100 * o['top1_agreement_ci'][1]:.1f}] |")
    lines += ["", f"Models: {report['models']}.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "build" / "bench-lora")
    ap.add_argument("--out", type=Path, default=OUT, help="results: OUT.json and OUT.md")
    ap.add_argument("--train-prompts", type=int, default=16, help="per domain")
    ap.add_argument("--val-prompts", type=int, default=4, help="per domain")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--variants", default="lora16:16:5e-4,full:0:5e-5",
                    help="label:rank:lr[:gc][:steps=N][:kd=W][:seeds=A+B], comma-separated (rank 0: full fine-tuning; gc: "
                         "gradient checkpointing; steps=N: this run's steps, for a memory probe; kd=W: the "
                         "divergence's share of the loss, the rest cross-entropy, 0.5 unless given; seeds: the "
                         "variant runs only for these of --seeds); each at the learning rate "
                         "measured for it: 5e-4 for LoRA (distill's default), 5e-5 for a pretrained student in full "
                         "(benchmarks/results/distill/served_pair.md, chosen on validation)")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from edgedistill.distill.dataset import load_generations
    from edgedistill.models import load_model
    from edgedistill.models.registry import packages_line
    from edgedistill.runinfo import run_record, write_report

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    record = run_record()
    files = teacher_data(work, args.train_prompts, args.val_prompts)
    cache = build_cache(work, files["train"])
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for item in args.variants.split(","):
            label, rank, lr, *flags = item.split(":")
            only = next((f[6:].split("+") for f in flags if f.startswith("seeds=")), None)
            if only is not None and str(seed) not in only:
                continue
            extra = ["--gradient-checkpointing" if "gc" in flags else "--no-gradient-checkpointing"]
            steps = next((int(f[6:]) for f in flags if f.startswith("steps=")), args.steps)
            kd = next((float(f[3:]) for f in flags if f.startswith("kd=")), 0.5)
            extra += ["--kd-weight", str(kd)]
            runs.append({"label": label, "seed": seed, "rank": int(rank), "lr": float(lr), "run_steps": steps,
                         "kd_weight": kd, "gradient_checkpointing": "gc" in flags,
                         **distill_run(work, label, int(rank), lr, seed, steps, files["train"], cache, extra)})
    log("held-out fidelity: the teacher in torch scores its validation answers")
    from budget_curve import teacher_logprobs

    val = load_generations([files["validation"]])
    teacher, tok = load_model(TEACHER)
    seqs = sequences(tok, val)
    ref_lp = teacher_logprobs(teacher, seqs)
    del teacher
    before, before_per = fidelity(STUDENT, seqs, ref_lp)
    for r in runs:
        r["after"], per = fidelity(r["student"], seqs, ref_lp)
        r["kl_change"] = paired(before_per, per)
        r["tokens_per_s"] = r["train_tokens"] / r["train_s"]
    train = load_generations([files["train"]])
    report = {**record, "teacher": TEACHER, "student": STUDENT, "steps": args.steps,
              "models": packages_line((TEACHER, STUDENT)),
              "train_answers": len(train), "train_tokens_per_epoch": sum(len(tok(r["response"]).input_ids)
                                                                         for r in train),
              "val_prompts": len(val), "before": before, "runs": runs}
    log(f"wrote {write_report(args.out, report, markdown(report))}")


if __name__ == "__main__":
    main()
