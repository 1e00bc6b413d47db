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


AVX2_CPU = ["sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"]  # AMD EPYC (Zen 2/3), Intel Haswell to Comet Lake
AMX_CPU = AVX2_CPU + ["avx512f", "avx512cd", "avx512dq", "avx512bw", "avx512vl", "avx512vbmi", "avx512_vnni",
                      "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"]  # Intel Xeon, Sapphire Rapids on


@pytest.mark.parametrize("machine", ["x86_64", "AMD64"])
def test_x86_builds_avx2_everywhere_avx512_where_present_and_never_amx(machine):
    for features in (AVX2_CPU, AMX_CPU, AVX2_CPU + ["avx512f"]):  # the last: AVX-512 incomplete, so not used
        flags = lb.cpu_flags(machine, features)
        assert _flag(flags, "NATIVE") == "OFF"  # no -march=native: the build must run on the next machine
        for on in ("AVX", "AVX2", "FMA", "F16C", "BMI2"):
            assert _flag(flags, on) == "ON", on
        for off in ("AMX_TILE", "AMX_INT8", "AMX_BF16", "AVX_VNNI"):
            assert _flag(flags, off) == "OFF", off  # AMX: the crashing path
    assert _flag(lb.cpu_flags(machine, AVX2_CPU), "AVX512") == "OFF"  # SIGILL on AVX2-only CPUs otherwise
    assert _flag(lb.cpu_flags(machine, AVX2_CPU + ["avx512f"]), "AVX512") == "OFF"
    amx = lb.cpu_flags(machine, AMX_CPU)
    assert [_flag(amx, f) for f in ("AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16")] == ["ON"] * 4
    no_vbmi = lb.cpu_flags(machine, [f for f in AMX_CPU if f != "avx512vbmi"])  # Cascade Lake: VNNI, no VBMI
    assert _flag(no_vbmi, "AVX512") == "ON" and _flag(no_vbmi, "AVX512_VBMI") == "OFF"


@pytest.mark.parametrize("machine", ["aarch64", "arm64", "riscv64"])
def test_other_architectures_get_no_x86_flag(machine):
    flags = lb.cpu_flags(machine, AMX_CPU)  # whatever the features, none of the x86 flags
    assert flags == ["-DGGML_NATIVE=OFF"]
    assert not any(f"GGML_{name}" in f for f in flags for name in X86_ONLY)


def test_builds_with_other_flags_never_share_a_cache_folder(monkeypatch):
    x86, arm = lb.cpu_flags("x86_64", AVX2_CPU), lb.cpu_flags("aarch64")
    assert len({lb.flags_key(x86), lb.flags_key(arm), lb.flags_key(lb.cpu_flags("x86_64", AMX_CPU))}) == 3
    assert lb.wheel_dir("1.0", x86) != lb.wheel_dir("1.0", arm)
    assert lb.wheel_dir("1.0", x86) != lb.wheel_dir("1.1", x86)
    # the tools are built with the runtime's CPU flags, and their folder is named by them
    assert llamacpp_tools.cmake_args()[-len(lb.cpu_flags()):] == lb.cpu_flags()
    assert all(lb.flags_key(llamacpp_tools.cmake_args()) in str(p) for p in llamacpp_tools.candidates())


def test_the_pinned_version_is_read_from_the_constraints(tmp_path):
    from tests.conftest import REPO

    from importlib import metadata

    assert lb.pinned_version(REPO / "constraints.txt") == metadata.version("llama_cpp_python")
    (tmp_path / "c.txt").write_text("numpy==2.0\n")
    with pytest.raises(SystemExit, match="pins no llama-cpp-python"):
        lb.pinned_version(tmp_path / "c.txt")


def test_the_installed_runtime_uses_what_this_cpu_has_and_never_amx():
    """llama.cpp's own system-info line: the features compiled in. On x86 AVX2 is in, AVX-512 as far as this CPU has
    it, AMX never; nothing this CPU lacks."""
    from edgedistill.runinfo import cpu_features
    from edgedistill.runtime.gguf import missing_features, system_info

    info = system_info()["system_info"]
    assert "AMX_INT8 = 1" not in info
    assert missing_features(info, cpu_features()) == []
    if platform.machine().lower() in lb.X86:
        assert "AVX2 = 1" in info and "FMA = 1" in info
        assert ("AVX512 = 1" in info) == ("avx512f" in cpu_features() and "avx512bw" in cpu_features())


def test_a_build_from_another_machine_is_refused_in_one_line_not_killed():
    from edgedistill.runtime import BundleError
    from edgedistill.runtime.gguf import check_cpu

    avx512_build = ("CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 1 | AVX512_VNNI = 1 | "
                    "REPACK = 1")
    with pytest.raises(BundleError, match="uses AVX512, AVX512_VNNI, which this CPU lacks"):
        check_cpu(avx512_build, AVX2_CPU)
    check_cpu(avx512_build, AMX_CPU)
    check_cpu("CPU : AVX2 = 1 | FMA = 1 | F16C = 1", AVX2_CPU)
    check_cpu("CPU : NEON = 1 | ARM_FMA = 1 | DOTPROD = 1", ["asimd", "asimddp"])  # arm64: no x86 names to miss
    check_cpu(avx512_build, [])  # features unreadable: let it try
