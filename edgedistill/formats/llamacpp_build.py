"""How llama.cpp is compiled, for the runtime (llama-cpp-python) and for the tools (formats/llamacpp_tools.py):
one set of CPU flags per architecture, so that one build runs on every machine of that architecture.

llama.cpp compiles with `-march=native` by default. A build made on an Intel Xeon with AMX then takes ggml's AMX
path for Q4/Q8 weights, which crashes (`ggml_backend_amx_mul_mat`, llama.cpp issue 20824) and has given wrong
results (llama.cpp PR 16315); and a wheel built on an AVX-512 machine dies with SIGILL on an AVX2-only one. Upstream's
release builds dispatch at run time between CPU variants (`GGML_BACKEND_DL` + `GGML_CPU_ALL_VARIANTS`), but
llama-cpp-python neither installs the variant libraries nor loads them (no `ggml_backend_load_all` binding), so
the build here is fixed per CPU tier instead:

- x86-64: AVX2 with FMA, F16C and BMI2 (Haswell, 2013, and every AMD Zen) always; AVX-512 (and its VBMI, VNNI and
  BF16 extensions) only where the build machine has it, since it measured up to 1.4x faster prefill
  (benchmarks/cpu_build.py); AMX never. So there are a few fixed x86 builds, not one per machine, and the flags name
  the cache folder: an AVX-512 wheel is never handed to an AVX2-only machine, and a runtime that finds itself on a
  CPU lacking what it was compiled for refuses in one line (runtime.gguf.check_cpu) instead of dying with SIGILL.
- every other architecture (arm64 phones and single-board computers): only `GGML_NATIVE=OFF`, so the compiler's
  baseline for the target (armv8-a on arm64) is used; no x86 flag is passed. docs/export.md says how to build on
  or for a device.

The wheel is built once per (version, flags) into `<cache>/llama.cpp/wheels/<version>-<flags hash>/` and installed
from there: pip's own wheel cache does not know the flags, so it could hand a wheel built with other flags (or on
another machine, with `-march=native`) to this one. `make install` runs `python -m edgedistill.formats.llamacpp_build
wheel`; this module needs nothing but the standard library, as it runs before edgedistill's dependencies exist.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "llama-cpp-python"
X86 = ("x86_64", "amd64", "i686", "i386", "x86")
# x86-64: the baseline every build has (AVX2 level), the AVX-512 tier a build gets where the machine has all of it
# (each extension on where present), and what no build turns on. Spelled out so that no default of llama.cpp's CMake
# (which differs between its versions) can switch one on. ggml's names; runinfo.GGML_CPU_FEATURES maps them to
# /proc/cpuinfo's.
_X86_BASE = ("SSE42", "AVX", "AVX2", "FMA", "F16C", "BMI2")
_AVX512_BASE = ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")  # what ggml's GGML_AVX512 compiles for
_AVX512_EXT = ("AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16")  # each on where /proc/cpuinfo has it
_X86_NEVER = ("AVX_VNNI", "AMX_TILE", "AMX_INT8", "AMX_BF16")  # AMX: the crashing path; AVX-VNNI: not measured
# What llama-cpp-python needs: the library only (its own tools, examples, tests, server and the multimodal helper
# would double the compile time).
LIBRARY_ONLY = ("-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_SERVER=OFF", "-DLLAVA_BUILD=OFF")


def cpu_flags(machine: str | None = None, features: list[str] | None = None) -> list[str]:
    """The CMake flags that fix the CPU features llama.cpp is compiled for on `machine` (platform.machine()) with
    `features` (/proc/cpuinfo's names; default: this CPU's). x86-64: AVX2 always; AVX-512 and its VBMI / VNNI / BF16
    extensions where the CPU has them (benchmarks/results/runtime/cpu_build.md: up to 1.4x prefill); AMX never.
    Other architectures: GGML_NATIVE=OFF only (the compiler's baseline)."""
    from edgedistill.runinfo import GGML_CPU_FEATURES, cpu_features  # stdlib only: runs before the dependencies

    machine = (machine or platform.machine()).lower()
    flags = ["-DGGML_NATIVE=OFF"]
    if machine not in X86:
        return flags
    have = set(cpu_features() if features is None else features)
    avx512 = set(_AVX512_BASE) <= have
    flags += [f"-DGGML_{f}=ON" for f in _X86_BASE]
    flags.append(f"-DGGML_AVX512={'ON' if avx512 else 'OFF'}")
    flags += [f"-DGGML_{k}={'ON' if avx512 and GGML_CPU_FEATURES[k] in have else 'OFF'}" for k in _AVX512_EXT]
    return flags + [f"-DGGML_{f}=OFF" for f in _X86_NEVER]


def flags_key(flags: list[str]) -> str:
    """A short name for a set of flags: builds with other flags never share a folder."""
    return hashlib.sha256("\n".join(flags).encode()).hexdigest()[:10]


def pinned_version(constraints: Path) -> str:
    """llama-cpp-python's version as pinned in constraints.txt."""
    for line in constraints.read_text().splitlines():
        m = re.fullmatch(r"\s*llama[-_]cpp[-_]python\s*==\s*([^\s#;]+).*", line, flags=re.IGNORECASE)
        if m:
            return m.group(1)
    raise SystemExit(f"error: {constraints} pins no llama-cpp-python version; add llama_cpp_python==X.Y.Z")


def cache_root() -> Path:
    # The same root as edgedistill.paths.home(), written out because this runs before edgedistill is installed.
    explicit = os.environ.get("EDGEDISTILL_HOME")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "edgedistill"


def wheel_dir(version: str, flags: list[str]) -> Path:
    return cache_root() / "llama.cpp" / "wheels" / f"{version}-{platform.machine().lower()}-{flags_key(flags)}"


def build_wheel(constraints: Path, *, log: Path | None = None) -> Path:
    """The llama-cpp-python wheel built with this machine architecture's flags: from the cache, or compiled now
    (with a progress line) and put there atomically."""
    version = pinned_version(constraints)
    flags = [*LIBRARY_ONLY, *cpu_flags()]
    dest = wheel_dir(version, flags)
    found = sorted(dest.glob("*.whl"))
    if found:
        return found[0]
    log = log or dest.parent / f"{dest.name}.build.log"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.build-") as tmp:
        cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "-v", "--no-deps",
               "--no-cache-dir", "--no-binary", PACKAGE, "-w", tmp, f"{PACKAGE}=={version}"]
        env = {**os.environ, "CMAKE_ARGS": " ".join(flags), "FORCE_CMAKE": "1"}
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            out.write(f"CMAKE_ARGS={env['CMAKE_ARGS']}\n")
            out.flush()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                    stdin=subprocess.DEVNULL)
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                step = re.match(r"\s*\[(\d+/\d+)\]", line)
                if step and sys.stderr.isatty():
                    print(f"\r  llama.cpp compile step {step.group(1)} ", end="", file=sys.stderr, flush=True)
            rc = proc.wait()
        if sys.stderr.isatty():
            print(file=sys.stderr)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if rc != 0 or not wheels:
            tail = log.read_text(errors="replace").splitlines()[-40:]
            print("\n".join(tail), file=sys.stderr)
            raise SystemExit(f"error: building {PACKAGE} {version} failed (full log: {log})")
        staged = Path(tmp) / "final"
        staged.mkdir()
        wheels[0].rename(staged / wheels[0].name)
        (staged / "CMAKE_ARGS").write_text(" ".join(flags) + "\n")
        try:
            staged.rename(dest)
        except OSError:  # another install finished the same wheel first
            pass
    return sorted(dest.glob("*.whl"))[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("flags", help="print the CPU flags for this machine's architecture")
    w = sub.add_parser("wheel", help="print the path of the llama-cpp-python wheel, building it first if needed")
    w.add_argument("-c", "--constraints", type=Path, default=Path("constraints.txt"))
    w.add_argument("--log", type=Path, default=None, help="the compiler's log [default: beside the wheel's folder]")
    args = ap.parse_args(argv)
    if args.cmd == "flags":
        print(" ".join(cpu_flags()))
    else:
        print(build_wheel(args.constraints, log=args.log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
