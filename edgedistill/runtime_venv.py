"""A virtual environment holding edgedistill's runtime extra only, installed from this checkout: what a device or an
offline app has (numpy, tokenizers, onnxruntime(-genai), llama-cpp-python; no torch, no transformers: checked).
llama-cpp-python comes from the wheel `make` built (formats/llamacpp_build.py, cached). Used by `make example`,
the device-kit tests and benchmarks/device_kit.py.

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


def make(venv: Path, env: dict | None = None) -> Path:
    """Create `venv` afresh and install the runtime extra into it; return its bin folder."""
    venv = Path(venv)
    if not (SOURCE / "pyproject.toml").is_file():
        raise EdgeDistillError("a runtime-only venv is made from a checkout of edgedistill (pyproject.toml not found)")
    env = dict(env if env is not None else os.environ)
    constraints = str(SOURCE / "constraints.txt")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    wheel = subprocess.run([sys.executable, "-m", "edgedistill.formats.llamacpp_build", "wheel", "-c", constraints,
                            "--log", str(venv / "llama-build.log")], check=True, capture_output=True, text=True,
                           env=env, cwd=SOURCE).stdout.strip().splitlines()[-1]
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "--disable-pip-version-check", "install", "--quiet", wheel,
                    f"{SOURCE}[runtime]", "-c", constraints], check=True, env=env)
    for heavy in HEAVY:
        if subprocess.run([python, "-c", f"import {heavy}"], capture_output=True).returncode == 0:
            raise EdgeDistillError(f"{heavy} is importable in the runtime-only venv {venv}: the runtime extra must "
                                   "not pull it")
    return venv / "bin"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m edgedistill.runtime_venv FOLDER")
    print(make(Path(sys.argv[1])))
