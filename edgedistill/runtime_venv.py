"""A virtual environment holding edgedistill's runtime extra only, installed as a device installs it: from an install
folder (edgedistill's own wheel, requirements.txt, constraints.txt; what a device kit carries), no checkout needed
on the device, no torch, no transformers (checked). llama-cpp-python is built by formats/llamacpp_build.py with its
fixed CPU flags (cached; never -march=native). Used by `make example`, the device-kit tests and
benchmarks/device_kit.py.

    python -m edgedistill.runtime_venv FOLDER
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from edgedistill.errors import EdgeDistillError

SOURCE = Path(__file__).resolve().parent.parent  # the checkout (pyproject.toml, constraints.txt)
HEAVY = ("torch", "transformers")


def install_folder(folder: Path) -> Path:
    """What a device needs to install the runtime without a checkout, written into `folder`: edgedistill's own wheel
    (built from this checkout: no package of that name is taken from a registry, where it could be someone else's),
    requirements.txt (the runtime extra's other packages but llama-cpp-python, which is built for the device's CPU
    level: formats/llamacpp_build.py ships in the wheel) and constraints.txt (every version pinned)."""
    import tomllib

    if not (SOURCE / "pyproject.toml").is_file():
        raise EdgeDistillError("the runtime's install folder is made from a checkout of edgedistill (pyproject.toml "
                               "not found)")
    import tempfile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgedistill-wheel-") as tmp:  # built from a copy: the checkout untouched
        src = Path(tmp) / "src"
        shutil.copytree(SOURCE / "edgedistill", src / "edgedistill",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # the profiles link copied as files
        for f in ("pyproject.toml", "README.md"):
            shutil.copy2(SOURCE / f, src / f)
        done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "--quiet",
                               "--no-deps", "--no-build-isolation", "-w", str(folder), str(src)], capture_output=True,
                              text=True)
        if done.returncode:
            raise EdgeDistillError(f"building edgedistill's wheel failed: {done.stderr.strip().splitlines()[-1:]}")
    project = tomllib.loads((SOURCE / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["runtime"]]
    keep = [r for r in wanted if not r.lower().startswith(("llama-cpp-python", "llama_cpp_python"))]
    (folder / "requirements.txt").write_text("\n".join(keep) + "\n")
    shutil.copy2(SOURCE / "constraints.txt", folder / "constraints.txt")
    return folder


def make(venv: Path, env: dict | None = None, install: Path | None = None) -> Path:
    """Create `venv` afresh and install the runtime into it the way a device does (RUN.txt of a device kit): from
    an install folder (`install`, else one made now), llama-cpp-python built with the fixed CPU flags (cached).
    Returns its bin folder."""
    venv = Path(venv)
    env = dict(env if env is not None else os.environ)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if install is None:
        install = install_folder(venv.parent / f"{venv.name}-install")
    install = Path(install)
    constraints = str(install / "constraints.txt")
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
    (own,) = install.glob("edgedistill-*.whl")
    subprocess.run([*pip, "--no-deps", str(own)], check=True, env=env)
    wheel = subprocess.run([python, "-m", "edgedistill.formats.llamacpp_build", "wheel", "-c", constraints,
                            "--log", str(venv / "llama-build.log")], check=True, capture_output=True, text=True,
                           env=env).stdout.strip().splitlines()[-1]
    subprocess.run([*pip, wheel, "-c", constraints], check=True, env=env)  # with its own dependencies (diskcache)
    subprocess.run([*pip, "-r", str(install / "requirements.txt"), "-c", constraints], check=True, env=env)
    for heavy in HEAVY:
        if subprocess.run([python, "-c", f"import {heavy}"], capture_output=True).returncode == 0:
            raise EdgeDistillError(f"{heavy} is importable in the runtime-only venv {venv}: the runtime extra must "
                                   "not pull it")
    return venv / "bin"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m edgedistill.runtime_venv FOLDER")
    print(make(Path(sys.argv[1])))
