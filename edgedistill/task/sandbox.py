"""Where model-written code runs: never in this process.

Each program runs in its own Python process (`python -I`: no user site, no PYTHON* variables) with an empty
environment (no API keys or tokens inherited), a fresh scratch folder as its working directory (removed after),
its own session (the whole process group is killed at the end, whatever it started), and limits set before the
program starts: CPU seconds and wall time, address space (RLIMIT_AS), file size, no new processes (RLIMIT_NPROC 0,
which root ignores), and an audit hook that refuses, inside the program, process creation (os.fork, exec, spawn,
subprocess and the modules under it), sockets, ctypes and writing or deleting files outside the scratch folder.
Python cannot remove an audit hook once added. It guards against code that is wrong (loops, forks, floods memory,
writes where it should not, reads secrets), not against an adversary who studies the interpreter: a machine that
runs untrusted code from strangers wants a container or VM around this as well.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Runs first in the sandboxed process: the limits, then the hook, then the program (read from stdin).
_PRELUDE = r'''
import os, resource, sys
scratch = os.getcwd()
mem, cpu = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
program = sys.stdin.read()

def _inside(path, realpath=os.path.realpath, fsdecode=os.fsdecode, sep=os.sep):
    try:
        p = realpath(fsdecode(path))
    except Exception:
        return False
    return p == scratch or p.startswith(scratch + sep)

_DENIED = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen",
           "socket.connect", "socket.bind", "socket.__new__", "ctypes.dlopen", "ctypes.dlsym", "os.kill",
           "os.killpg", "pty.spawn", "os.startfile", "sys.addaudithook"}
_WRITES = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink",
           "os.truncate", "shutil.rmtree", "os.utime"}

_MODULES = {"_posixsubprocess", "_ctypes", "ctypes", "_socket", "socket", "multiprocessing", "_multiprocessing"}

def _hook(event, args, O_WRITE=os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC):
    if event == "import" and args[0].split(".")[0] in _MODULES:
        raise ImportError(f"sandbox: importing {args[0]} is not allowed")
    if event in _DENIED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode = args[0], args[1]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(mode, int) and args[2] & O_WRITE)
        if writing and not isinstance(path, int) and not _inside(path):
            raise PermissionError(f"sandbox: writing {path} outside the scratch folder is not allowed")
    elif event in _WRITES and args and not isinstance(args[0], int) and not _inside(args[0]):
        raise PermissionError(f"sandbox: {event} outside the scratch folder is not allowed")

sys.addaudithook(_hook)
del os, resource
exec(compile(program, "<program>", "exec"), {"__name__": "__main__"})
'''


@dataclass(frozen=True)
class SandboxResult:
    ok: bool  # exited 0 within its limits
    returncode: int | None  # None: killed at the wall-clock limit
    stdout: str
    stderr: str
    timed_out: bool


def run_python(program: str, *, timeout_s: float = 10.0, memory_mb: int = 512,
               python: str | None = None) -> SandboxResult:
    """Run `program` (Python source) in the sandbox; ok when it exits 0 within `timeout_s` seconds (wall clock, and
    as many CPU seconds) and `memory_mb` of address space."""
    import signal

    with tempfile.TemporaryDirectory(prefix="edgedistill-sandbox-") as scratch:
        os.chmod(scratch, 0o777)  # the program may run as nobody: its folder is the one place it may write
        try:
            proc = subprocess.Popen(
                [python or sys.executable, "-I", "-S", "-c", _PRELUDE, str(memory_mb << 20),
                 str(max(1, int(timeout_s + 0.999)))],
                cwd=Path(scratch).resolve(), env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                text=True)
        except OSError as e:
            return SandboxResult(False, None, "", f"sandbox could not start: {e}", False)
        try:
            out, err = proc.communicate(program, timeout=timeout_s + 2)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            out, err = "", ""
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the program and anything it managed to start
            except (ProcessLookupError, PermissionError):
                pass
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        code = None if timed_out else proc.returncode
        return SandboxResult(code == 0, code, out[-4000:], err[-4000:], timed_out)
