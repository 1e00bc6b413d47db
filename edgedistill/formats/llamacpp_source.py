"""llama.cpp's own sources, at exactly the version of the installed llama-cpp-python.

The llama-cpp-python source distribution vendors llama.cpp whole: its converter (`convert_hf_to_gguf.py`, the
`conversion/` package with one module per architecture, `gguf-py`) and the tools (`llama-imatrix`,
`llama-quantize`). Converter and tools taken from it are therefore the same llama.cpp as the runtime that loads
their files. The tree is fetched once by pip and kept in one of these places, first found wins:

- `$EDGEDISTILL_LLAMA_CPP_SRC` (a folder the user points at);
- `<environment>/share/edgedistill/llama.cpp-<version>` (where `make install` puts it);
- `<cache>/llama.cpp/<version>` (fetched on first use).

`python -m edgedistill.formats.llamacpp_source` puts it into the environment (the Makefile runs it).
"""

from __future__ import annotations

import os
import sys
import tarfile
from importlib import metadata
from pathlib import Path

from edgedistill import children, paths
from edgedistill.errors import EdgeDistillError, OfflineError

PACKAGE = "llama_cpp_python"
MARKER = ".edgedistill-llama-cpp-version"
# What the converter and the tools need; the rest of the tree (model vocabularies for llama.cpp's own tests, docs,
# media) is left in the archive.
_SKIP = ("models", "docs", "media", "benches", ".github", "examples", "tests", "scripts")


def version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        raise EdgeDistillError("llama-cpp-python is not installed; install edgedistill's [full] extra "
                               "(make install does)") from None


def candidates() -> list[Path]:
    v = version()
    out = [Path(os.environ["EDGEDISTILL_LLAMA_CPP_SRC"])] if os.environ.get("EDGEDISTILL_LLAMA_CPP_SRC") else []
    return out + [Path(sys.prefix) / "share" / "edgedistill" / f"llama.cpp-{v}", paths.home() / "llama.cpp" / v]


def _valid(path: Path) -> bool:
    return (path / "convert_hf_to_gguf.py").is_file() and (path / MARKER).is_file() and \
        (path / MARKER).read_text().strip() == version()


def source_dir(*, fetch: bool = True) -> Path:
    """The llama.cpp tree of the installed llama-cpp-python's version, fetched into the cache if none is found."""
    explicit = os.environ.get("EDGEDISTILL_LLAMA_CPP_SRC")
    for path in candidates()[:1] if explicit else candidates():  # a folder the user names is the only one
        if _valid(path):
            return path
    if explicit:
        raise EdgeDistillError(f"EDGEDISTILL_LLAMA_CPP_SRC={explicit} is not a llama.cpp {version()} tree made by "
                               "`python -m edgedistill.formats.llamacpp_source --into DIR`; unset it or make it so")
    if not fetch:
        raise EdgeDistillError(f"llama.cpp {version()} sources are not here; run `make install` or "
                               "`python -m edgedistill.formats.llamacpp_source`")
    return fetch_into(candidates()[-1])


def fetch_into(dest: Path) -> Path:
    """Download the llama-cpp-python source distribution of the installed version (pip, no build) and unpack its
    vendored llama.cpp into dest, atomically."""
    v = version()
    paths.ensure_writable_dir(dest.parent, "folder")
    with paths.scratch(dest.parent, f".llama.cpp-{v}.download-") as dl:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "--disable-pip-version-check",
               "--quiet", "--dest", str(dl), f"llama-cpp-python=={v}"]
        proc = children.run(cmd, output=dest)
        archives = sorted(Path(dl).glob("*.tar.gz"))
        if proc.returncode != 0 or not archives:
            lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip().startswith("ERROR")]
            why = lines[-1] if lines else f"pip exited with {proc.returncode}"
            raise OfflineError(f"could not download the llama-cpp-python {v} sources that hold llama.cpp's converter "
                               f"({why}); run once with the package registry reachable")
        with paths.atomic_dir(dest, "folder") as tmp:
            _unpack_vendored(archives[0], tmp)
            (tmp / MARKER).write_text(v + "\n")
    return dest


def _unpack_vendored(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if len(parts) < 4 or parts[1:3] != ("vendor", "llama.cpp") or parts[3] in _SKIP:
                continue
            if not (member.isfile() or member.isdir()):
                continue  # no links or devices out of an archive
            member.name = str(Path(*parts[3:]))
            tar.extract(member, dest, filter="data")


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--into", type=Path, default=None,
                    help="target folder (default: this environment's share/edgedistill/llama.cpp-<version>)")
    args = ap.parse_args(argv)
    dest = args.into or candidates()[-2]
    try:
        if _valid(dest):
            print(f"llama.cpp {version()} sources already in {dest}")
            return 0
        fetch_into(dest)
    except EdgeDistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"llama.cpp {version()} sources in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
