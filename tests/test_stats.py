"""edgedistill.stats: Fisher's exact test behind the graded comparison of cross-entropy and the best
objective (does the graded eval tell the two students apart at all?)."""

from __future__ import annotations

import pytest

from edgedistill import stats as bench


@pytest.mark.parametrize("a, n1, b, n2, p", [
    (1, 12, 9, 12, 0.002759),  # the textbook example (1 of 12 against 9 of 12)
    (0, 20, 10, 20, 2 * 184756 / 847660528),  # only the two extreme tables: 2 * C(20,10) / C(40,10)
    (3, 10, 8, 10, 0.069779),
])
def test_fisher_exact_matches_known_values(a, n1, b, n2, p):
    assert bench.fisher_exact(a, n1, b, n2) == pytest.approx(p, rel=1e-3)
    assert bench.fisher_exact(b, n2, a, n1) == pytest.approx(p, rel=1e-3)


def test_graded_comparison_per_size():
    runs = {"10L/ce": {"graded": {"items": 20, "correct": 0}},
            "10L/forward_kl+ce": {"graded": {"items": 20, "correct": 10}},
            "10L-hw/ce": {"graded": {"items": 359, "correct": 12}},
            "10L-hw/forward_kl+ce": {"graded": {"items": 359, "correct": 10}},
            "10L-hw/jsd": {"validation": {}}}
    got = bench.graded_comparison(runs, "forward_kl+ce")
    assert got["10L"]["best_minus_ce"] == 10 and got["10L"]["resolved"]
    assert got["10L-hw"]["best_minus_ce"] == -2 and not got["10L-hw"]["resolved"]
    assert got["10L-hw"]["fisher_p"] == pytest.approx(bench.fisher_exact(10, 359, 12, 359))


def test_bootstrap_interval_covers_a_known_share_about_95_percent_of_the_time():
    """Items right with a known probability: the 95% interval over 400 items covers the true share in about 95%
    of 200 repeated draws, and is about as wide as the normal approximation says."""
    import numpy as np

    from edgedistill.stats import bootstrap_ratio

    rng = np.random.default_rng(1)
    p, n, covered, widths = 0.3, 400, 0, []
    for i in range(200):
        est, lo, hi = bootstrap_ratio(rng.random(n) < p, resamples=1000, seed=i)
        assert lo <= est <= hi
        covered += lo <= p <= hi
        widths.append(hi - lo)
    assert 0.90 <= covered / 200 <= 0.99
    assert np.mean(widths) == pytest.approx(2 * 1.96 * (p * (1 - p) / n) ** 0.5, rel=0.1)


def test_bootstrap_ratio_resamples_whole_units():
    """A ratio over prompts of different lengths: the estimate is Σ a / Σ n (not the mean of ratios); one unit
    gives a zero-width interval; identical units give a zero-width one too."""
    from edgedistill.stats import bootstrap_ratio

    est, lo, hi = bootstrap_ratio([1.0, 30.0], [10, 100])
    assert est == pytest.approx(31 / 110) and lo <= est <= hi and lo >= 0.1 - 1e-12 and hi <= 0.3 + 1e-12
    assert bootstrap_ratio([2.0], [4]) == (0.5, 0.5, 0.5)
    assert bootstrap_ratio([1.0, 1.0, 1.0], [2, 2, 2]) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError):
        bootstrap_ratio([], [])
