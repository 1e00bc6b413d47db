"""Distilled students vs plain cross-entropy, and the divergences against each other, on one time budget.

All runs start from the same pruned student, see the same teacher generations and get the same wall-clock
budget (--minutes per run), so slower objectives (on-policy) get fewer steps, as they would in practice.

  1. the teacher answers --train-prompts train and --val-prompts validation prompts per domain (greedy);
  2. students pruned from the teacher: 10 blocks with the teacher's width ("10L"), and 10 blocks with widths
     that are multiples of 256 ("10L-hw": hidden 512, FFN 1536, 4 heads / 2 key-value heads);
  3. on 10L-hw: cross-entropy only (kd_weight 0) and each divergence in --losses;
  4. the divergence with the lowest held-out KL is then run on 10L too, beside cross-entropy;
  5. every student: held-out mean KL(teacher || student) and top-1 agreement on the validation generations;
     cross-entropy and best-loss students also on the graded eval sets (every --eval-every-th item, so all task
     types stay represented; the teacher's score on the same items comes from results/teacher_eval.json).

    .venv/bin/python benchmarks/distill_students.py      # writes benchmarks/results/distill_students.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

LOSSES = {  # name -> (loss, params, on_policy)
    "ce": ("forward_kl", {}, 0.0),  # kd_weight 0 below: cross-entropy on the teacher's tokens only
    "forward_kl": ("forward_kl", {}, 0.0),
    "reverse_kl": ("reverse_kl", {}, 0.0),
    "jsd": ("jsd", {"beta": 0.5}, 0.0),
    "skew_kl": ("skew_kl", {"alpha": 0.1}, 0.0),
    "jsd+on_policy": ("jsd", {"beta": 0.5}, 0.5),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("build/bench-distill"))
    ap.add_argument("--train-prompts", type=int, default=48, help="per domain")
    ap.add_argument("--val-prompts", type=int, default=16, help="per domain")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--minutes", type=float, default=4.0, help="training budget per run")
    ap.add_argument("--losses", default="forward_kl,reverse_kl,jsd,skew_kl,jsd+on_policy")
    ap.add_argument("--eval-every", type=int, default=6, help="graded eval on every n-th item (1: all)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "distill_students.json")
    args = ap.parse_args()

    from edgedistill.cli.distill import _interleave
    from edgedistill.data import default_data_dir, load_prompts, load_texts
    from edgedistill.data.evaluate import evaluate, find_eval_sets, load_eval_items
    from edgedistill.data.generate import GenerationSettings, generate
    from edgedistill.distill.dataset import encode, load_generations
    from edgedistill.distill.losses import LossConfig
    from edgedistill.distill.prune import StudentShape, derive_student, hardware_friendly
    from edgedistill.distill.train import TrainConfig, agreement_with_teacher, train
    from edgedistill.models import DEFAULT_TEACHER, load_model
    from edgedistill.models.pull import pull
    from edgedistill.paths import dir_size
    from edgedistill.runinfo import run_record

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    pull(DEFAULT_TEACHER)
    teacher = load_model(DEFAULT_TEACHER)
    tok = teacher[1]
    data_dir = default_data_dir()

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    sets = {}
    for split, n in (("train", args.train_prompts), ("validation", args.val_prompts)):
        prompts = []
        for d in sorted(data_dir.glob(f"*/prompts/{split}.jsonl")):
            prompts += load_prompts(d)[0][:n]
        path = work / f"teacher-{split}.jsonl"
        generate(DEFAULT_TEACHER, prompts, path, GenerationSettings(max_new_tokens=args.max_new_tokens), loaded=teacher)
        sets[split] = encode(tok, load_generations([path]), 512)
        log(f"{split}: {len(sets[split].examples)} sequences, {sets[split].response_tokens} response tokens")

    texts = _interleave([t for d in sorted(data_dir.glob("*/texts")) for _, t in load_texts(d)])
    shapes = {"10L": StudentShape(layers=10), "10L-hw": hardware_friendly(teacher[0], 10)}
    inits = {}
    for name, shape in shapes.items():
        inits[name] = work / f"init-{name}"
        if not inits[name].exists():
            derive_student(DEFAULT_TEACHER, shape, texts, inits[name], max_tokens=8192, loaded=teacher)

    eval_items = load_eval_items(find_eval_sets(data_dir))[:: args.eval_every]
    results: dict[str, dict] = {}

    def run(size: str, loss_key: str, graded: bool) -> dict:
        key = f"{size}/{loss_key}"
        name, params, on_policy = LOSSES[loss_key]
        loss = LossConfig(name, params, kd_weight=0.0 if loss_key == "ce" else 1.0)
        cfg = TrainConfig(max_steps=100_000, max_time_s=60 * args.minutes, batch_size=4, grad_accum=2,
                          learning_rate=args.lr, warmup_steps=10, max_length=512, save_steps=100_000,
                          logging_steps=10, on_policy=on_policy, on_policy_max_new_tokens=96)
        rdir = work / "runs" / key.replace("/", "-")
        shutil.rmtree(rdir, ignore_errors=True)
        log(f"training {key}")
        t0 = time.perf_counter()
        model, trainer = train(teacher, load_model(str(inits[size])), sets["train"].examples, rdir, loss, cfg)
        rec = {"size": size, "objective": loss_key, "loss": {"name": name, "params": params,
               "kd_weight": loss.kd_weight}, "on_policy": on_policy, "steps": trainer.state.global_step,
               "train_s": time.perf_counter() - t0, "parameters": model.num_parameters(),
               "pruning": json.loads((inits[size] / "pruning.json").read_text())}
        rec["validation"] = agreement_with_teacher(teacher[0], model, sets["validation"].examples, tok.pad_token_id)
        out_dir = rdir / "student"
        model.save_pretrained(out_dir, safe_serialization=True)
        tok.save_pretrained(out_dir)
        rec["disk_bytes"] = dir_size(out_dir)
        if graded:
            log(f"graded eval of {key}")
            r = evaluate(str(out_dir), eval_items, loaded=(model, tok))
            rec["graded"] = {"overall": r.overall(), "by_domain": r.by_domain()}
        shutil.rmtree(rdir / "checkpoints", ignore_errors=True)
        log(f"{key}: {rec['steps']} steps, held-out KL {rec['validation']['mean_kl']:.4f}, "
            f"top-1 {100 * rec['validation']['top1_agreement']:.1f}%"
            + (f", graded {100 * rec['graded']['overall']:.1f}%" if graded else ""))
        results[key] = rec
        _write(args, results, run_record)
        return rec

    run("10L-hw", "ce", graded=True)
    kd = [run("10L-hw", k, graded=False) for k in args.losses.split(",")]
    best = min(kd, key=lambda r: r["validation"]["mean_kl"])["objective"]
    results["10L-hw/" + best] = {**results["10L-hw/" + best], "best": True}
    log(f"best divergence on 10L-hw: {best}; graded eval and the 10L runs follow")
    r = evaluate(str(work / "runs" / f"10L-hw-{best}" / "student"), eval_items)
    results["10L-hw/" + best]["graded"] = {"overall": r.overall(), "by_domain": r.by_domain()}
    run("10L", "ce", graded=True)
    run("10L", best, graded=True)
    teacher_eval = HERE / "results" / "teacher_eval.json"
    if teacher_eval.exists():
        chosen = {it.id for it in eval_items}
        graded = [x for x in json.loads(teacher_eval.read_text())["models"][0]["items"] if x["id"] in chosen]
        if len(graded) == len(chosen):
            results["teacher"] = {"graded": {"overall": sum(x["correct"] for x in graded) / len(graded),
                                             "items": len(graded)}}
    _write(args, results, run_record, final=True)


def _write(args, results, run_record, final: bool = False) -> None:
    report = {"benchmark": "distill_students", **run_record(), "complete": final,
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "runs": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
