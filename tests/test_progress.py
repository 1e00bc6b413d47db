"""edgedistill.progress.LineProgress: progress as plain lines where rich would draw nothing (CI, a log file)."""

from __future__ import annotations

import io

from edgedistill.progress import LineProgress


def test_lines_every_interval_and_at_the_end_with_counts_rates_and_fields():
    now = [0.0]
    out = io.StringIO()
    with LineProgress(stream=out, every_s=10, clock=lambda: now[0]) as p:
        task = p.add_task("distilling", total=4, loss="-", tps=0.0)
        for step in range(1, 5):
            now[0] += 6
            p.update(task, completed=step, loss=f"{1 / step:.2f}", tps=100.0 * step)
    lines = out.getvalue().splitlines()
    # step 2 (12 s after the start) is the first line; step 4 finishes the task; nothing is printed twice
    assert len(lines) == 2, lines
    assert "distilling: 2/4, 0.17/s, loss 0.50, tps 200" in lines[0] and "12s elapsed" in lines[0]
    assert "distilling: 4/4" in lines[1] and "loss 0.25" in lines[1]


def test_a_task_without_total_still_reports_on_exit():
    out = io.StringIO()
    with LineProgress(stream=out, every_s=1e9) as p:
        t = p.add_task("teacher answers", total=None)
        p.advance(t, 3)
    assert "teacher answers: 3" in out.getvalue()
