"""Where edgedistill keeps its files, and how it writes them without leaving half-written results behind."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgedistill.errors import CacheError, DiskFullError


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
    with disk_full_named(parent):
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid())}
        try:
            tmp.with_name(tmp.name + OWNER_SUFFIX).write_text(json.dumps(owner))
        except BaseException:
            remove_scratch(tmp)
            raise
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
def locked_dir(folder: Path, waiting=None) -> Iterator[None]:
    """An exclusive lock on `folder` for the block (flock on the folder itself: no lock file to leave behind); another
    process that asks for it waits, after calling `waiting()`, until this one is done. Where flock is missing: no
    lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # and the lock with it


@contextlib.contextmanager
def scratch(parent: Path, prefix: str) -> Iterator[Path]:
    """scratch_dir for the duration of the block, removed at its end."""
    tmp = scratch_dir(parent, prefix)
    try:
        yield tmp
    finally:
        remove_scratch(tmp)


def temp_dir(name: str):
    """A marked temporary folder (see scratch) in the system's temporary folder, for the block's duration."""
    return scratch(Path(tempfile.gettempdir()), f".edgedistill-{name}-")


# --- a full disk --------------------------------------------------------------------------------------------------

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# how a child process (Python's OSError, C's strerror) says it ran out of space
_NO_SPACE_TEXT = tuple(os.strerror(n) for n in sorted(_NO_SPACE))


def is_disk_full(e: BaseException) -> bool:
    """An error that means a write found no space: an OSError with errno ENOSPC / EDQUOT / EFBIG, or another
    library's error (safetensors, torch) whose text says so."""
    if isinstance(e, OSError) and e.errno is not None:
        return e.errno in _NO_SPACE
    return any(t in str(e) for t in _NO_SPACE_TEXT)


def free_bytes(path: Path) -> int | None:
    """Bytes free to us on the filesystem holding `path` (or its nearest existing parent)."""
    probe = Path(path).absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def disk_full_error(path: Path, cause: str, free: int | None = None) -> DiskFullError:
    """The one-line error for a write to `path` that found no space: what failed, and the space left there when it
    failed (`free`, measured now when not given)."""
    free = free_bytes(path) if free is None else free
    left = f"{free / 2**20:,.0f} MiB" if free is not None else "an unknown amount"
    e = DiskFullError(f"no space to write {path} ({cause}); {left} free on its filesystem (a file-size limit, "
                      "ulimit -f, can also cause this); free some space or write somewhere else")
    e.cause, e.free = cause, free
    return e


# numpy's tofile (the GGUF writer's) reports a short write without an errno
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")
LOW_SPACE_BYTES = 16 * 2**20


def raise_if_disk_full(output: str, path: Path) -> None:
    """Raise disk_full_error for `path` when a child that failed while writing it ran out of space: its `output`
    says so, or it wrote short and the filesystem is (nearly) full or the file reached the file-size limit."""
    cause = next((t for t in _NO_SPACE_TEXT if t in output), None)
    if cause is None and _SHORT_WRITE.search(output):
        free, limit = free_bytes(path), resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        size = Path(path).stat().st_size if Path(path).is_file() else 0
        if free is not None and free < LOW_SPACE_BYTES:
            cause = "the filesystem is full"
        elif limit != resource.RLIM_INFINITY and size >= limit:
            cause = f"the file reached the file-size limit of {limit:,} bytes"
    if cause is not None:
        raise disk_full_error(path, cause) from None


@contextlib.contextmanager
def disk_full_named(path: Path) -> Iterator[None]:
    """Inside the block, an error that means no space (is_disk_full) becomes disk_full_error naming `path` (an
    inner block's error is renamed too: the outermost path is the output the user asked for)."""
    try:
        yield
    except DiskFullError as e:  # named by an inner write: the outer name is the one the user gave
        raise disk_full_error(path, getattr(e, "cause", "no space"), getattr(e, "free", None)) from None
    except Exception as e:
        if not is_disk_full(e):
            raise
        cause = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[-1][:200]
        raise disk_full_error(path, cause) from None


@contextlib.contextmanager
def atomic_dir(final: Path, what: str = "output folder") -> Iterator[Path]:
    """Yield a fresh temporary directory next to `final`; on success it is renamed to `final` in one step,
    on any error (or Ctrl-C) it is removed (and after a kill, by the next run here: see scratch_dir). Readers
    therefore see either nothing or the complete result. `what` names the location in the error when final's
    folder is not writable."""
    with folders_made(final.parent):
        parent = ensure_writable_dir(final.parent, what)
        tmp = scratch_dir(parent, f".{final.name}.partial-")
        try:
            with disk_full_named(final):
                yield tmp
            if final.exists():
                raise CacheError(f"{final} appeared while it was being written; remove it and try again")
            os.replace(tmp, final)
        finally:
            remove_scratch(tmp)


@contextlib.contextmanager
def folders_made(folder: Path) -> Iterator[None]:
    """For a block that may create `folder` and its missing parents: when the block fails, those it created are
    removed again (if empty), so that a failed command leaves no empty folders behind."""
    folder = Path(folder).absolute()
    missing = [p for p in [folder, *folder.parents] if not p.exists()]  # deepest first
    try:
        yield
    except BaseException:
        for d in missing:
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final` to write one file to; on success it replaces `final` in one step, on
    any error it is removed: readers see the old file or the new one, never half of it."""
    final = Path(final)
    with folders_made(final.parent):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.partial")
        try:
            with disk_full_named(final):
                yield tmp
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)


def write_text_atomic(final: Path, text: str) -> None:
    """`final` holds `text` afterwards, or what it held before (see atomic_file)."""
    write_texts_atomic({Path(final): text})


def write_texts_atomic(texts: dict[Path, str]) -> None:
    """Every file of `texts` ({path: text}) written, or none changed: each is written to a temporary file beside it
    first, and only once all are complete are they renamed into place (a rename needs no space). Folders made on
    the way are removed again when the writing fails."""
    tmps: dict[Path, Path] = {}
    with contextlib.ExitStack() as made:
        try:
            for final, text in texts.items():
                final = Path(final)
                made.enter_context(folders_made(final.parent))
                final.parent.mkdir(parents=True, exist_ok=True)
                tmps[final] = final.with_name(f".{final.name}.partial")
                with disk_full_named(final):
                    tmps[final].write_text(text, encoding="utf-8")
            for final, tmp in tmps.items():
                os.replace(tmp, final)
        finally:
            for tmp in tmps.values():
                tmp.unlink(missing_ok=True)


def dir_size(path: Path) -> int:
    """Bytes used by the regular files under `path` (or of `path` itself when it is a file)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
