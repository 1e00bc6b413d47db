"""One bundle, measured in its own process: `python -m edgedistill.bench.worker JOB.json`.

The parent (edgedistill.bench) starts one worker per bundle and phase, watches its memory, and kills it when it
goes over the profile's budget. Phases:
  speed   — load time, then --repeats timed generations of exactly new_tokens tokens after a fixed prompt, each
            cold (the whole prompt computed, runtime.measure); reports the process's own peak RSS and what the
            runtime uses on this CPU (llama.cpp's system info line, onnxruntime's providers).
  quality — teacher-forced fidelity to the reference on general-text windows and on the teacher's answers to
            the test prompts (bench.fidelity), greedy answers to graded eval items, and, against a teacher's text
            answers (another tokenizer, a served teacher), greedy answers to the same prompts.
Only the runtime extra is needed (numpy, tokenizers, onnxruntime / llama-cpp-python): no torch.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from edgedistill.runinfo import peak_rss_bytes


def speed(job: dict) -> dict:
    from edgedistill.runtime import load
    from edgedistill.runtime.bundle import open_bundle
    from edgedistill.runtime.measure import summarize, time_generation

    for bundle in (job["bundle"], job.get("adapter")):  # hashes checked once, outside the load timing
        if bundle:
            open_bundle(bundle, verify=True)
    t = time.perf_counter()
    model = load(job["bundle"], threads=job["threads"], verify=False, n_ctx=job["n_ctx"], adapter=job.get("adapter"))
    load_s = time.perf_counter() - t
    ids = list(job["prompt_ids"])
    time_generation(model, ids, 4)  # warm-up
    runs = [time_generation(model, ids, job["new_tokens"]) for _ in range(job["repeats"])]
    info = model.runtime_info()
    model.close()
    return {"load_s": load_s, **summarize(runs), "peak_rss_bytes": peak_rss_bytes(), "runtime": info}


def quality(job: dict) -> dict:
    """Teacher-forced logits on the general-text windows and on the in-domain sequences (prompt + the teacher's
    answer; only the answer positions are scored), and greedy answers to graded items.

    The reference (job["save_dir"]) saves its log-probabilities there; every other variant (job["reference_dir"])
    is compared with them here, one sequence at a time, so only the reference's arrays are ever on disk. With
    job["top_k"] the reference also writes its top-k per row to job["top_k_path"] (what a device kit carries); a
    variant given job["reference_top_k"] (that file) is compared with those too (runtime.logits.top_k_stats), as
    "top_k", and only with those where there is no reference_dir (on a device)."""
    import numpy as np

    from edgedistill.data import grading
    from edgedistill.data.load import EvalItem
    from edgedistill.runtime import load
    from edgedistill.runtime.logits import log_softmax, open_logits, sequence_stats, top_k_reference, top_k_stats

    bundle = Path(job["bundle"])
    save = Path(job["save_dir"]) if job.get("save_dir") else None
    ref = Path(job["reference_dir"]) if job.get("reference_dir") else None
    ref_top = np.load(job["reference_top_k"]) if job.get("reference_top_k") else None
    top: dict = {}
    top_stats: dict = {"g": [], "d": []}
    if save:
        save.mkdir(parents=True, exist_ok=True)
    seqs = [("g", i, ids, 0) for i, ids in enumerate(job["general"])]
    seqs += [("d", i, s["ids"], s["start"]) for i, s in enumerate(job["domain"])]
    stats: dict = {"g": [], "d": []}
    runner = open_logits(bundle, n_ctx=max(len(ids) for _, _, ids, _ in seqs), threads=job["threads"],
                         adapter=job.get("adapter")) if seqs else None
    for kind, i, ids, start in seqs:
        logits = runner.logits([ids])[0]
        rows = logits[start - 1 : len(ids) - 1] if start else logits  # in-domain: the rows that predict the answer
        targets = ids[start:] if start else ids[1:]
        if ref_top is not None:
            top_stats[kind].append(top_k_stats({x: ref_top[f"{kind}{i}.{x}"] for x in ("ids", "lp", "target_lp")},
                                               rows, targets))
            if ref is None:  # a device: the top-k is all there is of the reference
                stats[kind].append(top_stats[kind][-1])
                continue
        if save:
            lp = log_softmax(rows).astype(np.float32)
            np.save(save / f"{kind}{i}.npy", lp)
            if job.get("top_k"):
                top.update({f"{kind}{i}.{x}": a for x, a in top_k_reference(lp, targets, job["top_k"]).items()})
        else:
            lp = np.load(ref / f"{kind}{i}.npy") if ref else log_softmax(rows)
        stats[kind].append(sequence_stats(lp, rows, targets))
    if runner is not None:
        runner.close()
    if top:
        with open(job["top_k_path"], "wb") as f:
            np.savez_compressed(f, **top)
    answers, texts = [], {}
    if job.get("eval_items") or job.get("answer_prompts"):
        model = load(bundle, threads=job["threads"], verify=False, n_ctx=job["n_ctx"], adapter=job.get("adapter"))
        for p in job.get("answer_prompts") or []:  # greedy answers, compared with the teacher's on the text
            texts[p["id"]] = model.chat(p["messages"], max_tokens=p["max_tokens"])
        for raw in job.get("eval_items") or []:
            item = EvalItem(**{**raw["item"], "choices": tuple(raw["item"]["choices"])})
            text = model.chat([{"role": "user", "content": item.prompt}], max_tokens=raw["max_tokens"])
            answers.append({"id": item.id, "domain": item.domain, "correct": grading.is_correct(item, text),
                            "answer": grading.predicted(item, text)})
        model.close()
    both = ref_top is not None and ref is not None  # the build machine making a kit: also the device's measure
    return {"general": stats["g"], "domain": stats["d"], "eval": answers, "answers": texts,
            "top_k": {"general": top_stats["g"], "domain": top_stats["d"]} if both else None}


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    result = {"speed": speed, "quality": quality}[job["phase"]](job)
    from edgedistill.paths import write_text_atomic

    write_text_atomic(Path(job["out"]), json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
