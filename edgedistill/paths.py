"""Where edgedistill keeps its files, and how it writes them without leaving half-written results behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgedistill.errors import CacheError


def home() -> Path:
    """The cache root: $EDGEDISTILL_HOME, else $XDG_CACHE_HOME/edgedistill, else ~/.cache/edgedistill."""
    explicit = os.environ.get("EDGEDISTILL_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "edgedistill"


def models_dir() -> Path:
    return home() / "models"


def ensure_writable_dir(path: Path, what: str = "cache folder") -> Path:
    """Create `path` if needed and prove that files can be created in it, or raise a CacheError that says how
    to fix it."""
    fix = "set EDGEDISTILL_HOME to a writable folder" if what == "cache folder" else "choose a writable folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheError(f"{what} {path} is not writable ({e.strerror or e}); {fix}") from None
    _probe(path, path, what, fix)
    return path


def _probe(folder: Path, path: Path, what: str, fix: str) -> None:
    """Create and remove one file in `folder`, or raise a CacheError saying `what` (at `path`) is not writable.
    Trying for real (rather than os.access) also catches read-only mounts and root-owned folders."""
    try:
        tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-", delete=True).close()
    except OSError as e:
        raise CacheError(f"{what} {path} is not writable ({e.strerror or e}); {fix}") from None


def check_writable_dir(path: Path, what: str = "--out") -> Path:
    """Prove, before long work and without creating anything, that folder `path` could be made and written to:
    the nearest existing folder on its way is a folder we can create files in, and nothing on the rest of the way
    is a file. A refused run therefore leaves no empty folder behind."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise CacheError(f"{what} {path} is not writable ({probe} is a file, not a folder); choose a writable folder")
    _probe(probe, path, what, "choose a writable folder")
    return path


def ensure_writable_file(path: Path, what: str = "output file") -> Path:
    """Prove that `path` can be written (its folder could be made and written to; an existing entry is a file
    that opens for appending, unchanged), or raise a CacheError naming `what`. Creates nothing; called before
    long work, not after it."""
    path = Path(path)
    check_writable_dir(path.parent, what)
    if path.exists():
        try:
            if not path.is_file():
                raise IsADirectoryError(21, "not a file")
            with open(path, "ab"):
                pass
        except OSError as e:
            raise CacheError(f"{what} {path} is not writable ({e.strerror or e}); choose a writable file") from None
    return path


# A temporary folder of ours has an owner file beside it (NAME.owner: the process that made it). A process killed
# with SIGKILL cannot remove its folder; the next run in the same place removes those whose owner is gone. Folders
# without an owner file are never touched: they are not ours.
OWNER_SUFFIX = ".owner"


def _process_start(pid: int) -> str | None:
    try:  # field 22 of /proc/PID/stat: the start time, which tells a reused pid from the original process
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_alive(owner: dict) -> bool:
    import socket

    if owner.get("host") != socket.gethostname():
        return True  # another machine's (a shared disk): not ours to judge
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return owner.get("start") is None or _process_start(pid) == owner.get("start")


def scratch_dir(parent: Path, prefix: str) -> Path:
    """A new hidden temporary folder in `parent`, marked as this process's (removed by clean_stale once this process
    is gone, should it die before removing it itself)."""
    import json
    import socket

    clean_stale(parent)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid())}
    tmp.with_name(tmp.name + OWNER_SUFFIX).write_text(json.dumps(owner))
    return tmp


def remove_scratch(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.with_name(tmp.name + OWNER_SUFFIX).unlink(missing_ok=True)


def clean_stale(parent: Path) -> list[Path]:
    """Remove the temporary folders in `parent` left by processes of ours that no longer run; returns them."""
    import json

    removed = []
    try:
        owners = [p for p in Path(parent).glob(".*" + OWNER_SUFFIX) if p.is_file()]
    except OSError:
        return removed
    for marker in owners:
        try:
            owner = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(owner, dict) or _owner_alive(owner):
            continue
        tmp = marker.with_name(marker.name[: -len(OWNER_SUFFIX)])
        remove_scratch(tmp)
        removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_dir(final: Path, what: str = "output folder") -> Iterator[Path]:
    """Yield a fresh temporary directory next to `final`; on success it is renamed to `final` in one step,
    on any error (or Ctrl-C) it is removed (and after a kill, by the next run here: see scratch_dir). Readers
    therefore see either nothing or the complete result. `what` names the location in the error when final's
    folder is not writable."""
    parent = ensure_writable_dir(final.parent, what)
    tmp = scratch_dir(parent, f".{final.name}.partial-")
    try:
        yield tmp
        if final.exists():
            raise CacheError(f"{final} appeared while it was being written; remove it and try again")
        os.replace(tmp, final)
    finally:
        remove_scratch(tmp)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final` to write one file to; on success it replaces `final` in one step, on
    any error it is removed: readers see the old file or the new one, never half of it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.partial")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(final: Path, text: str) -> None:
    """`final` holds `text` afterwards, or what it held before (see atomic_file)."""
    with atomic_file(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def dir_size(path: Path) -> int:
    """Bytes used by the regular files under `path` (or of `path` itself when it is a file)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
