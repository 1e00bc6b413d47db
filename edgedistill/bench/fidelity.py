"""How closely a variant follows its teacher, where it will work and on general text, with 95% intervals.

In-domain: the teacher's greedy answers to the held-out test prompts of every domain (never used for training
or for choosing settings) are generated once by the reference bundle in its own runtime (llama.cpp on the
teacher's F16 GGUF: the fastest engine here) and cached under EDGEDISTILL_HOME/fidelity, keyed by the
reference model file's sha256, the prompts and the answer length. Every variant is then scored teacher-forced
on prompt + answer: KL(teacher || variant) and top-1 agreement over the answer positions only, per domain and
overall.

General text: the same measures over windows of the domains' plain texts (what export validation uses).

Intervals: a percentile bootstrap over whole prompts (or windows), since the positions of one answer are not
independent. Runtime-only (numpy, tokenizers, the bundle's runtime): the bench's workers import this.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
ANSWERS_FORMAT = "edgedistill-teacher-answers-v1"


def summarize(stats: list[dict], *, level: float = 0.95) -> dict:
    """Mean KL and top-1 agreement over all positions of `stats` (one dict per unit, from sequence_stats), each
    with its bootstrap interval over the units; the perplexity ratio beside them."""
    from edgedistill.stats import bootstrap_ratio

    n = [s["n"] for s in stats]
    kl, kl_lo, kl_hi = bootstrap_ratio([s["kl"] for s in stats], n, level=level)
    top1, t_lo, t_hi = bootstrap_ratio([s["agree"] for s in stats], n, level=level)
    n_next = sum(s["n_next"] for s in stats)
    out = {"mean_kl": kl, "mean_kl_ci": [kl_lo, kl_hi], "top1_agreement": top1, "top1_agreement_ci": [t_lo, t_hi],
           "positions": int(sum(n)), "units": len(stats)}
    if n_next:
        out["ppl_ratio"] = float(np.exp((sum(s["nll"] for s in stats) - sum(s["nll_ref"] for s in stats)) / n_next))
    return out


def by_domain(stats: list[dict], domains: list[str]) -> dict:
    """summarize() overall and per domain (domains[i] is the domain of stats[i])."""
    out = {"overall": summarize(stats), "by_domain": {}}
    for d in sorted(set(domains)):
        out["by_domain"][d] = summarize([s for s, dd in zip(stats, domains) if dd == d])
    return out


def share(flags: list[bool], *, level: float = 0.95) -> dict:
    """A share of items (graded score, answer agreement) with its bootstrap interval over the items."""
    from edgedistill.stats import bootstrap_ratio

    est, lo, hi = bootstrap_ratio([float(f) for f in flags], level=level)
    return {"value": est, "ci": [lo, hi], "items": len(flags)}


# --- the teacher's answers to the test prompts --------------------------------------------------------------

def test_prompts(data_dir: Path, per_domain: int | None = None) -> list:
    """The test split of every domain (prompts/test.jsonl), at most per_domain of each, in file order."""
    from edgedistill.data.load import load_prompts
    from edgedistill.data.stats import domains

    out = []
    for d in domains(Path(data_dir)):
        path = d / "prompts" / "test.jsonl"
        if path.is_file():
            got, _ = load_prompts(path)
            out += got[:per_domain] if per_domain else got
    return out


def answers_key(model_sha256: str, prompts: list, max_new_tokens: int) -> str:
    blob = json.dumps([ANSWERS_FORMAT, model_sha256, max_new_tokens, [(p.id, p.messages) for p in prompts]],
                      sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def teacher_answers(reference: Path, prompts: list, max_new_tokens: int, *, threads: int | None = None,
                    cache_dir: Path | None = None) -> list[dict]:
    """The reference bundle's greedy answers to `prompts` as token ids: [{id, domain, ids, start}] where ids is
    prompt + answer and start the first answer position. Read from the cache when the same reference, prompts
    and length were answered before; otherwise generated in the bundle's runtime and cached (temp file, then
    rename)."""
    from edgedistill.paths import ensure_writable_dir, home
    from edgedistill.runtime import SamplingParams, load
    from edgedistill.runtime.bundle import open_bundle

    manifest = open_bundle(reference, verify=False)
    sha = manifest["files"][manifest["model_file"]]["sha256"]
    key = answers_key(sha, prompts, max_new_tokens)
    folder = ensure_writable_dir(Path(cache_dir) if cache_dir else home() / "fidelity")
    path = folder / f"{key}.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("format") == ANSWERS_FORMAT and data.get("key") == key:
                log.info("teacher answers for %d test prompts read from %s", len(prompts), path)
                return data["sequences"]
        except (OSError, ValueError):
            pass  # a damaged cache entry is regenerated
    model = load(reference, threads=threads, verify=True, n_ctx=4096)
    seqs = []
    try:
        for p in prompts:
            ids = model.encode(model.render_chat(list(p.messages)))
            answer = list(model.generate_ids(ids, SamplingParams(max_tokens=max_new_tokens)))
            if not answer:
                continue  # nothing to score: the teacher ended its turn at once
            seqs.append({"id": p.id, "domain": p.domain, "ids": ids + answer, "start": len(ids)})
    finally:
        model.close()
    from edgedistill.paths import write_text_atomic

    write_text_atomic(path, json.dumps({"format": ANSWERS_FORMAT, "key": key, "reference_sha256": sha,
                                        "max_new_tokens": max_new_tokens, "sequences": seqs}))
    return seqs
