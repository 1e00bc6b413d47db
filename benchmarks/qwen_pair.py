"""The Qwen2.5-Coder pair beside the default teacher: speed (llama-bench) and quality on the graded sets.

For each model:
  - llama.cpp's llama-bench on the registry's GGUF as pulled: pp128 and tg64 tokens/s, --threads threads, 3 repeats
    after its warm-up;
  - the graded eval items that ask for a short answer (those without "step by step"), every --every-th of them,
    answered greedily by the teacher engine the tool uses (llama.cpp on the F16 GGUF it writes from the converted
    model; 48 new tokens, as `edgedistill eval` gives them) and graded by edgedistill's grader; the share correct
    with its 95% bootstrap interval over items, overall and per task type, and the chance level of those items.

    .venv/bin/python benchmarks/qwen_pair.py          # results/models/qwen_pair.{json,md}
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "models" / "qwen_pair"
MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def graded(name: str, items: list) -> dict:
    from edgedistill.bench.fidelity import share
    from edgedistill.data import grading
    from edgedistill.data.evaluate import SHORT_ANSWER_TOKENS
    from edgedistill.data.generate import DecodeSettings
    from edgedistill.engines import EngineSpec, open_engine

    engine = open_engine(EngineSpec(engine="llama.cpp", model=name))
    try:
        t0 = time.perf_counter()
        answers = {a.index: a.text or "" for a in engine.answer(
            [[{"role": "user", "content": it.prompt}] for it in items],
            DecodeSettings(max_new_tokens=SHORT_ANSWER_TOKENS, answer_batch=8))}
        seconds = time.perf_counter() - t0
    finally:
        engine.close()
    correct = [grading.is_correct(it, answers.get(i, "")) for i, it in enumerate(items)]
    tasks = sorted({it.task for it in items})
    return {"overall": share(correct), "seconds": round(seconds, 1),
            "by_task": {t: share([c for c, it in zip(correct, items) if it.task == t]) for t in tasks},
            "chance": sum(map(grading.chance, items)) / len(items),
            "answers": {it.id: answers.get(i, "") for i, it in enumerate(items)}}


def markdown(report: dict) -> str:
    tasks = sorted({t for m in report["models"].values() for t in m["graded"]["by_task"]})
    lines = ["# The Qwen2.5-Coder pair beside the default teacher", "",
             f"`{report['command']}`; {report['machine']['cpu']}, llama-bench and the engine at {report['threads']} "
             f"threads. Graded: {report['items']} short-answer items (every {report['every']}th of the graded sets' "
             "non-reasoning items), greedy, 48 new tokens, 95% bootstrap intervals over items.", "",
             "| model | GGUF | pp128 tok/s | tg64 tok/s | graded correct [95% CI] | "
             + " | ".join(tasks) + " |", "|---|---|---:|---:|---|" + "---:|" * len(tasks)]
    for name, m in report["models"].items():
        lb, g = m["llama_bench"], m["graded"]
        o = g["overall"]
        lines.append(f"| {name} | {m['file']} | {lb['pp128_tokens_per_s']:.1f} | {lb['tg64_tokens_per_s']:.1f} | "
                     f"{100 * o['value']:.1f}% [{100 * o['ci'][0]:.1f}, {100 * o['ci'][1]:.1f}] | "
                     + " | ".join(f"{100 * g['by_task'][t]['value']:.0f}%" for t in tasks) + " |")
    chance = next(iter(report["models"].values()))["graded"]["chance"]
    lines += ["", f"Chance on these items: {100 * chance:.1f}%. Models: {report['packages']}.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--every", type=int, default=3, help="every N-th short-answer item")
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    from edgedistill.data import default_data_dir
    from edgedistill.data.evaluate import find_eval_sets, load_eval_items, wants_reasoning
    from edgedistill.formats.llamacpp_tools import llama_bench
    from edgedistill.models.locate import pulled_path
    from edgedistill.models.pull import pull
    from edgedistill.models.registry import packages_line
    from edgedistill.runinfo import run_record, write_report

    items = [it for it in load_eval_items(find_eval_sets(default_data_dir())) if not wants_reasoning(it)]
    items = items[:: args.every]
    report = {**run_record(), "threads": args.threads, "every": args.every, "items": len(items), "models": {}}
    for name in args.models.split(","):
        pull(name)
        gguf = next((pulled_path(name) / "original").glob("*.gguf"))
        log(f"{name}: llama-bench")
        lb = llama_bench(gguf, prompt_tokens=128, new_tokens=64, threads=args.threads, repeats=3)
        log(f"{name}: {len(items)} graded items")
        report["models"][name] = {"file": gguf.name, "llama_bench": lb, "graded": graded(name, items)}
    report["packages"] = packages_line(args.models.split(","))
    log(f"wrote {write_report(OUT, report, markdown(report))}")


if __name__ == "__main__":
    main()
