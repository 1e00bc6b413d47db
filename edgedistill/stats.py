"""Small statistics the benchmarks and reports share: can a difference be told from chance, and how sure is
a measured figure (bootstrap intervals over prompts, chunks or items)?"""

from __future__ import annotations


def fisher_exact(a: int, n1: int, b: int, n2: int) -> float:
    """Two-sided p-value of Fisher's exact test: a of n1 correct against b of n2 correct."""
    from math import comb

    k, n = a + b, n1 + n2

    def prob(x):
        return comb(n1, x) * comb(n2, k - x) / comb(n, k)

    seen = prob(a)
    tables = [prob(x) for x in range(max(0, k - n2), min(k, n1) + 1)]
    return min(1.0, sum(q for q in tables if q <= seen * (1 + 1e-9)))


def graded_comparison(results: dict, best: str) -> dict:
    """Per size: graded items right for cross-entropy and for the best objective, and whether the graded sets can
    tell the two apart at all (Fisher's exact test, p < 0.05)."""
    out = {}
    for size in sorted({label.split("/")[0] for label in results}):
        ce, kd = results.get(f"{size}/ce", {}).get("graded"), results.get(f"{size}/{best}", {}).get("graded")
        if not (ce and kd and "correct" in ce and "correct" in kd):
            continue
        p = fisher_exact(kd["correct"], kd["items"], ce["correct"], ce["items"])
        out[size] = {"items": ce["items"], "ce_correct": ce["correct"], "best_correct": kd["correct"],
                     "best_minus_ce": kd["correct"] - ce["correct"], "fisher_p": p, "resolved": p < 0.05}
    return out


def bootstrap_ratio(numerators, denominators=None, *, level: float = 0.95, resamples: int = 2000,
                    seed: int = 0) -> tuple[float, float, float]:
    """Σ numerators / Σ denominators and its percentile bootstrap interval, resampling whole units (prompts,
    chunks, items) with replacement: the positions of one prompt are not independent, the prompts are.

    Without denominators each unit counts 1 (a plain mean). Returns (estimate, low, high); one unit gives an
    interval of zero width, said so by the caller (`units` beside it)."""
    import numpy as np

    a = np.asarray(numerators, dtype=np.float64)
    n = np.ones_like(a) if denominators is None else np.asarray(denominators, dtype=np.float64)
    if a.size == 0 or n.sum() <= 0:
        raise ValueError("bootstrap_ratio needs at least one unit with a positive denominator")
    est = float(a.sum() / n.sum())
    if a.size == 1:
        return est, est, est
    idx = np.random.default_rng(seed).integers(0, a.size, size=(resamples, a.size))
    den = n[idx].sum(1)
    ratios = a[idx].sum(1) / np.where(den > 0, den, np.nan)
    tail = 100 * (1 - level) / 2
    lo, hi = np.nanpercentile(ratios, [tail, 100 - tail])
    return est, float(lo), float(hi)
