"""Cross-tokenizer distillation against sequence-level distillation on a real pair of different tokenizers.

Teacher smollm2-135m-instruct (byte-level BPE, 49k), student gemma3-270m pretrained (SentencePiece, 262k). Same
data, steps, learning rate and seeds for both objectives:

  1. the teacher (its F16 GGUF, llama.cpp engine in process) answers the train prompts, the held-out test prompts
     and every eval-every-th graded item;
  2. `cache-logits --student gemma3-270m --k 20`: the teacher's top-20 at each of its answer tokens (teacher-forced,
     as an API's top_logprobs 20 would give them) projected onto the student's tokenizer; the alignment statistics
     from cache.json;
  3. per seed: `distill` sequence-level (cross-entropy on the teacher's text) and cross-tokenizer (the projected
     cache, --kd-weight 0.5, forward KL), nothing else changed;
  4. each student (and the student before distillation) answers the test prompts and graded items greedily (its F16
     GGUF in llama.cpp, the same engine for all), scored against the teacher's answers: chrF, answer agreement, the
     teacher's NLL per byte of the student's answers (torch), 95% bootstrap intervals over prompts / items.
  5. cross − sequence sentence chrF paired on the same test prompts, per seed and over the seeds.

With --served the teacher is the same F16 GGUF behind llama-cpp-python's OpenAI-compatible server on 127.0.0.1,
reached only through the openai engine: its answers come with top_logprobs 20 as strings (`generate --logprobs 20`
without a tokenizer), and the cache projects those strings (llama-cpp-python's server returns top-20 about 18x
slower than it generates: benchmarks/results/distill/teacher_engines.md).

    .venv/bin/python benchmarks/cross_tokenizer.py   # writes benchmarks/results/distill/cross_tokenizer.{json,md}
    .venv/bin/python benchmarks/cross_tokenizer.py --served   # ... cross_tokenizer_served.{json,md}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from served_pair import cell, score_answers  # noqa: E402
from teacher_engines import log, start_server  # noqa: E402

from edgedistill.runinfo import run_record, write_result  # noqa: E402

TEACHER, STUDENT = "smollm2-135m-instruct", "gemma3-270m"


def answers_of(model: str, prompts: list, max_new: int, out: Path) -> dict:
    """id -> the model's greedy answer (its F16 GGUF through the llama.cpp engine)."""
    from edgedistill.data.generate import DecodeSettings, generate
    from edgedistill.engines import EngineSpec

    out.unlink(missing_ok=True)
    generate(model, prompts, out, DecodeSettings(max_new_tokens=max_new), engine=EngineSpec("llama.cpp", model))
    got = {r["id"]: r["response"] for r in map(json.loads, out.read_text().splitlines())}
    return {p.id: got.get(p.id, "") for p in prompts}


def cross_minus_sequence(results: dict, seeds: list[int], test_recs: list) -> dict:
    """The paired difference cross − sequence on the same test prompts: per seed, and over both seeds (per prompt,
    the mean over seeds of the difference), each a mean with its 95% bootstrap interval over prompts; sentence chrF
    to the teacher's answer."""
    from edgedistill.data.text_fidelity import chrf, mean_ci

    def per_prompt(label: str) -> list[float]:
        a = results[label]["answers"]["test"]
        return [chrf(a[r["id"]], r["response"]) for r in test_recs]

    diffs = {s: [c - q for c, q in zip(per_prompt(f"cross seed {s}"), per_prompt(f"sequence seed {s}"))]
             for s in seeds}
    out = {f"seed {s}": {"chrf": mean_ci(d)} for s, d in diffs.items()}
    if len(seeds) > 1:
        out["all seeds"] = {"chrf": mean_ci([sum(col) / len(col) for col in zip(*diffs.values())])}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-prompts", type=int, default=24, help="per domain")
    ap.add_argument("--test-prompts", type=int, default=8, help="per domain")
    ap.add_argument("--eval-every", type=int, default=12, help="every N-th graded item")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=5e-5, help="chosen on validation for this pair (served_pair)")
    ap.add_argument("--kd-weight", type=float, default=0.5)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--served", action="store_true", help="the teacher behind llama.cpp's server (top_logprobs strings)")
    ap.add_argument("--work", type=Path, default=None, help="default /tmp/edgedistill-cross-tokenizer[-served]")
    ap.add_argument("--out", type=Path, default=None, help="default results/distill/cross_tokenizer[_served]")
    args = ap.parse_args()
    args.work = args.work or Path("/tmp/edgedistill-cross-tokenizer" + ("-served" if args.served else ""))
    args.out = args.out or HERE / "results" / "distill" / ("cross_tokenizer" + ("_served" if args.served else ""))
    from edgedistill.data import default_data_dir
    from edgedistill.data.evaluate import REASONING_TOKENS, find_eval_sets, load_eval_items
    from edgedistill.data.generate import DecodeSettings, generate
    from edgedistill.data.load import Prompt
    from edgedistill.data.stage import read_prompts
    from edgedistill.distill.dataset import load_generations
    from edgedistill.distill.stage import CacheSettings, DistillSettings, cache_logits, distill
    from edgedistill.engines import EngineSpec
    from edgedistill.engines.llamacpp import LlamaCppEngine
    from edgedistill.models.locate import load_model

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    teacher = EngineSpec("llama.cpp", TEACHER, gguf_type="f16")
    server, served = None, {}
    if args.served:
        e = LlamaCppEngine.open(teacher)
        gguf = e.gguf
        e.close()
        server, url = start_server(gguf, 2)
        teacher = EngineSpec("openai", None, url=url, served_model="teacher", extra_body={"repeat_penalty": 1.0})
        served = dict(teacher_engine="openai", teacher_url=url, teacher_model="teacher")
    train = read_prompts(split="train", limit=args.train_prompts)
    test = read_prompts(split="test", limit=args.test_prompts)
    graded_items = load_eval_items(find_eval_sets(default_data_dir()))[:: args.eval_every]
    graded = [Prompt(id=it.id, messages=({"role": "user", "content": it.prompt},), domain=it.domain)
              for it in graded_items]
    files = {}
    t0 = time.perf_counter()
    for name, prompts, n in (("train", train, 128), ("test", test, 128), ("graded", graded, REASONING_TOKENS)):
        files[name] = work / f"teacher-{name}.jsonl"
        if not files[name].exists():
            log(f"the teacher answers {len(prompts)} {name} prompts")
            part = work / f"teacher-{name}.part.jsonl"
            generate(None if args.served else TEACHER, prompts, part, DecodeSettings(max_new_tokens=n),
                     engine=teacher, logprobs=args.k if args.served and name == "train" else 0)
            part.rename(files[name])
    teacher_s = time.perf_counter() - t0

    cache_dir = work / "cache"
    if not cache_dir.exists():
        log(f"the teacher's top-{args.k} projected onto {STUDENT}'s tokenizer")
        cache_logits(CacheSettings(**({"teacher": TEACHER, "teacher_engine": "llama.cpp"} | served),
                                   generations=[files["train"]], out=cache_dir, k=args.k, max_length=256,
                                   student=STUDENT))
    if server is not None:
        server.kill()
    projection = json.loads((cache_dir / "cache.json").read_text())["projection"]
    log(f"  aligned {projection['aligned_share']:.1%} of the student's positions, mass kept "
        f"{projection['mass_kept']:.1%}")

    runs = {}
    seeds = [int(x) for x in args.seeds.split(",")]
    for seed in seeds:
        for objective in ("sequence", "cross"):
            out = work / f"{objective}-seed{seed}"
            if not (out / "student").exists():
                log(f"distill {objective}, seed {seed}")
                distill(DistillSettings(student=STUDENT, generations=[files["train"]], out=out, steps=args.steps,
                                        lr=args.lr, seed=seed, batch_size=4, grad_accum=1, max_length=256,
                                        kd_weight=args.kd_weight,
                                        logit_cache=cache_dir if objective == "cross" else None))
            d = json.loads((out / "student" / "distill.json").read_text())
            runs[f"{objective} seed {seed}"] = {"objective": objective, "seed": seed, "student": str(out / "student"),
                                                "pairing": d["pairing"]["kind"], "train_s": d["train_s"]}

    test_recs = load_generations([files["test"]], allow_empty=True)
    graded_recs = load_generations([files["graded"]], allow_empty=True)
    teacher_pair = load_model(TEACHER)
    results = {}
    for label, spec in {"before (gemma3-270m as pulled)": STUDENT,
                        **{k: v["student"] for k, v in runs.items()}}.items():
        log(f"{label}: answers")
        t0 = time.perf_counter()
        a = answers_of(spec, test, 128, work / "answers-test.jsonl")
        g = answers_of(spec, graded, REASONING_TOKENS, work / "answers-graded.jsonl")
        res = score_answers(test_recs, graded_recs, a, g, teacher_pair)
        res["answer_seconds"] = round(time.perf_counter() - t0, 1)
        res["answers"] = {"test": a, "graded": g}
        results[label] = {**runs.get(label, {}), **res}
        log(f"  chrF {res['chrf']['value']:.2f}, agreement {res['answer_agreement']['value']:.3f}, "
            f"NLL/byte {res['teacher_nll_per_byte']['value']:.3f}")
    paired = cross_minus_sequence(results, seeds, test_recs)
    result = {"benchmark": "cross_tokenizer", **run_record(), "command": " ".join(sys.argv),
              "teacher": f"{TEACHER} (F16 GGUF, " + ("behind llama.cpp's server, top_logprobs strings)" if args.served
                                                     else "llama.cpp engine in process)"), "student": f"{STUDENT} (pretrained)",
              "settings": vars(args) | {"work": str(work), "out": str(args.out)}, "projection": projection,
              "prompts": {"train": len(train), "test": len(test), "graded": len(graded)},
              "teacher_seconds": round(teacher_s, 1), "results": results, "cross_minus_sequence": paired,
              "total_seconds": round(time.perf_counter() - t_all, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out.with_suffix(".json"), result)
    args.out.with_suffix(".md").write_text(markdown(result))
    log(f"wrote {args.out}.json and .md")
    return 0


def markdown(r: dict) -> str:
    p, s = r["projection"], r["settings"]
    lines = [f"# {__doc__.splitlines()[0]}", "",
             f"Teacher: {r['teacher']}. Student: {r['student']}. Machine: {r['machine']['cpu']}. "
             f"{r['prompts']['train']} train prompts, {s['steps']} steps, batch 4, lr {s['lr']:g}, kd-weight "
             f"{s['kd_weight']:g} (cross); {r['prompts']['test']} test prompts and {r['prompts']['graded']} graded "
             "items, 95% bootstrap intervals; answers greedy through each model's F16 GGUF (llama.cpp).", "",
             f"Projection of the teacher's top-{s['k']} onto the student's tokenizer: {p['aligned_share']:.1%} of the "
             f"student's response positions aligned (the rest hold the label alone), {p['mass_kept']:.1%} of the "
             f"top-{s['k']} mass mapped to a student token ({p['exact_mass_share']:.1%} to exact single-token "
             f"matches), the teacher's top-{s['k']} holding {p['teacher_mass_in_top_k']:.1%} of its mass.", "",
             "| student | chrF to the teacher | answers agree % | teacher NLL/byte | graded correct % |",
             "|---|---|---|---|---|"]
    for label, x in r["results"].items():
        lines.append(f"| {label} | {cell(x['chrf'])} | {cell(x.get('answer_agreement'), 100, '.1f')} | "
                     f"{cell(x.get('teacher_nll_per_byte'), 1, '.3f')} | {cell(x.get('graded_correct'), 100, '.1f')} |")
    if r.get("cross_minus_sequence"):
        lines += ["", "Paired on the same test prompts, cross − sequence (sentence chrF to the teacher's answer; a mean "
                  "with its 95% bootstrap interval over prompts):", "", "| seeds | chrF difference |", "|---|---|"]
        lines += [f"| {k} | {cell(v['chrf'])} |" for k, v in r["cross_minus_sequence"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
