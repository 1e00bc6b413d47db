"""Child processes (llama.cpp's converter, quantizer and tools, the ONNX builder, the bench worker) are started
here, so that none outlives the command that started it:

- when the command ends by an exception (Ctrl-C, SIGTERM, which the CLI turns into an exception, or an error),
  its running children are stopped (SIGTERM, then SIGKILL after a grace period) before the exception goes on;
- when the command is killed outright (SIGKILL, out of memory), Linux kills its children too: they are started
  with the parent-death signal set (prctl PR_SET_PDEATHSIG). The kernel sends it when the *thread* that started
  the child ends, so children are started from threads that live as long as the command (the main thread).

A child that failed because the disk was full is reported as such (paths.DiskFullError naming the output).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

STOP_GRACE_S = 5.0

_PR_SET_PDEATHSIG = 1


def _find_prctl():
    """libc's prctl, looked up once here (not in the child between fork and exec, where loading a library could
    deadlock); None where there is none (not Linux)."""
    try:  # the process's own symbols hold libc's (find_library would start a subprocess at import)
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _find_prctl()


def _die_with_parent(parent: int):
    def setup() -> None:  # runs in the child, between fork and exec
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the signal was set
            os._exit(1)

    return setup


def popen(cmd: list[str], **kwargs) -> subprocess.Popen:
    """subprocess.Popen with no stdin and the parent-death signal set; stop it with `stop` (or use `started`)."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    if _prctl is not None:
        kwargs["preexec_fn"] = _die_with_parent(os.getpid())
    return subprocess.Popen(cmd, **kwargs)


def stop(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """Stop `proc` if it still runs: SIGTERM, then SIGKILL after `grace_s`; reaped either way."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def started(cmd: list[str], **kwargs) -> Iterator[subprocess.Popen]:
    """A running child for the duration of the block; stopped at the block's end if it still runs (the block
    raised, or left without waiting for it)."""
    proc = popen(cmd, **kwargs)
    try:
        yield proc
    finally:
        stop(proc)


def descendant_with(proc: subprocess.Popen, marker: str, timeout: float = 300):
    """The first descendant of `proc` whose command line holds `marker`, waiting for one up to `timeout` seconds
    (None if `proc` ended first or none came): how a check finds the child it means to interrupt."""
    import time

    import psutil

    me, deadline = psutil.Process(proc.pid), time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        for c in me.children(recursive=True):
            try:
                if marker in " ".join(c.cmdline()):
                    return c
            except psutil.Error:
                continue
        time.sleep(0.02)
    return None


def left_in_group(pgid: int, wait_s: float = 0.0) -> list[int]:
    """The live (not zombie) processes in process group `pgid` (Linux /proc), after waiting up to `wait_s` seconds for
    them to go: what a command started in its own group left running."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        left = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                left.append(int(stat.parent.name))
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def run(cmd: list[str], *, env: dict | None = None, cwd: str | Path | None = None, timeout: float | None = None,
        merge_output: bool = False, output: Path | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` to its end and return its exit code and output as text (stdout and stderr, or both in stdout
    with merge_output). The output goes to anonymous temporary files, so no pipe can fill and block the child.
    The child is stopped on any exception here (Ctrl-C included); on `timeout` it is stopped and
    subprocess.TimeoutExpired raised. If it failed because a disk was full, paths.DiskFullError is raised naming
    `output` (what it was writing), or the folder it ran in."""
    with tempfile.TemporaryFile("w+", errors="replace") as out, tempfile.TemporaryFile("w+", errors="replace") as err:
        with started(cmd, stdout=out, stderr=out if merge_output else err, env=env, cwd=cwd) as proc:
            rc = proc.wait(timeout)
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(cmd, rc, out.read(), "" if merge_output else err.read())
    if rc != 0:
        from edgedistill.paths import raise_if_disk_full

        raise_if_disk_full(done.stdout + done.stderr, Path(output) if output else Path(cwd or os.getcwd()))
    return done
