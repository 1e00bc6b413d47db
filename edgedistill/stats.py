"""Small statistics the benchmarks and reports share: can a difference in items right be told from chance?"""

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
