"""Interrupts and kills: Ctrl-C stops a stage promptly with exit code 130 and nothing written; what a killed run left
(its marked temporary folders) is removed by the next run, and nothing that is not ours is touched."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from edgedistill import paths
from edgedistill.export.pipeline import ExportSettings, export_model
from edgedistill.quantize import gguf as q
from tests import tiny
from tests.conftest import REPO


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _cmdline(proc) -> str:
    """A child's command line, or "" for one that has just ended (the converter's child, not yet reaped by its
    parent, is a zombie whose command line cannot be read)."""
    import psutil

    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _sigint_default() -> None:
    """In the CLI process under test: SIGINT as in a terminal, even if this test run ignores it (started in the
    background by a non-interactive shell, which sets SIGINT to ignored and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_kills_the_quantizer_child_and_leaves_no_file(tmp_path, monkeypatch):
    """The quantizer is one C call; in a child process it cannot hold off Ctrl-C (a child that would take a
    minute stands in for a big model)."""
    monkeypatch.setattr(q, "_CHILD", "import time; time.sleep(60)")
    # Ctrl-C as a terminal delivers it, even when pytest itself was started in the background (SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _interrupt_quantizer(tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupt_quantizer(tmp_path) -> None:
    dst = tmp_path / "model.gguf"
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    t = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        q.llama_quantize(tmp_path / "src.gguf", dst, "Q8_0", 1)
    assert time.monotonic() - t < 30  # well before the child's 60 s: it was killed, not waited for
    assert not dst.exists()


@pytest.mark.real_teacher
def test_sigint_during_a_real_quantization_exits_130_with_nothing_written(real_teacher, tmp_path):
    """Through the CLI, on the default teacher: SIGINT once llama.cpp's quantizer runs."""
    import psutil

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "edgedistill", "export", str(real_teacher), "--variant",
                             "gguf:q4_k_m", "--chunks", "1", "--chunk-len", "64", "--out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_default)
    me = psutil.Process(proc.pid)
    deadline, child = time.monotonic() + 600, None
    while child is None and time.monotonic() < deadline and proc.poll() is None:
        child = next((c for c in me.children() if "llama_model_quantize" in _cmdline(c)), None)
        time.sleep(0.05)
    assert child is not None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted"
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert not out.exists(), list(out.iterdir())


@pytest.mark.slow
def test_a_rerun_removes_what_a_killed_run_left_and_only_that(tmp_path):
    model = tiny.build_model_dir(tmp_path / "m", init_std=0.15, layers=2)
    out = tmp_path / "out"
    out.mkdir()
    # what a SIGKILLed export leaves: its work folder and a half-built bundle, each with its owner file
    for name in (".export-work-abc123", ".gguf-q8_0.partial-def456"):
        (out / name / "sub").mkdir(parents=True)
        (out / name / "sub" / "big.bin").write_bytes(b"\0" * 1000)
        (out / (name + paths.OWNER_SUFFIX)).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                                                                   "start": None}))
    (out / ".someone-elses").mkdir()  # no owner file: not ours, never touched
    alive = out / ".export-work-running"  # a live process's folder (this one): kept
    alive.mkdir()
    (out / (alive.name + paths.OWNER_SUFFIX)).write_text(json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "start": paths._process_start(os.getpid())}))
    res = export_model(str(model), out, ExportSettings(variants=["gguf:q8_0"], chunks=1, chunk_len=32))
    assert res[0].path is not None
    left = sorted(p.name for p in out.iterdir())
    assert left == [".export-work-running", ".export-work-running.owner", ".someone-elses", "gguf-q8_0",
                    "settings.yaml"], left


def test_an_interrupted_export_leaves_no_out_folder(tmp_path, monkeypatch):
    from edgedistill.export import validate

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    model = tiny.build_model_dir(tmp_path / "m", layers=2)
    monkeypatch.setattr(validate, "held_out_chunks", interrupted)  # Ctrl-C after --out was made, before any bundle
    out = tmp_path / "new-out"
    with pytest.raises(KeyboardInterrupt):
        export_model(str(model), out, ExportSettings(variants=["gguf:q8_0"], chunks=1, chunk_len=32))
    assert not out.exists()


@pytest.mark.slow
def test_sigkill_mid_export_then_a_rerun_leaves_only_the_finished_bundle(tmp_path):
    model = tiny.build_model_dir(tmp_path / "m", init_std=0.15, layers=2)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "edgedistill", "export", str(model), "--variant", "gguf:q8_0", "--chunks", "1",
           "--chunk-len", "32", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not list(out.glob(".export-work-*.owner")):
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert list(out.glob(".export-work-*")), "the export ended before it could be killed mid-way"
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["gguf-q8_0", "settings.yaml"]
