"""One bundle in one process: the worker started, its memory watched (killed over the budget), its result read;
and the machine's memory bandwidth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from edgedistill import children
from edgedistill.bench.settings import OVER_MEMORY


def measure_bandwidth(size_bytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """This machine's memory bandwidth in bytes/s, as numpy sees it: the best of `repeats` copies of a
    `size_bytes` array (bytes read + bytes written, one thread; a lower bound of what decoding can use)."""
    import numpy as np

    src = np.ones(size_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best


def run_worker(job: dict, work: Path, memory_budget: int | None, timeout_s: float, poll_s: float = 0.01) -> dict:
    """Run edgedistill.bench.worker on `job` in a child process; kill it if its RSS goes over memory_budget.

    Returns {"status": "ok" | OVER_MEMORY | "failed" | "timed out", "result": {...}, "polled_peak_rss_bytes",
    "message"}."""
    import psutil

    work.mkdir(parents=True, exist_ok=True)
    name = f"{job['phase']}-{abs(hash(job['bundle'])) % 10**8}"
    job = {**job, "out": str(work / f"{name}.json")}
    (work / f"{name}.job.json").write_text(json.dumps(job))
    env = {**os.environ, "OMP_NUM_THREADS": str(job.get("threads") or 1)}
    peak, status, start = 0, None, time.monotonic()
    with open(work / f"{name}.log", "w") as stderr, children.started(
            [sys.executable, "-m", "edgedistill.bench.worker", str(work / f"{name}.job.json")],
            stdout=subprocess.DEVNULL, stderr=stderr, env=env) as proc:
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = ps.memory_info().rss
            except psutil.Error:
                break
            peak = max(peak, rss)
            if memory_budget is not None and rss > memory_budget:
                proc.kill()
                status = OVER_MEMORY
                break
            if time.monotonic() - start > timeout_s:
                proc.kill()
                status = "timed out"
                break
            time.sleep(poll_s)
        proc.wait()
    out = Path(job["out"])
    if status is None:
        status = "ok" if proc.returncode == 0 and out.exists() else "failed"
    result = json.loads(out.read_text()) if status == "ok" else {}
    message = ""
    if status == "failed":
        lines = [ln for ln in (work / f"{name}.log").read_text(errors="replace").splitlines() if ln.strip()]
        message = lines[-1] if lines else f"exit code {proc.returncode}"
    elif status == OVER_MEMORY:
        message = f"resident memory reached {peak / 1e6:.0f} MB, over the {memory_budget / 1e6:.0f} MB budget"
    return {"status": status, "result": result, "polled_peak_rss_bytes": peak, "message": message}
