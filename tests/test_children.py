"""edgedistill.children: no child process outlives its command, whether the command is interrupted (SIGINT),
terminated (SIGTERM) or killed outright (SIGKILL). The orphan check looks for any process left in the command's
process group (each command under test leads its own)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgedistill.children import descendant_with, left_in_group
from edgedistill.export.pipeline import ExportSettings, export_model
from tests import tiny
from tests.conftest import REPO, ours

pytestmark = pytest.mark.slow  # end-to-end trips over shared tiny bundles: make test, not the quick loop


def _own_group_default_sigint() -> None:
    """In the command under test: its own process group, and SIGINT as in a terminal (a test run started in the
    background has SIGINT ignored, and children inherit that)."""
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_sigkilled_parent_takes_its_children_along(tmp_path):
    code = textwrap.dedent("""
        import sys, time
        from edgedistill import children
        child = children.popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print(child.pid, flush=True)
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              preexec_fn=os.setpgrp)
    child_pid = int(parent.stdout.readline())
    assert {parent.pid, child_pid} <= set(left_in_group(parent.pid))
    parent.kill()
    parent.wait()
    assert left_in_group(parent.pid, wait_s=5) == [], "the child outlived its SIGKILLed parent"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny.build_model_dir(tmp_path_factory.mktemp("children") / "m", init_std=0.15, layers=2)


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("children-bundle")
    export_model(str(model), out, ExportSettings(variants=["onnx:fp32"], chunks=1, chunk_len=32))
    return out / "onnx-fp32"


@pytest.mark.parametrize("case", ["bench worker, SIGINT", "bench worker, SIGTERM", "gguf converter, SIGTERM",
                                  "onnx builder, SIGINT"])
def test_a_stopped_command_stops_its_children_and_leaves_nothing(case, model, bundle, tmp_path):
    what, sig_name = case.split(", ")
    sig = getattr(signal, sig_name)
    out, sys_tmp = tmp_path / "out", tmp_path / "tmp"
    sys_tmp.mkdir()
    args, marker = {
        "bench worker": (["bench", str(bundle), "--target", "laptop", "--repeats", "200", "--new-tokens", "64", "--out", str(out)],
                         "edgedistill.bench.worker"),
        "gguf converter": (["export", str(model), "--variant", "gguf:f16", "--out", str(out)], "convert_hf_to_gguf"),
        "onnx builder": (["export", str(model), "--variant", "onnx:fp32", "--out", str(out)],
                         "onnxruntime_genai.models.builder"),
    }[what]
    proc = subprocess.Popen([sys.executable, "-m", "edgedistill", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(sys_tmp)},
                            preexec_fn=_own_group_default_sigint)
    try:
        child = descendant_with(proc, marker)
        assert child is not None, proc.communicate()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    code, word = (130, "interrupted") if sig == signal.SIGINT else (143, "terminated")
    assert proc.returncode == code and err.strip().splitlines()[-1] == f"error: {word}", err[-2000:]
    assert left_in_group(proc.pid, wait_s=2) == [], f"{what} still running after {sig_name}"  # stopped, not waited for
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*")), list(out.rglob("*"))
    assert ours(sys_tmp) == []
