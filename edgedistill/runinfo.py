"""Where and how a result was made: recorded beside every number we write (benchmarks, eval reports)."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path

from edgedistill import __version__


# The CPU features that decide which kernels llama.cpp, onnxruntime and torch can take (x86 and arm64 names as
# /proc/cpuinfo spells them).
CPU_FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx_vnni", "avx512f", "avx512cd", "avx512dq",
                "avx512bw", "avx512vl", "avx512vbmi", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
                "asimd", "asimddp",
                "fphp", "asimdhp", "i8mm", "bf16", "sve", "sve2", "sme")


# ggml's names of the x86 instruction sets (its CMake options and its system-info line) -> /proc/cpuinfo's
GGML_CPU_FEATURES = {"AVX": "avx", "AVX2": "avx2", "FMA": "fma", "F16C": "f16c", "BMI2": "bmi2",
                     "AVX512": "avx512f", "AVX512_VBMI": "avx512vbmi", "AVX512_VNNI": "avx512_vnni",
                     "AVX512_BF16": "avx512_bf16", "AVX_VNNI": "avx_vnni", "AMX_INT8": "amx_int8"}


def cpu_features(cpuinfo: str | None = None) -> list[str]:
    """Which of CPU_FEATURES this CPU has (from /proc/cpuinfo's flags / Features line; empty where unreadable)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    have: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            have.update(value.split())
    return [f for f in CPU_FEATURES if f in have]


def machine() -> dict:
    import psutil

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_features": cpu_features(),
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "cores_available": available_cores(),
        "ram_bytes": psutil.virtual_memory().total,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def available_cores() -> int:
    """The cores this process may run on (a container's cpuset or taskset's limit), else the machine's: the default
    thread count of every runtime, tool and engine we start, so a job pinned to some cores keeps to them."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def peak_rss_bytes() -> int:
    """This process's resident high-water mark. VmHWM belongs to the address space, which exec replaces;
    ru_maxrss would carry the parent's peak over through fork and exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def run_record() -> dict:
    """The command line, time, tool version and machine of this process."""
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]]
    return {
        "command": shlex.join(argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "edgedistill_version": __version__,
        "machine": machine(),
    }


def write_result(out: Path, report: dict) -> None:
    """Write a result as indented JSON, whole or not at all (a temp file beside it, then a rename)."""
    import json

    from edgedistill.paths import write_text_atomic

    write_text_atomic(Path(out), json.dumps(report, indent=2) + "\n")


def write_report(stem: Path, report: dict, markdown: str) -> Path:
    """A benchmark's result as STEM.json (write_result) and its table as STEM.md, the folder made first. Returns the
    .md path."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_result(stem.with_suffix(".json"), report)
    from edgedistill.paths import write_text_atomic

    write_text_atomic(stem.with_suffix(".md"), markdown)
    return stem.with_suffix(".md")
