"""edgedistill.paths: a file is replaced whole or left as it was; a full disk is one line and leaves nothing; what a
killed run left in the system's temporary folder goes at the next run."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys

import pytest

from edgedistill import paths
from edgedistill.paths import atomic_file, write_text_atomic
from tests.conftest import REPO, ours


def test_atomic_file_replaces_on_success_and_leaves_no_temp_file(tmp_path):
    out = tmp_path / "sub" / "data.jsonl"
    write_text_atomic(out, "old\n")
    with atomic_file(out) as tmp:
        assert tmp.parent == out.parent and tmp != out
        tmp.write_text("new\n")
        assert out.read_text() == "old\n"  # not visible before the block ends
    assert out.read_text() == "new\n"
    assert [p.name for p in out.parent.iterdir()] == ["data.jsonl"]


def test_atomic_file_keeps_the_old_file_when_writing_fails_half_way(tmp_path):
    out = tmp_path / "model.gguf"
    write_text_atomic(out, "complete")
    with pytest.raises(RuntimeError):
        with atomic_file(out) as tmp:
            tmp.write_text("half of a")
            raise RuntimeError("writer died")
    assert out.read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


# --- a full disk: one line naming the output and the space left, nothing half-written ----------------------------

def _file_size_limit(limit: int):
    """In the command under test: files may grow to `limit` bytes, then a write fails with EFBIG, as on a full
    disk (SIGXFSZ ignored, as a shell's `ulimit -f` leaves it to the program; children inherit both)."""

    def setup() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return setup


def test_a_locked_folder_makes_a_second_process_wait_and_leaves_no_file(tmp_path):
    """Two pulls into one cache (two commands, two test workers): the second waits for the first, says so, then
    goes on; the lock is the folder's own, so nothing is left in it."""
    child = ("import sys; from pathlib import Path; from edgedistill import paths\n"
             "with paths.locked_dir(Path(sys.argv[1]), waiting=lambda: print('waiting', flush=True)):\n"
             "    print('got it', flush=True)\n")
    with paths.locked_dir(tmp_path):
        proc = subprocess.Popen([sys.executable, "-c", child, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                                cwd=REPO)
        assert proc.stdout.readline() == "waiting\n"  # blocked while this process holds the lock
    assert proc.stdout.readline() == "got it\n" and proc.wait(timeout=60) == 0
    with paths.locked_dir(tmp_path, waiting=lambda: pytest.fail("nobody holds it")):
        pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["data split (written here)", "export (written by llama.cpp's converter)",
                                  "export (written by the ONNX builder)"])
@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_nothing(case, tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"question {i}: " + "where is my order " * 40})
                               + "\n" for i in range(400)))
    out = tmp_path / "out"
    args, limit = {
        "data split (written here)": (["data", "split", str(prompts), "--out", str(out)], 100_000),
        "export (written by llama.cpp's converter)": (["export", str(tiny_model_dir), "--variant", "gguf:f16",
                                                       "--chunks", "1", "--chunk-len", "32", "--out", str(out)],
                                                      100_000),
        "export (written by the ONNX builder)": (["export", str(tiny_model_dir), "--variant", "onnx:fp32",
                                                  "--chunks", "1", "--chunk-len", "32", "--out", str(out)], 200_000),
    }[case]
    sys_tmp = tmp_path / "tmp"
    sys_tmp.mkdir()
    proc = subprocess.run([sys.executable, "-m", "edgedistill", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(sys_tmp)}, preexec_fn=_file_size_limit(limit))
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith(f"error: no space to write {out}") and "MiB free" in lines[0], lines[0]
    assert not out.exists(), sorted(out.rglob("*"))
    assert ours(sys_tmp) == []


@pytest.mark.slow
def test_a_killed_runs_temporary_folders_are_removed_by_the_next_run_and_only_those(tmp_path, tiny_model_dir):
    """What a SIGKILLed export leaves in the system's temporary folder (the converter's view of the model folder),
    marked with its dead owner, goes at the next run; a folder without our mark is never touched."""
    sys_tmp = tmp_path / "tmp"
    stale = sys_tmp / ".edgedistill-gguf-view-abc123"
    (stale / "sub").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale.with_name(stale.name + paths.OWNER_SUFFIX).write_text(json.dumps(
        {"pid": dead.pid, "host": socket.gethostname(), "start": None}))
    (sys_tmp / ".edgedistill-not-marked").mkdir()
    proc = subprocess.run([sys.executable, "-m", "edgedistill", "export", str(tiny_model_dir), "--variant", "gguf:f16",
                           "--chunks", "1", "--chunk-len", "32", "--out", str(tmp_path / "out")], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "TMPDIR": str(sys_tmp)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in sys_tmp.iterdir()) == [".edgedistill-not-marked"]


@pytest.mark.slow
def test_a_full_disk_stops_generate_in_one_line_and_a_rerun_continues(tmp_path, tiny_model_dir):
    """generate's output is an append log (resumable by design): the full disk is one line naming it, the answers
    written stay, and a rerun with space answers only the rest."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Where is order {i}?"}) + "\n"
                               for i in range(12)))
    out = tmp_path / "gen.jsonl"
    args = [sys.executable, "-m", "edgedistill", "generate", "--teacher-engine", "torch", "--teacher", str(tiny_model_dir), "--prompts",
            str(prompts), "--max-new-tokens", "8", "--answer-batch", "2", "--out", str(out)]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, preexec_fn=_file_size_limit(3000))
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and last.startswith(f"error: no space to write {out}"), proc.stderr[-2000:]
    written = [json.loads(x)["id"] for x in out.read_text().splitlines() if x.endswith("}")]
    assert 0 < len(written) < 12
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert sorted(ids) == sorted(f"p{i}" for i in range(12))
