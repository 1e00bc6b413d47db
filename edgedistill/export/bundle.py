"""The bundle: a directory with the model file(s), the tokenizer files and manifest.json.

manifest.json records what the runtime and the reader of a report need: format, scheme, runtime, the main model
file, every file's size and sha256, bits per weight measured from the file, the source model and its hash,
validation metrics with their tolerance, the target profile if any, the machine architecture it was built on,
and the tool version. `manifest_version` changes only when a reader of an older version could misread it.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from edgedistill import __version__
from edgedistill.paths import write_text_atomic
from edgedistill.runtime.bundle import sha256_file as sha256
from edgedistill.runtime.bundle import source_hash  # noqa: F401  (export.bundle's name for it)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def file_table(folder: Path) -> dict[str, dict]:
    """{relative name: {bytes, sha256}} for every file in the bundle except the manifest."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(folder).as_posix()] = {"bytes": p.stat().st_size, "sha256": sha256(p)}
    return out


def write_manifest(folder: Path, record: dict) -> dict:
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "edgedistill_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "built_on_arch": platform.machine(),
        **record,
        "files": file_table(folder),
    }
    write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / MANIFEST).read_text())


def record_deployment(folder: Path, target: str, deployable: bool, safety: dict) -> dict:
    """The safety verdict for a profile, written into a bundle's manifest ("deployment"); the manifest lists no
    checksum of itself, so the files' checksums stay valid. Returns the manifest."""
    manifest = read_manifest(folder)
    manifest["deployment"] = {"target": target, "deployable": deployable, "safety": safety}
    write_text_atomic(Path(folder) / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest
