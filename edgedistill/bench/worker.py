"""One bundle, measured in its own process: `python -m edgedistill.bench.worker JOB.json`.

The parent (edgedistill.bench) starts one worker per bundle and phase, watches its memory, and kills it when it
goes over the profile's budget. Phases:
  speed   — load time, then --repeats timed generations of exactly new_tokens tokens after a fixed prompt;
            reports the process's own peak RSS.
  quality — per-position logits on held-out chunks (saved as .npy for the parent to compare), and greedy answers
            to graded eval items.
Only the runtime extra is needed (numpy, tokenizers, onnxruntime / llama-cpp-python): no torch.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


def _peak_rss_bytes() -> int:
    """This process's resident high-water mark. VmHWM belongs to the address space, which exec replaces;
    ru_maxrss would carry the parent's peak over through fork and exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def speed(job: dict) -> dict:
    from edgedistill.runtime import load
    from edgedistill.runtime.bundle import open_bundle
    from edgedistill.runtime.measure import summarize, time_generation

    open_bundle(job["bundle"], verify=True)  # hashes checked once, outside the load timing
    t = time.perf_counter()
    model = load(job["bundle"], threads=job["threads"], verify=False, n_ctx=job["n_ctx"])
    load_s = time.perf_counter() - t
    ids = list(job["prompt_ids"])
    time_generation(model, ids, 4)  # warm-up
    runs = [time_generation(model, ids, job["new_tokens"]) for _ in range(job["repeats"])]
    model.close()
    return {"load_s": load_s, **summarize(runs), "peak_rss_bytes": _peak_rss_bytes()}


def quality(job: dict) -> dict:
    import numpy as np

    from edgedistill.data import grading
    from edgedistill.data.load import EvalItem
    from edgedistill.export.validate import GGUFRunner, ONNXRunner
    from edgedistill.runtime import load
    from edgedistill.runtime.bundle import open_bundle

    bundle = Path(job["bundle"])
    manifest = open_bundle(bundle, verify=False)
    chunks = job["chunks"]
    out = Path(job["logits_dir"])
    out.mkdir(parents=True, exist_ok=True)
    path = bundle / manifest["model_file"]
    runner = (GGUFRunner(path, n_ctx=max(len(c) for c in chunks), threads=job["threads"])
              if manifest["format"] == "gguf" else ONNXRunner(bundle, threads=job["threads"]))
    for i, ids in enumerate(chunks):
        np.save(out / f"chunk{i}.npy", runner.logits([ids])[0].astype(np.float32))
    runner.close()
    answers = []
    if job.get("eval_items"):
        model = load(bundle, threads=job["threads"], verify=False, n_ctx=job["n_ctx"])
        for raw in job["eval_items"]:
            item = EvalItem(**raw["item"])
            text = model.chat([{"role": "user", "content": item.prompt}], max_tokens=raw["max_tokens"])
            answers.append({"id": item.id, "domain": item.domain, "correct": grading.is_correct(item, text)})
        model.close()
    return {"logits_dir": str(out), "chunks": len(chunks), "eval": answers}


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    result = {"speed": speed, "quality": quality}[job["phase"]](job)
    tmp = Path(job["out"] + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(job["out"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
