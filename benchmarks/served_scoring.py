"""A served teacher through the completions API: does a base model answer, and does the server's score of given
text agree with the model's own?

  1. gemma3-270m (a base model) as a GGUF behind llama-cpp-python's server (127.0.0.1), asked the validation
     prompts through /v1/chat/completions and through /v1/completions (`--teacher-api completions`, the prompt the
     contents joined by newlines): how many answers are empty each way;
  2. smollm2-135m-instruct's F16 GGUF behind the same server scores given answers (the engine's `score_texts`:
     the prompt rendered with its chat template, then the answer, echoed with log-probabilities), against the
     same model in torch (float32, teacher-forced: data.text_fidelity.teacher_nll): NLL per byte each way, the
     relative difference per answer, and seconds per scored answer. The answers are SmolLM2's own and gemma3's.

    .venv/bin/python benchmarks/served_scoring.py   # writes benchmarks/results/distill/served_scoring.{json,md}
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from teacher_engines import log, start_server  # noqa: E402

from edgedistill.runinfo import run_record, write_result  # noqa: E402

TEACHER, BASE = "smollm2-135m-instruct", "gemma3-270m"
NO_PENALTY = {"repeat_penalty": 1.0}  # llama.cpp's server penalises repeats by default: not greedy


def served_answers(gguf: Path, prompts: list, api: str, threads: int, work: Path, max_new: int) -> dict:
    """The server's answers to `prompts` through `api`: {id: text}, and how many were empty."""
    import json

    from edgedistill.data.generate import DecodeSettings, generate
    from edgedistill.engines import EngineSpec

    proc, url = start_server(gguf, threads)
    try:
        out = work / f"{gguf.stem}-{api}.jsonl"
        out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        r = generate("", prompts, out, DecodeSettings(max_new_tokens=max_new),
                     engine=EngineSpec("openai", None, url=url, served_model="teacher", api=api,
                                       extra_body=NO_PENALTY))
        secs = time.perf_counter() - t0
        texts = {x["id"]: x["response"] for x in map(json.loads, out.read_text().splitlines())}
        return {"prompts": len(prompts), "empty": r.empty, "hit_max_tokens": r.hit_max_tokens, "calls": r.calls,
                "seconds": round(secs, 1), "answers": texts}
    finally:
        proc.kill()


def markdown(result: dict) -> str:
    s, b = result["scoring"], result["base_model_answers"]
    per_byte, n = s["nll_per_byte"], result["settings"]["max_new_tokens"]
    return "\n".join([
        "# A served teacher through the completions API", "", f"Machine: {result['machine']['cpu']}.", "",
        f"| {BASE} asked through | prompts | empty answers | cut at {n} tokens |", "|---|---|---|---|",
        *[f"| {api} API | {b[api]['prompts']} | {b[api]['empty']} | {b[api]['hit_max_tokens']} |"
          for api in ("chat", "completions")], "",
        f"{TEACHER} scoring {s['answers']} answers ({s['scored_by_server']} scored by the server, {s['unscored']} "
        f"left out): NLL/byte server {per_byte['server']:.4f}, torch {per_byte['torch']:.4f}; relative difference "
        f"per answer median {100 * s['relative_difference_median']:.2f}%, max {100 * s['relative_difference_max']:.2f}%; "
        f"{s['server_seconds_per_answer']:.2f} s per answer through the server (two requests for a new prompt), "
        f"{s['torch_seconds_per_answer']:.2f} s in torch.", ""])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgedistill-served-scoring"))
    ap.add_argument("--prompts", type=int, default=4, help="validation prompts per domain")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "distill" / "served_scoring")
    args = ap.parse_args()
    from edgedistill.data.stage import GenerateSettings, select_prompts
    from edgedistill.data.text_fidelity import teacher_nll
    from edgedistill.engines import EngineSpec, open_engine
    from edgedistill.engines.llamacpp import LlamaCppEngine
    from edgedistill.models.locate import load_model, resolve

    args.work.mkdir(parents=True, exist_ok=True)
    prompts = select_prompts(GenerateSettings(split="validation", limit=args.prompts, out=args.work / "x.jsonl"))
    base_gguf = next((Path(resolve(BASE, pull=True).path) / "original").glob("*.gguf"))
    base = {}
    for api in ("chat", "completions"):
        log(f"{BASE} through the {api} API")
        base[api] = served_answers(base_gguf, prompts, api, args.threads, args.work, args.max_new_tokens)
        log(f"  {base[api]['empty']} of {base[api]['prompts']} empty, {base[api]['hit_max_tokens']} cut at the limit")

    e = LlamaCppEngine.open(EngineSpec("llama.cpp", TEACHER, gguf_type="f16"))  # the teacher's exact GGUF
    teacher_gguf = e.gguf
    e.close()
    own = served_answers(teacher_gguf, prompts, "chat", args.threads, args.work, args.max_new_tokens)
    items = [(f"{p.id}:{who}", p.messages, answers.get(p.id) or "") for p in prompts
             for who, answers in ((TEACHER, own["answers"]), (BASE, base["completions"]["answers"]))]
    items = [x for x in items if x[2]]
    proc, url = start_server(teacher_gguf, args.threads)
    try:
        eng = open_engine(EngineSpec("openai", None, url=url, served_model="teacher", tokenizer=TEACHER))
        t0 = time.perf_counter()
        served = eng.score_texts(items)
        served_s = time.perf_counter() - t0
        unscored, usage = eng.unscored, dict(eng.usage)
        eng.close()
    finally:
        proc.kill()
    model, tok = load_model(TEACHER)
    t0 = time.perf_counter()
    local = teacher_nll(model, tok, items)
    local_s = time.perf_counter() - t0
    both = [k for k in local if k in served]
    rel = [abs(served[k][0] - local[k][0]) / local[k][0] for k in both]
    per_byte = {name: sum(d[k][0] for k in both) / sum(d[k][1] for k in both) for name, d in
                (("server", served), ("torch", local))}
    for a in base.values():
        a.pop("answers")
    result = {"benchmark": "served_scoring", **run_record(), "command": " ".join(sys.argv), "settings": {
        "prompts_per_domain": args.prompts, "max_new_tokens": args.max_new_tokens, "threads": args.threads},
        "base_model_answers": {"model": BASE, **base},
        "scoring": {"teacher": f"{TEACHER} F16 GGUF (server) vs float32 (torch)", "answers": len(items),
                    "scored_by_server": len(served), "unscored": unscored, "compared": len(both),
                    "nll_per_byte": per_byte, "relative_difference_median": statistics.median(rel),
                    "relative_difference_max": max(rel), "server_seconds_per_answer": served_s / len(items),
                    "torch_seconds_per_answer": local_s / len(items), "server_calls": usage}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out.with_suffix(".json"), result)
    args.out.with_suffix(".md").write_text(markdown(result))
    log(f"wrote {args.out}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
