"""How llama.cpp is compiled: one fixed set of CPU flags per architecture (never -march=native, never AMX), the same
for the runtime and the tools, and what the installed runtime reports it uses."""

from __future__ import annotations

import platform

import pytest

from edgedistill.formats import llamacpp_build as lb
from edgedistill.formats import llamacpp_tools

X86_ONLY = ("SSE42", "AVX", "AVX2", "FMA", "F16C", "BMI2", "AVX_VNNI", "AVX512", "AMX")


def _flag(flags: list[str], name: str) -> str | None:
    values = [f.split("=", 1)[1] for f in flags if f.split("=", 1)[0] == f"-DGGML_{name}"]
    assert len(values) <= 1, f"{name} set twice: {flags}"
    return values[0] if values else None


@pytest.mark.parametrize("machine", ["x86_64", "AMD64"])
def test_x86_builds_for_avx2_and_switches_off_everything_above_it(machine):
    flags = lb.cpu_flags(machine)
    assert _flag(flags, "NATIVE") == "OFF"  # no -march=native: the build must run on the next machine
    for on in ("AVX", "AVX2", "FMA", "F16C", "BMI2"):
        assert _flag(flags, on) == "ON", on
    for off in ("AVX512", "AVX512_VNNI", "AVX512_BF16", "AMX_TILE", "AMX_INT8", "AMX_BF16"):
        assert _flag(flags, off) == "OFF", off  # AMX: the crashing path; AVX-512: SIGILL on AVX2-only CPUs


@pytest.mark.parametrize("machine", ["aarch64", "arm64", "riscv64"])
def test_other_architectures_get_no_x86_flag(machine):
    flags = lb.cpu_flags(machine)
    assert flags == ["-DGGML_NATIVE=OFF"]
    assert not any(f"GGML_{name}" in f for f in flags for name in X86_ONLY)


def test_builds_with_other_flags_never_share_a_cache_folder(monkeypatch):
    x86, arm = lb.cpu_flags("x86_64"), lb.cpu_flags("aarch64")
    assert lb.flags_key(x86) != lb.flags_key(arm)
    assert lb.wheel_dir("1.0", x86) != lb.wheel_dir("1.0", arm)
    assert lb.wheel_dir("1.0", x86) != lb.wheel_dir("1.1", x86)
    # the tools are built with the runtime's CPU flags, and their folder is named by them
    assert llamacpp_tools.cmake_args("x86_64")[-len(x86):] == x86
    assert all(lb.flags_key(llamacpp_tools.cmake_args()) in str(p) for p in llamacpp_tools.candidates())


def test_the_pinned_version_is_read_from_the_constraints(tmp_path):
    from tests.conftest import REPO

    from importlib import metadata

    assert lb.pinned_version(REPO / "constraints.txt") == metadata.version("llama_cpp_python")
    (tmp_path / "c.txt").write_text("numpy==2.0\n")
    with pytest.raises(SystemExit, match="pins no llama-cpp-python"):
        lb.pinned_version(tmp_path / "c.txt")


def test_the_installed_runtime_uses_the_portable_features():
    """llama.cpp's own system-info line: the features compiled in. On x86 AVX2 is in, AVX-512 and AMX are not."""
    from edgedistill.runtime.gguf import system_info

    info = system_info()["system_info"]
    assert "AMX_INT8 = 1" not in info and "AVX512 = 1" not in info
    if platform.machine().lower() in lb.X86:
        assert "AVX2 = 1" in info and "FMA = 1" in info


def test_an_x86_cpu_below_the_baseline_is_refused_in_one_line_not_killed():
    from edgedistill.runtime import BundleError
    from edgedistill.runtime.gguf import check_cpu

    with pytest.raises(BundleError, match="no AVX2/FMA/F16C"):
        check_cpu(["sse4_2", "avx"], "x86_64")
    check_cpu(["sse4_2", "avx", "avx2", "fma", "f16c"], "x86_64")
    check_cpu(["asimd"], "aarch64")  # arm64: the compiler's baseline, nothing to check
    check_cpu([], "x86_64")  # flags unreadable: let it try
