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
