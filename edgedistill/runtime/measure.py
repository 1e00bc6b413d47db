"""Timing of one generation through a loaded bundle: time to first token, prefill and decode speed, per-token
latency. Every timed generation is cold: the whole prompt is computed (no cached prefix), as llama-bench's ppN.
Runtime-only (numpy-free even), so the same measurement runs on a device that has only the runtime extra
installed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from edgedistill.runtime import SamplingParams, LoadedModel


@dataclass(frozen=True)
class GenerationTiming:
    prompt_tokens: int
    new_tokens: int
    ttft_s: float  # prompt in, first new token out (prefill + first sample)
    prefill_tokens_per_s: float
    decode_tokens_per_s: float  # tokens after the first, over the time after the first
    token_latencies_s: tuple[float, ...]  # gap before each token after the first
    prompt_tokens_computed: int | None = None  # as the backend counts them: all of the prompt in a cold run

    @classmethod
    def from_stamps(cls, prompt_tokens: int, start: float, stamps: Sequence[float],
                    computed: int | None = None) -> GenerationTiming:
        """From the clock at the call and at each new token (any engine that can be timed token by token)."""
        if len(stamps) < 2:
            raise RuntimeError(f"{len(stamps)} tokens were produced; timing decoding needs at least 2")
        ttft = stamps[0] - start
        gaps = tuple(b - a for a, b in zip(stamps, stamps[1:]))
        return cls(prompt_tokens=prompt_tokens, new_tokens=len(stamps), ttft_s=ttft,
                   prefill_tokens_per_s=prompt_tokens / ttft,
                   decode_tokens_per_s=len(gaps) / (stamps[-1] - stamps[0]), token_latencies_s=gaps,
                   prompt_tokens_computed=computed)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["token_latencies_s"] = list(self.token_latencies_s)
        return d


def time_generation(model: LoadedModel, prompt_ids: Sequence[int], new_tokens: int) -> GenerationTiming:
    """Greedy generation of exactly `new_tokens` tokens (end-of-turn ignored) after `prompt_ids`, cold: the model
    forgets any cached prompt first, so the time to first token covers computing the whole prompt. A backend that
    says it computed fewer prompt tokens than the prompt holds fails the measurement instead of flattering it."""
    if new_tokens < 2:
        raise ValueError("new_tokens must be at least 2 to time decoding")
    cfg = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
    model.reset()
    stamps = []
    start = time.perf_counter()
    for _ in model.generate_ids(list(prompt_ids), cfg):
        stamps.append(time.perf_counter())
    computed = model.prompt_tokens_computed()
    if computed is not None and computed < len(prompt_ids):
        raise RuntimeError(f"the timed run computed {computed} of its {len(prompt_ids)} prompt tokens (the rest came "
                           "from a cache): its time to first token would not be cold")
    return GenerationTiming.from_stamps(len(prompt_ids), start, stamps, computed)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    xs = sorted(values)
    if not xs:
        raise ValueError("no values")
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(runs: Sequence[GenerationTiming]) -> dict:
    """Medians over repeats; per-token percentiles over every token of every repeat."""
    gaps = [g for r in runs for g in r.token_latencies_s]
    return {
        "repeats": len(runs),
        "prompt_tokens": runs[0].prompt_tokens,
        "prompt_tokens_computed": runs[0].prompt_tokens_computed,
        "cold": True,  # every timed run computed its whole prompt (time_generation)
        "new_tokens": runs[0].new_tokens,
        "ttft_s": statistics.median(r.ttft_s for r in runs),
        "prefill_tokens_per_s": statistics.median(r.prefill_tokens_per_s for r in runs),
        "decode_tokens_per_s": statistics.median(r.decode_tokens_per_s for r in runs),
        "token_latency_p50_s": percentile(gaps, 50),
        "token_latency_p95_s": percentile(gaps, 95),
        "decode_tokens_per_s_all": [r.decode_tokens_per_s for r in runs],
    }
