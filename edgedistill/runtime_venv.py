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


def _wheels(folder: Path, requirements: Path, constraints: Path, env: dict | None = None) -> None:
    """Every wheel the runtime installs from, for this machine's platform, into folder/wheels: llama-cpp-python as
    built here (formats/llamacpp_build.py: the fixed CPU level of this machine) and the pinned rest with its
    dependencies, downloaded once per machine and set of pins (cached under EDGEDISTILL_HOME/runtime-wheels)."""
    import hashlib

    from edgedistill.paths import atomic_dir, ensure_writable_dir, home

    llama = Path(subprocess.run([sys.executable, "-m", "edgedistill.formats.llamacpp_build", "wheel", "-c",
                                 str(constraints)], check=True, capture_output=True, text=True,
                                env=env).stdout.strip().splitlines()[-1])
    key = hashlib.sha256(requirements.read_bytes() + constraints.read_bytes() + llama.name.encode()
                         + str(llama.parent.name).encode()).hexdigest()[:16]
    cache = ensure_writable_dir(home() / "runtime-wheels") / key
    if not cache.is_dir():
        with atomic_dir(cache, "runtime wheels") as tmp:
            shutil.copy2(llama, tmp / llama.name)
            done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "download", "--quiet",
                                   "--only-binary=:all:", "-d", str(tmp), str(llama), "-r", str(requirements),
                                   "-c", str(constraints)], capture_output=True, text=True, env=env)
            if done.returncode:
                raise EdgeDistillError("downloading the runtime's wheels failed: "
                                       f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")
    shutil.copytree(cache, folder / "wheels", copy_function=_link_or_copy)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def install_folder(folder: Path, wheels: bool = False, env: dict | None = None) -> Path:
    """What a device needs to install the runtime without a checkout, written into `folder`: edgedistill's own wheel
    (built from this checkout: no package of that name is taken from a registry, where it could be someone else's),
    requirements.txt (the runtime extra's other packages but llama-cpp-python, which is built for the device's CPU
    level: formats/llamacpp_build.py ships in the wheel) and constraints.txt (every version pinned); with `wheels`,
    also wheels/: everything to install from with no network, for a device of this machine's platform."""
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
    if wheels:
        _wheels(folder, folder / "requirements.txt", folder / "constraints.txt", env)
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
    offline = (install / "wheels").is_dir()  # everything is there: no network (a device kit's install/)
    if offline:
        pip += ["--no-index", "--find-links", str(install / "wheels")]
    subprocess.run([*pip, "--no-deps", str(own)], check=True, env=env)
    if offline:
        wheel = "llama-cpp-python"
    else:
        wheel = subprocess.run([python, "-m", "edgedistill.formats.llamacpp_build", "wheel", "-c", constraints,
                                "--log", str(venv / "llama-build.log")], check=True, capture_output=True, text=True,
                               env=env).stdout.strip().splitlines()[-1]
    # llama-cpp-python with its own dependencies (diskcache ...), pinned
    subprocess.run([*pip, wheel, "-r", str(install / "requirements.txt"), "-c", constraints], check=True, env=env)
    for heavy in HEAVY:
        if subprocess.run([python, "-c", f"import {heavy}"], capture_output=True).returncode == 0:
            raise EdgeDistillError(f"{heavy} is importable in the runtime-only venv {venv}: the runtime extra must "
                                   "not pull it")
    return venv / "bin"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m edgedistill.runtime_venv FOLDER")
    print(make(Path(sys.argv[1])))
