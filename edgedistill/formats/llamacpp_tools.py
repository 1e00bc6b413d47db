"""llama.cpp's own command-line tools (`llama-imatrix`, `llama-quantize`, `llama-bench`), built from the llama.cpp
sources of the installed llama-cpp-python (formats/llamacpp_source.py), so the files they read and write are that
version's.

llama-cpp-python ships the library only; the importance matrix needs llama.cpp's `llama-imatrix` and a quantizer
that reads its file (`llama-quantize --imatrix`), and the bench quotes `llama-bench`'s pp/tg figures beside its own.
They are built once, statically linked (the binaries can be copied), with cmake and ninja from the pinned set and
the same CPU flags as the runtime (formats/llamacpp_build.py), into `<cache>/llama.cpp/<version>-tools-<flags>`, and
copied into the environment (`<environment>/libexec/edgedistill/llama.cpp-<version>-<flags>`) by `make install`,
which runs `python -m edgedistill.formats.llamacpp_tools`. First found wins: the environment, then the cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from edgedistill import children, paths
from edgedistill.errors import EdgeDistillError
from edgedistill.formats.llamacpp_build import cpu_flags, flags_key
from edgedistill.formats.llamacpp_source import source_dir, version
from edgedistill.runinfo import available_cores

TOOLS = ("llama-imatrix", "llama-quantize", "llama-bench")
_TOOL_ARGS = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_COMMON=ON",
              "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
              "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_UI=OFF"]


def cmake_args(machine: str | None = None) -> list[str]:
    return [*_TOOL_ARGS, *cpu_flags(machine)]


def candidates() -> list[Path]:
    v, key = version(), flags_key(cmake_args())
    return [Path(sys.prefix) / "libexec" / "edgedistill" / f"llama.cpp-{v}-{key}",
            paths.home() / "llama.cpp" / f"{v}-tools-{key}"]


def _complete(folder: Path) -> bool:
    return all(os.access(folder / t, os.X_OK) for t in TOOLS)


def tool(name: str, *, build: bool = True) -> Path:
    """The path of llama.cpp tool `name`, built into the cache first if no copy is found."""
    if name not in TOOLS:
        raise ValueError(name)
    for folder in candidates():
        if _complete(folder):
            return folder / name
    if not build:
        raise EdgeDistillError(f"llama.cpp's {name} is not built; run `make install` or "
                               "`python -m edgedistill.formats.llamacpp_tools`")
    return build_into(candidates()[-1]) / name


def _cmake() -> list[str]:
    for exe in (Path(sys.executable).parent / "cmake", shutil.which("cmake")):
        if exe and Path(exe).is_file():
            return [str(exe)]
    raise EdgeDistillError("building llama.cpp's tools needs cmake; install edgedistill's [dev] extra or cmake")


def build_into(dest: Path, *, jobs: int | None = None) -> Path:
    """Configure and build the tools from the vendored sources; the binaries land in dest atomically."""
    src = source_dir()
    paths.ensure_writable_dir(dest.parent, "folder")
    with paths.scratch(dest.parent, f".{dest.name}.build-") as build:
        gen = ["-G", "Ninja"] if shutil.which("ninja", path=f"{Path(sys.executable).parent}{os.pathsep}"
                                                          f"{os.environ.get('PATH', '')}") else []
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        log_path = Path(build) / "build.log"
        with open(log_path, "w") as log_file:
            for cmd in ([*_cmake(), "-S", str(src), "-B", str(build), *gen, *cmake_args()],
                        [*_cmake(), "--build", str(build), "--target", *TOOLS, "-j", str(jobs or available_cores())]):
                with children.started(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env) as proc:
                    rc = proc.wait()
                if rc != 0:
                    tail = log_path.read_text(errors="replace").splitlines()[-3:]
                    raise EdgeDistillError(f"building llama.cpp's tools failed ({' '.join(cmd[:2])} ... returned "
                                           f"{rc}): {' | '.join(t.strip() for t in tail)}")
        with paths.atomic_dir(dest, "folder") as tmp:
            for t in TOOLS:
                built = next((p for p in [Path(build) / "bin" / t, *Path(build).rglob(t)] if p.is_file()), None)
                if built is None:
                    raise EdgeDistillError(f"building llama.cpp's tools made no {t}")
                shutil.copy2(built, tmp / t)
    return dest


def llama_bench(model: Path, *, prompt_tokens: int, new_tokens: int, threads: int, repeats: int = 3,
                timeout_s: float = 1800) -> dict:
    """llama.cpp's own benchmark of a GGUF file, the figures llama.cpp users quote: ppN (prompt processing, N tokens
    in one batch) and tgN (generating N tokens), tokens/s as mean and standard deviation over `repeats`, after its
    own warm-up. Raises EdgeDistillError when the tool is not built or fails."""
    import json

    exe = tool("llama-bench", build=False)
    cmd = [str(exe), "-m", str(model), "-p", str(prompt_tokens), "-n", str(new_tokens), "-t", str(threads),
           "-r", str(repeats), "-o", "json"]
    try:
        proc = children.run(cmd, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise EdgeDistillError(f"llama-bench on {model} took over {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        raise EdgeDistillError(f"llama-bench on {model} failed (exit {proc.returncode}): "
                               f"{lines[-1][:300] if lines else 'no message'}")
    rows = json.loads(proc.stdout)
    out: dict = {"command": " ".join(cmd[1:]), "threads": threads, "repeats": repeats}
    for r in rows:
        kind = "pp" if r["n_gen"] == 0 else "tg" if r["n_prompt"] == 0 else None
        if kind:
            n = r["n_prompt"] if kind == "pp" else r["n_gen"]
            out[f"{kind}{n}_tokens_per_s"] = r["avg_ts"]
            out[f"{kind}{n}_stddev"] = r["stddev_ts"]
        out.setdefault("cpu_info", r.get("cpu_info"))
        out.setdefault("build_commit", r.get("build_commit"))
        out.setdefault("model_type", r.get("model_type"))
    return out


def install_into_environment() -> Path:
    """make install: the tools into this environment, from the cache (building them there first if needed)."""
    env_dir, cache_dir = candidates()
    if _complete(env_dir):
        return env_dir
    if not _complete(cache_dir):
        build_into(cache_dir)
    with paths.atomic_dir(env_dir, "folder") as tmp:
        for t in TOOLS:
            shutil.copy2(cache_dir / t, tmp / t)
    return env_dir


def main() -> int:
    try:
        where = install_into_environment()
    except EdgeDistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"llama.cpp {version()} tools ({', '.join(TOOLS)}) in {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
