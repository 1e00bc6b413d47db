"""The frontier trip on real models: a teacher that can only be called, a student of another family and tokenizer.

The teacher is smollm2-135m-instruct's exact F16 GGUF behind llama-cpp-python's OpenAI-compatible server
(127.0.0.1), reached only through the openai engine; the student is gemma3-270m, pretrained (Gemma 3, a
SentencePiece vocabulary of 262k tokens against SmolLM2's 49k byte-level BPE). The issue proposed the other way
round; gemma3-270m is a base model and, asked through /v1/chat/completions, ends its turn at once (an empty answer
to most calibration prompts, measured here first and recorded), so it cannot teach through a chat API
(through the completions API it answers: served_scoring.py). The student
is the larger model: what is measured is the trip and what sequence-level distillation buys across tokenizers.

  1. `edgedistill run --target laptop --teacher-url URL --teacher-model smollm2-135m-instruct --student
     gemma3-270m` (as a library call): generate -> reference -> distill -> export -> bench -> safety, no local
     teacher weights; the server's calls and every stage's time recorded;
  2. before / after on the held-out test prompts and graded items the bench uses (the teacher's answers from the
     run's reference stage): the student's greedy answers (torch, float32) before distillation (gemma3-270m as
     pulled) and after (the run's student); chrF to the teacher's answer, answer agreement on graded items, and
     the teacher's NLL per byte of the student's answers (scored by the same model in torch, which the
     server's own score matches within 0.3%: served_scoring.py), each with a 95% bootstrap interval over prompts / items.

    .venv/bin/python benchmarks/served_pair.py   # writes benchmarks/results/distill/served_pair.{json,md}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from teacher_engines import log, start_server  # noqa: E402

from edgedistill.runinfo import run_record, write_result  # noqa: E402

TEACHER, STUDENT = "smollm2-135m-instruct", "gemma3-270m"
NO_PENALTY = '{"repeat_penalty": 1.0}'  # llama.cpp's server penalises repeats by default: not greedy


def empty_chat_answers(gguf: Path, prompts: list, threads: int) -> dict:
    """How many of `prompts` a model served through /v1/chat/completions answers with nothing."""
    from edgedistill.data.generate import DecodeSettings, generate
    from edgedistill.engines import EngineSpec

    proc, url = start_server(gguf, threads)
    try:
        out = gguf.parent / "chat-probe.jsonl"
        out.unlink(missing_ok=True)
        r = generate("", prompts, out, DecodeSettings(max_new_tokens=64),
                     engine=EngineSpec("openai", None, url=url, served_model="teacher",
                                       extra_body={"repeat_penalty": 1.0}))
        return {"prompts": len(prompts), "empty": r.empty, "calls": r.calls}
    finally:
        proc.kill()


def score_answers(test: list, graded: list, answers: dict, g_answers: dict, teacher_pair) -> dict:
    """A student's greedy answers against the teacher's: chrF on the test prompts, answer agreement (and the
    student's own score) on the graded items, the teacher's NLL per byte of the student's test answers (torch)."""
    from edgedistill.data import default_data_dir, grading
    from edgedistill.data.evaluate import find_eval_sets, load_eval_items
    from edgedistill.data.text_fidelity import compare, mean_ci, teacher_nll

    items = {it.id: it for it in load_eval_items(find_eval_sets(default_data_dir()))}
    agree = [grading.same_answer(items[r["id"]], grading.predicted(items[r["id"]], g_answers[r["id"]]),
                                 grading.predicted(items[r["id"]], r["response"])) for r in graded]
    correct = [grading.is_correct(items[r["id"]], g_answers[r["id"]]) for r in graded]
    nll = teacher_nll(*teacher_pair, [(r["id"], r["messages"], answers[r["id"]]) for r in test])
    res = compare({r["id"]: r["response"] for r in test}, answers, nll=nll, graded=agree)
    res["graded_correct"] = mean_ci([float(c) for c in correct])
    res["empty_answers"] = sum(not a.strip() for a in answers.values())
    return res


def before_after(run: Path, student_dirs: dict[str, str], teacher_pair) -> dict:
    from edgedistill.data.text_fidelity import greedy_answers
    from edgedistill.distill.dataset import load_generations
    from edgedistill.models.locate import load_model

    test = load_generations([run / "reference" / "teacher-test.jsonl"], allow_empty=True)
    graded = load_generations([run / "reference" / "teacher-graded.jsonl"], allow_empty=True)
    out = {}
    for label, spec in student_dirs.items():
        log(f"{label}: greedy answers to {len(test)} test prompts and {len(graded)} graded items")
        model, tok = load_model(spec)
        t0 = time.perf_counter()
        answers = greedy_answers(model, tok, [(r["id"], r["messages"]) for r in test], 128)
        g_answers = greedy_answers(model, tok, [(r["id"], r["messages"]) for r in graded], 320)
        gen_s = time.perf_counter() - t0
        res = score_answers(test, graded, answers, g_answers, teacher_pair)
        res["answer_seconds"] = round(gen_s, 1)
        out[label] = res
        log(f"  chrF {res['chrf']['value']:.2f}, agreement {res['answer_agreement']['value']:.3f}, "
            f"NLL/byte {res['teacher_nll_per_byte']['value']:.3f}")
        del model
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgedistill-served-pair"))
    ap.add_argument("--train-prompts", type=int, default=48, help="per domain")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--fidelity-prompts", type=int, default=12, help="test prompts per domain")
    ap.add_argument("--eval-every", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=None, help="[default: run's]")
    ap.add_argument("--formats", default="gguf:q8_0,gguf:q4_k_m",
                    help="the laptop profile's variants benched (each answers every held-out prompt and graded item "
                         "in its runtime: minutes per variant on 2 cores)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "distill" / "served_pair")
    args = ap.parse_args()
    from edgedistill.data.stage import GenerateSettings, select_prompts
    from edgedistill.engines import EngineSpec
    from edgedistill.engines.llamacpp import LlamaCppEngine
    from edgedistill.models.locate import load_model, resolve
    from edgedistill.pipeline import RunSettings, run_pipeline

    args.work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    e = LlamaCppEngine.open(EngineSpec("llama.cpp", TEACHER, gguf_type="f16"))  # the teacher's exact GGUF
    teacher_gguf = e.gguf
    e.close()
    gemma_gguf = next((Path(resolve(STUDENT, pull=True).path) / "original").glob("*.gguf"))
    val = select_prompts(GenerateSettings(split="validation", limit=2, out=args.work / "x.jsonl"))
    log("gemma3-270m served through the chat API (why it is the student here)")
    probe = empty_chat_answers(gemma_gguf, val, args.threads)
    log(f"  {probe['empty']} of {probe['prompts']} answers empty")

    proc, url = start_server(teacher_gguf, args.threads)
    try:
        from edgedistill.targets import shipped

        profile = args.work / "laptop.yaml"  # the shipped laptop profile, fewer variants
        text = shipped()["laptop"].read_text()
        profile.write_text(text.replace(next(ln for ln in text.splitlines() if ln.startswith("formats:")),
                                        f"formats: [{', '.join(args.formats.split(','))}]"))
        lr = {"lr": args.lr} if args.lr else {}
        settings = RunSettings(target=str(profile), out=args.work / "run", teacher_url=url, teacher_model="teacher",
                               student=STUDENT, train_prompts=args.train_prompts, val_prompts=4,
                               fidelity_prompts=args.fidelity_prompts, eval_every=args.eval_every, steps=args.steps,
                               batch_size=4, grad_accum=1, max_length=256, teacher_extra_body=NO_PENALTY,
                               allow_empty=True, **lr)
        t0 = time.perf_counter()
        summary = run_pipeline(settings, echo=lambda m: log(m))
        run_s = time.perf_counter() - t0
    finally:
        proc.kill()
    teacher_pair = load_model(TEACHER)
    table = before_after(args.work / "run", {"before (gemma3-270m as pulled)": STUDENT,
                                             "after (distilled)": str(args.work / "run" / "distill" / "student")},
                         teacher_pair)
    bench = json.loads((args.work / "run" / "bench" / "bench.json").read_text())
    rows = [{"name": r["name"], "status": r["status"], "decode_tokens_per_s": (r.get("speed") or {}).get(
        "decode_tokens_per_s"), "peak_rss_mb": ((r.get("speed") or {}).get("peak_rss_bytes") or 0) / 1e6,
        "chrf": ((r.get("quality") or {}).get("text") or {}).get("chrf"),
        "answer_agreement": ((r.get("quality") or {}).get("graded") or {}).get("answer_agreement")}
        for r in bench["variants"]]
    result = {"benchmark": "served_pair", **run_record(), "command": " ".join(sys.argv),
              "teacher": f"{TEACHER} (F16 GGUF) behind llama-cpp-python's server, openai engine",
              "student": f"{STUDENT} (pretrained)", "settings": vars(args) | {"work": str(args.work),
                                                                             "out": str(args.out)},
              "gemma_chat_probe": probe, "pairing": summary["pairing"], "teacher_calls": summary.get("teacher_calls"),
              "stage_seconds": {k: v.get("seconds") for k, v in summary["stages"].items()},
              "run_seconds": round(run_s, 1), "total_seconds": round(time.perf_counter() - t_all, 1),
              "distill_validation": summary["student"].get("validation"), "before_after": table,
              "bench_rows": rows, "verdict": summary["verdict"], "safety": summary.get("safety")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out.with_suffix(".json"), result)
    (args.out.with_suffix(".md")).write_text(markdown(result))
    log(f"wrote {args.out}.json and .md")
    return 0


def cell(block, scale=1.0, spec=".2f") -> str:
    """A value with its 95% interval, as the tables show it."""
    if not block:
        return "—"
    return (f"{format(block['value'] * scale, spec)} [{format(block['ci'][0] * scale, spec)}, "
            f"{format(block['ci'][1] * scale, spec)}]")


def markdown(r: dict) -> str:
    lines = ["# A served teacher, a student of another tokenizer", "",
             f"Teacher: {r['teacher']}. Student: {r['student']}. Machine: {r['machine']['cpu']}. "
             f"Command: `{r['command']}`.", "",
             f"gemma3-270m through the chat API first: {r['gemma_chat_probe']['empty']} of "
             f"{r['gemma_chat_probe']['prompts']} answers empty (a base model ends its turn at once), so it is the "
             "student here, not the teacher.", "",
             f"Pairing: {r['pairing']['kind']} ({r['pairing']['why']}).", "",
             f"Teacher calls: {r['teacher_calls']}. Stage seconds: {r['stage_seconds']}; the run "
             f"{r['run_seconds']:.0f} s.", "",
             "Held-out test prompts and graded items, 95% bootstrap intervals:", "",
             "| student | chrF to the teacher | answers agree % | graded correct % | teacher NLL / byte | empty |",
             "|---|---|---|---|---|---:|"]
    for label, v in r["before_after"].items():
        lines.append(f"| {label} | {cell(v['chrf'])} | {cell(v.get('answer_agreement'), 100, '.1f')} | "
                     f"{cell(v.get('graded_correct'), 100, '.1f')} | {cell(v.get('teacher_nll_per_byte'), 1, '.3f')} | "
                     f"{v['empty_answers']} |")
    lines += ["", "Bench (laptop profile, the student's exported files against the teacher's answers):", "",
              "| variant | status | decode tok/s | peak RSS MB | chrF | answers agree % |", "|---|---|---:|---:|---|---|"]
    for b in r["bench_rows"]:
        lines.append(f"| {b['name']} | {b['status']} | {b['decode_tokens_per_s'] or 0:.1f} | {b['peak_rss_mb']:.0f} | "
                     f"{cell(b['chrf'])} | {cell(b['answer_agreement'], 100, '.1f')} |")
    lines += ["", *[f"> {x}" for x in r["verdict"]], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
