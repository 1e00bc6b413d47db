"""Distilled students vs plain cross-entropy, and the divergences against each other, on one step budget.

All runs start from the same pruned student, see the same teacher generations in the same order, and take the
same number of optimizer steps (--steps, batch 4 x 2 accumulation). Offline runs read the teacher's top-k
log-probs from one logit cache (so a divergence costs about what cross-entropy costs per step); on-policy runs
need the live teacher to score the student's samples and take longer for the same steps. The cache's bytes per
token and the training speed with the cache vs with the live teacher are measured in the same run.

  1. the teacher answers every train and validation prompt of every domain (greedy, --max-new-tokens);
  2. students pruned from the teacher: 10 blocks with the teacher's width ("10L"), and 10 blocks with widths
     that are multiples of 256 ("10L-hw": hidden 512, FFN 1536, 4 heads / 2 key-value heads);
  3. on 10L-hw: cross-entropy only (kd_weight 0) and each objective in --losses;
  4. the objective with the lowest held-out KL is run on 10L too, beside cross-entropy, and with on-policy
     steps on 10L-hw;
  5. every student: held-out mean KL(teacher || student) and top-1 agreement on the validation generations;
     cross-entropy and best-objective students also on the graded eval sets (every --eval-every-th item, so all
     task types stay represented; the teacher's score on the same items comes from results/models/teacher_eval.json);
  6. every saved student and the teacher: the eval items that list their choices, scored by likelihood
     (data.evaluate.choice_accuracy: the most likely choice is the answer), which still separates students
     whose generated answers are all wrong.

    .venv/bin/python benchmarks/distill_students.py      # writes benchmarks/results/distill_students.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from edgedistill.stats import graded_comparison
from edgedistill.runinfo import write_result

HERE = Path(__file__).resolve().parent

OBJECTIVES = {  # name -> (loss, params, kd_weight); kd_weight 0 is cross-entropy on the teacher's tokens only
    "ce": ("forward_kl", {}, 0.0),
    "forward_kl": ("forward_kl", {}, 1.0),
    "reverse_kl": ("reverse_kl", {}, 1.0),
    "jsd": ("jsd", {"beta": 0.5}, 1.0),
    "skew_kl": ("skew_kl", {"alpha": 0.1}, 1.0),
    "forward_kl+ce": ("forward_kl", {}, 0.5),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("build/bench-distill"))
    ap.add_argument("--train-prompts", type=int, default=None, help="per domain (default: all)")
    ap.add_argument("--val-prompts", type=int, default=None, help="per domain (default: all)")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--train-data", type=Path, default=None, help="existing teacher generations instead of step 1")
    ap.add_argument("--val-data", type=Path, default=None, help="existing teacher generations instead of step 1")
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per run (8 sequences each)")
    ap.add_argument("--losses", default="forward_kl,reverse_kl,jsd,skew_kl,forward_kl+ce")
    ap.add_argument("--on-policy", type=float, default=0.5, help="λ of the on-policy run of the best objective")
    ap.add_argument("--k", type=int, default=64, help="top-k of the logit cache")
    ap.add_argument("--speed-steps", type=int, default=8, help="steps of the live-teacher speed comparison")
    ap.add_argument("--eval-every", type=int, default=6, help="graded eval on every n-th item (1: all)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "distill" / "distill_students.json")
    ap.add_argument("--compare", action="store_true",
                    help="only add the graded comparison (cross-entropy vs the best objective, per size, with "
                         "Fisher's exact test) to an existing --out")
    ap.add_argument("--regrade", action="store_true",
                    help="with --resume: grade again every kept student whose graded eval used another --eval-every")
    ap.add_argument("--resume", action="store_true",
                    help="keep the runs already in --out whose student is still in --work (same settings assumed)")
    args = ap.parse_args()
    if args.compare:
        compare_only(args.out)
        return

    from edgedistill.data import default_data_dir
    from edgedistill.data.evaluate import choice_accuracy, evaluate, find_eval_sets, load_eval_items
    from edgedistill.data.stage import GenerateSettings, generate_data
    from edgedistill.distill.dataset import encode, load_generations
    from edgedistill.distill.stage import (CacheSettings, DistillSettings, PruneSettings, cache_logits, distill,
                                           prune)
    from edgedistill.models import DEFAULT_TEACHER, load_model
    from edgedistill.paths import dir_size
    from edgedistill.runinfo import run_record

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    teacher = load_model(DEFAULT_TEACHER)
    tok = teacher[1]
    data_dir = default_data_dir()

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    paths, info = {}, {}
    for split, n in (("train", args.train_prompts), ("validation", args.val_prompts)):
        path = args.train_data if split == "train" else args.val_data
        if path is None:
            path = work / f"teacher-{split}.jsonl"
            generate_data(GenerateSettings(split=split, limit=n, data_dir=data_dir, out=path,
                                           max_new_tokens=args.max_new_tokens, teacher_engine="torch"), teacher=teacher)
        paths[split] = path
        enc = encode(tok, load_generations([path]), 512)
        info[split] = {"file": str(path), "sequences": len(enc.examples), "response_tokens": enc.response_tokens}
        log(f"{split}: {len(enc.examples)} sequences, {enc.response_tokens} response tokens")

    cache_dir = work / f"cache-k{args.k}"
    if not cache_dir.exists():
        t = time.perf_counter()
        meta = cache_logits(CacheSettings(teacher=DEFAULT_TEACHER, generations=[paths["train"]], out=cache_dir, k=args.k,
                                          max_length=512, teacher_engine="torch"))
        meta["build_s"] = time.perf_counter() - t
        (work / "cache-build.json").write_text(json.dumps(meta, indent=2))
    cache_info = json.loads((work / "cache-build.json").read_text())
    log(f"logit cache: {cache_info['bytes_per_token']:.0f} B/token, top-{args.k} mass "
        f"{100 * cache_info['teacher_mass_in_top_k']:.1f}%")

    inits = {}
    for name, hw in (("10L", False), ("10L-hw", True)):
        inits[name] = work / f"init-{name}"
        if not inits[name].exists():
            prune(PruneSettings(teacher=DEFAULT_TEACHER, out=inits[name], layers=10, hw_friendly=hw,
                                data_dir=data_dir, calibration_tokens=8192), teacher=teacher)

    all_items = load_eval_items(find_eval_sets(data_dir))
    eval_items = all_items[:: args.eval_every]
    results: dict[str, dict] = {}
    extra: dict = {"data": info, "logit_cache": cache_info}
    previous = json.loads(args.out.read_text()) if args.resume and args.out.exists() else {}

    def graded_record(r) -> dict:
        by_task = r.accuracy(lambda x: x["task"])
        by_task.pop("_n")
        return {"overall": r.overall(), "by_domain": r.by_domain(), "by_task": by_task, "items": len(r.items),
                "eval_every": args.eval_every, "correct": sum(bool(x["correct"]) for x in r.items)}

    def run(size: str, key: str, *, on_policy: float = 0.0, graded: bool, live: bool = False,
            steps: int | None = None, save: bool = True) -> dict:
        name, params, kd = OBJECTIVES[key]
        label = f"{size}/{key}" + (f"+on_policy{on_policy}" if on_policy else "") + ("@live" if live else "")
        old = previous.get("runs", {}).get(label)
        if old and save and (work / "runs" / label.replace("/", "-") / "student").is_dir():
            log(f"{label}: kept from the previous run")
            results[label] = old
            return old
        rdir = work / "runs" / label.replace("/", "-")
        shutil.rmtree(rdir, ignore_errors=True)
        log(f"training {label}")
        use_cache = cache_dir if (kd > 0 and not live) else None
        settings = DistillSettings(teacher=DEFAULT_TEACHER, student=str(inits[size]), generations=[paths["train"]],
                                   validation=[paths["validation"]] if save else [], out=rdir, loss=name,
                                   beta=params.get("beta"), alpha=params.get("alpha"), kd_weight=kd,
                                   on_policy=on_policy, on_policy_max_new_tokens=64, steps=steps or args.steps,
                                   batch_size=4, grad_accum=2, lr=args.lr, warmup_steps=6, max_length=512,
                                   save_steps=100_000, keep_checkpoints=False, logit_cache=use_cache)
        report = distill(settings, teacher=teacher)
        train_s = report["train_s"]
        tokens = report["train_tokens"]  # tokens trained on
        rec = {"size": size, "objective": key, "loss": {"name": name, "params": params, "kd_weight": kd},
               "on_policy": on_policy, "teacher": "none" if kd == 0 else ("live" if use_cache is None else "cache")
               + ("+live on-policy" if on_policy else ""),
               "steps": report["steps"], "train_s": train_s, "train_tokens": tokens,
               "tokens_per_s": tokens / train_s if tokens else None, "parameters": report["parameters"],
               "pruning": json.loads((inits[size] / "pruning.json").read_text())}
        out_dir = rdir / "student"
        if save:
            rec["validation"] = report["validation"]
            rec["disk_bytes"] = dir_size(out_dir)
            if graded:
                log(f"graded eval of {label}")
                rec["graded"] = graded_record(evaluate(str(out_dir), eval_items))
        else:
            shutil.rmtree(out_dir, ignore_errors=True)
        log(f"{label}: {rec['steps']} steps in {train_s:.0f} s"
            + (f", held-out KL {rec['validation']['mean_kl']:.4f}, top-1 {100 * rec['validation']['top1_agreement']:.1f}%"
               if save else "")
            + (f", graded {100 * rec['graded']['overall']:.1f}%" if "graded" in rec else ""))
        results[label] = rec
        _write(args, results, extra, run_record)
        return rec

    if previous.get("cache_vs_live"):
        extra["cache_vs_live"] = previous["cache_vs_live"]
    else:
        measure_speed(run, args, extra, results)
    run("10L-hw", "ce", graded=True)
    kd = [run("10L-hw", k, graded=False) for k in args.losses.split(",")]
    ce = results["10L-hw/ce"]["validation"]

    def rank(r):  # objectives that beat cross-entropy on both KL and top-1 first, then the lower KL
        v = r["validation"]
        return (not (v["mean_kl"] < ce["mean_kl"] and v["top1_agreement"] > ce["top1_agreement"]), v["mean_kl"])

    best = min(kd, key=rank)["objective"]
    extra["best_objective"] = best
    log(f"best objective on 10L-hw: {best}; its graded eval, on-policy run and the 10L runs follow")
    if "graded" not in results["10L-hw/" + best]:
        r = evaluate(str(work / "runs" / f"10L-hw-{best}" / "student"), eval_items)
        results["10L-hw/" + best]["graded"] = graded_record(r)
        _write(args, results, extra, run_record)
    if args.on_policy > 0:
        run("10L-hw", best, on_policy=args.on_policy, graded=False)
    run("10L", "ce", graded=True)
    run("10L", best, graded=True)
    if args.regrade:
        for label, rec in results.items():
            student = work / "runs" / label.replace("/", "-") / "student"
            if "graded" in rec and rec["graded"].get("eval_every") != args.eval_every and student.is_dir():
                log(f"graded eval of {label} again, every {args.eval_every}. item")
                rec["graded"] = graded_record(evaluate(str(student), eval_items))
                _write(args, results, extra, run_record)
    teacher_eval = HERE / "results" / "models" / "teacher_eval.json"
    if teacher_eval.exists():
        chosen = {it.id for it in eval_items}
        graded = [x for x in json.loads(teacher_eval.read_text())["models"][0]["items"] if x["id"] in chosen]
        if len(graded) == len(chosen):
            by_task: dict = {}
            for x in graded:
                by_task.setdefault(x["task"], []).append(bool(x["correct"]))
            extra["teacher"] = {**previous.get("teacher", {}), **extra.get("teacher", {}),
                                "graded": {"overall": sum(x["correct"] for x in graded) / len(graded),
                                           "items": len(graded), "correct": sum(bool(x["correct"]) for x in graded),
                                           "by_task": {k: sum(v) / len(v) for k, v in by_task.items()}}}

    def choice(model_dir, loaded=None) -> dict:
        r = choice_accuracy(str(model_dir), all_items, loaded=loaded)
        return {"overall": r.overall(), "by_domain": r.by_domain(), "items": len(r.items),
                "chance": sum(x["chance"] for x in r.items) / len(r.items)}

    if "choice" not in extra.get("teacher", {}) and "choice" not in previous.get("teacher", {}):
        log("teacher: choices by likelihood")
        extra.setdefault("teacher", {})["choice"] = choice(DEFAULT_TEACHER, teacher)
    elif "choice" not in extra.get("teacher", {}):
        extra.setdefault("teacher", {})["choice"] = previous["teacher"]["choice"]
    for label, rec in results.items():
        student = work / "runs" / label.replace("/", "-") / "student"
        if "choice" not in rec and student.is_dir():
            log(f"{label}: choices by likelihood")
            rec["choice"] = choice(student)
            _write(args, results, extra, run_record)
    extra["graded_comparison"] = graded_comparison(results, best)
    _write(args, results, extra, run_record, final=True)


def compare_only(out: Path) -> None:
    report = json.loads(out.read_text())
    report["graded_comparison"] = graded_comparison(report["runs"], report["best_objective"])
    write_result(out, report)
    print(json.dumps(report["graded_comparison"], indent=1))


def measure_speed(run, args, extra: dict, results: dict) -> None:
    """The same objective from the cache and with the live teacher, same steps, back to back."""
    fast = run("10L-hw", "forward_kl", graded=False, steps=args.speed_steps, save=False)
    slow = run("10L-hw", "forward_kl", graded=False, steps=args.speed_steps, save=False, live=True)
    extra["cache_vs_live"] = {"steps": args.speed_steps, "cache_tokens_per_s": fast["tokens_per_s"],
                              "live_tokens_per_s": slow["tokens_per_s"],
                              "speedup": fast["tokens_per_s"] / slow["tokens_per_s"]}
    results.clear()


def _write(args, results, extra, run_record, final: bool = False) -> None:
    report = {"benchmark": "distill_students", **run_record(), "complete": final,
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              **extra, "runs": results}
    write_result(args.out, report)


if __name__ == "__main__":
    main()
