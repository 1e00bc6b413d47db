"""bench: every bundle through its real runtime, in its own process, under a device profile's limits.

For each bundle: a speed process (load time, peak RSS, time to first token, prefill and decode tokens/s,
per-token p50/p95), killed if its resident memory goes over the profile's budget; then a quality process:
fidelity to the teacher's reference bundle in-domain (its answers to the test prompts, teacher-forced) and on
general text, and greedy answers to graded items (score, and agreement with the teacher's answers), every figure
with a 95% bootstrap interval (bench.fidelity). Budgets and floors are checked with their margins (a floor whose
interval straddles it is "uncertain", not passed), and `choose` picks, among the variants that meet every one,
the first by the profile's objective (bench.objectives). The teacher's own quantized files are candidates like
the students', and the verdict says when quantizing the teacher is enough.

Runtime-only: numpy, tokenizers, onnxruntime / llama-cpp-python, psutil (matplotlib for the charts if present).

The rooms:
    settings.py   BenchSettings, the report's schema version
    runner.py     bench(): the bundles through their workers, quality against the reference, the report
    supervise.py  one bundle in one process (the memory watch) and the bandwidth probe
    worker.py     what runs in that process: speed, or quality
    fidelity.py   the in-domain fidelity set and its bootstrap intervals
    rows.py       the typed rows (Row) and budget checks (Check) the others pass on; bench.json holds them
    budgets.py    budgets and floors with margins, the choice by objective, Pareto front, verdict
    report.py     bench.json, bench.md, charts
"""


from edgedistill.bench.budgets import check_budgets, choose, pareto, verdict
from edgedistill.bench.report import charts, markdown, write_report
from edgedistill.bench.rows import Check, Row
from edgedistill.bench.runner import bench
from edgedistill.bench.settings import OVER_MEMORY, SCHEMA_VERSION, BenchSettings
from edgedistill.bench.supervise import measure_bandwidth, run_worker

__all__ = ["OVER_MEMORY", "SCHEMA_VERSION", "BenchSettings", "Check", "Row", "bench", "charts", "check_budgets", "choose", "markdown",
           "measure_bandwidth", "pareto", "run_worker", "verdict", "write_report"]
