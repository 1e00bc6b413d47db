"""Constrained against free decoding of one bundle on a task's test items: validity, the task's metric, and the cost.

Each test item is answered twice by the bundle through the runtime, with the same prompt (the task's messages,
zero-shot): free, and under the constraint the task's output kind asks for (task.kinds: a label among the labels,
JSON following the schema, a call of one of the item's tools), compiled per item (each BFCL item has its own
function) and cached per distinct constraint, its compilation inside the timing. Every generation computes its
whole prompt (the runtime's prefix cache is reset first). Reported per mode: valid % and the task's headline metric
against gold (95% bootstrap intervals over items), median time to the first token (prompt, and the grammar where
constrained) and decode tokens/s after it, and the constrained/free ratios of the medians, paired per item.

BFCL's functions use Python type names (dict, float, tuple, any); the constraint takes them as JSON schema (object,
number, array, any value), as BFCL itself converts them for OpenAI-style models. The prompt keeps BFCL's own text.

    .venv/bin/python benchmarks/constrained.py --task build/bench-task-bfcl/task/task.yaml \\
        --bundle build/bench-task-bfcl/run-seed0/export/gguf-q4_k_m --limit 100 --out benchmarks/results/task/constrained
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# BFCL's Python-ish type names as JSON schema (what BFCL's own OpenAI handler casts them to)
BFCL_TYPES = {"dict": "object", "float": "number", "tuple": "array", "list": "array", "bool": "boolean",
              "int": "integer", "str": "string"}
SCHEMA_KEYS = {"type", "properties", "required", "items", "enum", "description", "anyOf"}


def json_schema(p):
    """A BFCL parameter schema as JSON schema: its types renamed, `any` as any value, keys BFCL adds dropped."""
    if not isinstance(p, dict):
        return p
    out = {k: v for k, v in p.items() if k in SCHEMA_KEYS}
    t = out.get("type")
    if t == "any":
        out.pop("type")
    elif isinstance(t, str):
        out["type"] = BFCL_TYPES.get(t, t)
    if "properties" in out:
        out["properties"] = {k: json_schema(v) for k, v in out["properties"].items()}
    if "items" in out:
        out["items"] = json_schema(out["items"])
    return out


def bfcl_record(r: dict) -> dict:
    tools = [{**t, "parameters": json_schema(t.get("parameters") or {})} for t in r.get("tools") or []]
    return {**r, "tools": tools} if r.get("tools") is not None else r


def one(m, ids, cfg) -> dict:
    from edgedistill.runtime import Completion

    done = Completion()
    m.reset()
    t0 = time.perf_counter()
    first, pieces = None, []
    for piece in m.stream_ids(ids, cfg, done):
        if first is None:
            first = time.perf_counter()
        pieces.append(piece)
    end = time.perf_counter()
    first = first or end
    decode_s = end - first
    return {"text": "".join(pieces), "ttft_s": first - t0, "tokens": done.completion_tokens,
            "decode_tps": (done.completion_tokens - 1) / decode_s if decode_s > 0 and done.completion_tokens > 1
            else None, "finish": done.finish_reason}


def markdown(r: dict) -> str:
    def cell(m):
        return f"{100 * m['value']:.1f} [{100 * m['ci'][0]:.1f}, {100 * m['ci'][1]:.1f}]"

    lines = [f"# Constrained decoding on {r['task']} ({r['kind']}): {Path(r['bundle']).name}", "",
             f"`{r['command']}` on {r['machine'].get('cpu')}, {r['date']}, {r['threads']} threads. {r['items']} "
             f"test items with gold answers, each answered free and constrained with the same prompt "
             f"({r['data']}). 95% bootstrap intervals over items.", "",
             f"| mode | valid % | {r['metric']} vs gold % | first token, median s | decode tokens/s, median | "
             "tokens an answer |", "|---|---|---|---:|---:|---:|"]
    for mode, row in r["modes"].items():
        lines.append(f"| {mode} | {cell(row['valid'])} | {cell(row['metric'])} | {row['ttft_s_median']:.3f} | "
                     f"{row['decode_tps_median']:.1f} | {row['tokens_mean']:.1f} |")
    c = r["ratios"]
    lines += ["", f"Constrained / free, medians of the per-item ratios: first token x{c['ttft']:.2f}, decode tokens/s "
                  f"x{c['decode_tps']:.2f}. {r['distinct_constraints']} distinct constraints (each made into a "
                  "grammar at its first use, inside that item's first-token time).",
              ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", type=Path, required=True)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=100, help="test items (the task's own split, first N)")
    ap.add_argument("--max-tokens", type=int, default=None, help="default: the kind's answer length")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bfcl-types", action="store_true", help="read tool parameters in BFCL's type names")
    ap.add_argument("--data", default="", help="where the task's data comes from (package==version, license)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from edgedistill.data.text_fidelity import mean_ci
    from edgedistill.runinfo import available_cores, run_record, write_report
    from edgedistill.runtime import SamplingParams, load
    from edgedistill.runtime.constrain import constraint_for
    from edgedistill.task.spec import load_task
    from edgedistill.task.stage import TaskEvalSettings, split

    task = load_task(args.task)
    test = list(split(task, TaskEvalSettings.__dataclass_fields__["test_share"].default, args.limit).test)
    kind, out = task.kind, task.output
    threads = args.threads or available_cores()
    max_tokens = args.max_tokens or kind.max_new_tokens
    rows: dict[str, list[dict]] = {"free": [], "constrained": []}
    distinct: set[str] = set()
    record = run_record()
    with load(args.bundle, threads=threads, n_ctx=4096) as m:
        for i, r in enumerate(test):
            ids = m.encode(m.render_chat(task.messages(r)))
            request = kind.constraint(out, bfcl_record(r) if args.bfcl_types else r)
            c = constraint_for(**request)  # no template tags: the task asks for the bare answer
            distinct.add(c.key)
            gold = task.gold(r)
            for mode, cons in (("free", None), ("constrained", c)):
                got = one(m, ids, SamplingParams(max_tokens=max_tokens, constraint=cons))
                p = kind.parse(got["text"], out, r)
                got["valid"] = bool(p.valid)
                got["metric"] = kind.score(p.value, gold.value, out, r)[kind.metric] if p.valid else 0.0
                got["id"] = r["id"]
                rows[mode].append(got)
            f, k = rows["free"][-1], rows["constrained"][-1]
            print(f"[{i + 1}/{len(test)}] {r['id']}: free valid={f['valid']} {kind.metric}={f['metric']} | "
                  f"constrained valid={k['valid']} {kind.metric}={k['metric']}", file=sys.stderr, flush=True)
    modes = {}
    for mode, got in rows.items():
        modes[mode] = {"valid": mean_ci([float(g["valid"]) for g in got]),
                       "metric": mean_ci([g["metric"] for g in got]),
                       "ttft_s_median": statistics.median(g["ttft_s"] for g in got),
                       "decode_tps_median": statistics.median(g["decode_tps"] for g in got if g["decode_tps"]),
                       "tokens_mean": statistics.fmean(g["tokens"] for g in got),
                       "cut_at_max_tokens": sum(g["finish"] == "length" for g in got)}
    pairs = list(zip(rows["free"], rows["constrained"]))
    ratios = {"ttft": statistics.median(k["ttft_s"] / f["ttft_s"] for f, k in pairs),
              "decode_tps": statistics.median(k["decode_tps"] / f["decode_tps"] for f, k in pairs
                                              if k["decode_tps"] and f["decode_tps"])}
    report = {**record, "task": task.name, "kind": out["kind"], "metric": kind.metric, "bundle": str(args.bundle),
              "threads": threads, "max_tokens": max_tokens, "items": len(test), "data": args.data,
              "distinct_constraints": len(distinct), "modes": modes, "ratios": ratios,
              "answers": {mode: [{k: g[k] for k in ("id", "text", "valid", "metric", "tokens", "ttft_s", "decode_tps")}
                                 for g in got] for mode, got in rows.items()}}
    print(f"wrote {write_report(args.out, report, markdown(report))}", file=sys.stderr)


if __name__ == "__main__":
    main()
