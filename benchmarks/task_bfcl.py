"""Task distillation on a public tool-calling set with gold answers: BFCL v4 simple_python.

The data is read from the bfcl-eval package's files (downloaded, never installed: its dependencies would clash
with ours): 400 questions, each with its one function and the argument values BFCL accepts. A fixed shuffle puts
200 in the test slice (gold answers, never seen in training) and the rest in the training pool: 5 seeds with their
gold calls, the others unlabelled inputs the teacher answers. Then `edgedistill task distill` as a user runs it:
the teacher (Qwen2.5-Coder-1.5B-Instruct's Q4_K_M behind llama.cpp's OpenAI-compatible server, the teacher you can
only call) labels the training inputs, its valid calls teach the student (Qwen2.5-Coder-0.5B-Instruct, LoRA), and
the teacher, the student before (zero-shot, 3-shot) and after answer the test slice, scored as BFCL scores a call.

    python benchmarks/task_bfcl.py [--steps 24] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from teacher_engines import log, start_server  # noqa: E402

from edgedistill.runinfo import run_record, write_report  # noqa: E402

PACKAGE, VERSION, LICENSE = "bfcl-eval", "2026.3.23", "Apache-2.0"
TEACHER, STUDENT = "qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct"
DATA = "bfcl_eval/data/BFCL_v4_simple_python.json"
GOLD = "bfcl_eval/data/possible_answer/BFCL_v4_simple_python.json"
INSTRUCTIONS = ("You are an assistant that calls functions. Given the user's request and the functions available, "
                "choose the function that does what the user asks and fill in its arguments from the request.")


def package_files(cache: Path) -> tuple[list[dict], dict[str, dict]]:
    """The questions and the gold answers, read from the downloaded wheel."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = list(cache.glob(f"bfcl_eval-{VERSION}-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{PACKAGE}=={VERSION}",
                        "-d", str(cache)], check=True)
        wheels = list(cache.glob(f"bfcl_eval-{VERSION}-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        items = [json.loads(ln) for ln in z.read(DATA).decode().splitlines() if ln.strip()]
        gold = {r["id"]: r for r in (json.loads(ln) for ln in z.read(GOLD).decode().splitlines() if ln.strip())}
    return items, gold


def write_task(folder: Path, items: list[dict], gold: dict, test_n: int, seeds_n: int, inputs_n: int | None = None) -> Path:
    """task.yaml, seeds, inputs and test files for edgedistill (the fixed shuffle: random.Random(0))."""
    import yaml

    order = sorted(items, key=lambda r: r["id"])
    random.Random(0).shuffle(order)
    test, pool = order[:test_n], order[test_n:]

    def record(r: dict, with_gold: bool) -> dict:
        rec = {"id": r["id"], "question": r["question"][0][-1]["content"], "tools": r["function"]}
        if with_gold:
            (name, args), = gold[r["id"]]["ground_truth"][0].items()
            rec["output"] = {"name": name, "allowed": args}
        return rec

    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("test.jsonl", [record(r, True) for r in test]),
                       ("inputs.jsonl", [record(r, False) for r in pool[seeds_n:][:inputs_n]])):
        (folder / name).write_text("".join(json.dumps(x) + "\n" for x in rows))
    task = {"name": "bfcl-simple-python", "instructions": INSTRUCTIONS, "input": "question",
            "output": {"kind": "tool_call"}, "seeds": [record(r, True) for r in pool[:seeds_n]],
            "inputs": "inputs.jsonl", "test": "test.jsonl"}
    (folder / "task.yaml").write_text(yaml.safe_dump(task, sort_keys=False, width=120))
    return folder / "task.yaml"


def cell(m) -> str:
    if m is None:
        return "-"
    if isinstance(m, dict):
        return f"{100 * m['value']:.1f} [{100 * m['ci'][0]:.1f}, {100 * m['ci'][1]:.1f}]"
    return f"{100 * m:.1f}"


def markdown(r: dict) -> str:
    lines = [f"# Task distillation: BFCL v4 simple_python ({PACKAGE}=={VERSION}, {LICENSE})", "",
             f"`{r['command']}` on {r['machine'].get('cpu')}, {r['date']}. Teacher {r['teacher']}; student "
             f"{r['student']}. {r['report']['test']['items']} held-out test items with BFCL's gold answers; "
             f"{r['report']['data']['kept']} of the teacher's {r['report']['data']['answered']} answers to the "
             "training inputs were valid calls and taught the student. 95% bootstrap intervals over the items.", "",
             "| model | valid call % | correct vs gold % | agrees with teacher % | tokens an answer |",
             "|---|---|---|---|---|"]
    for name, row in r["report"]["rows"].items():
        lines.append(f"| {name} | {cell(row['valid'])} | {cell((row.get('gold') or {}).get('correct'))} | "
                     f"{cell((row.get('teacher') or {}).get('correct'))} | {row['tokens_per_answer']} |")
    d = r["report"]["distill"]
    lines += ["", f"Distillation: {d['pairing']['kind']}, {d['steps']} steps, {d['train_sequences']} sequences, "
                  f"{d['train_tokens']} tokens in {d['train_s']:.0f} s, LoRA {d['lora']}, peak RSS "
                  f"{d['peak_rss_mb'] / 1024:.1f} GB. Wall time: {r['seconds'] / 60:.0f} min"
                  + "".join(f", after {e['seconds'] / 60:.0f} min on {e['date'][:16]} (`{e['command']}`: what this one "
                            "reused)" for e in r.get("earlier_invocations", [])) + ".", ""]
    return "\n".join(lines)


def earlier(previous: Path, work: Path) -> list[dict]:
    """The invocations before this one that made what it reused (same work folder): their dates and wall times."""
    try:
        p = json.loads(previous.read_text())
    except (OSError, ValueError):
        return []
    if p.get("settings", {}).get("work") != str(work):
        return []
    return [*p.get("earlier_invocations", []), {"date": p["date"], "seconds": p["seconds"], "command": p["command"]}]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("build/bench-task-bfcl"))
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--inputs", type=int, default=None, help="unlabelled training inputs at most [default: the rest]")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--few-shot", type=int, default=3)
    ap.add_argument("--variants", action="append", default=[], help="GGUF variants of the student after to score too")
    ap.add_argument("--lr", type=float, default=None, help="[default: distill's]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "task" / "bfcl")
    args = ap.parse_args()
    from edgedistill.models.locate import resolve
    from edgedistill.task.stage import TaskSettings, task_distill

    t0 = time.perf_counter()
    items, gold = package_files(args.work / "package")
    task_file = write_task(args.work / "task", items, gold, args.test, args.seeds, args.inputs)
    teacher_gguf = next((Path(resolve(TEACHER, pull=True).path) / "original").glob("*.gguf"))
    proc, url = start_server(teacher_gguf, args.threads)
    try:
        s = TaskSettings(task=task_file, teacher_url=url, teacher_model="teacher", student=STUDENT,
                         out=args.work / f"run-seed{args.seed}", steps=args.steps, seed=args.seed, max_length=1024,
                         batch_size=4, grad_accum=2, few_shot=args.few_shot, variants=args.variants, teacher_extra_body='{"repeat_penalty": 1.0}',
                         **({"lr": args.lr} if args.lr else {}))
        report = task_distill(s, echo=log)
    finally:
        proc.kill()
    result = {"benchmark": "task_bfcl", **run_record(), "dataset": f"{PACKAGE}=={VERSION} ({LICENSE})",
              "teacher": f"{TEACHER} (Q4_K_M GGUF as pulled) behind llama-cpp-python's server, openai engine",
              "student": f"{STUDENT} (pretrained, LoRA; answers through llama.cpp F16)",
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "seconds": round(time.perf_counter() - t0, 1), "report": report}
    stem = args.out if args.seed == 0 else Path(f"{args.out}-seed{args.seed}")
    result["earlier_invocations"] = earlier(stem.with_suffix(".json"), args.work)
    md = write_report(stem, result, markdown(result))
    log(f"wrote {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
