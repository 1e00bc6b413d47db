"""Opening a bundle safely: manifest version, every file's sha256, the machine architecture.

Only the standard library here: the runtime must import without torch or transformers.
"""

from __future__ import annotations

import hashlib
import logging
import platform
from pathlib import Path

from edgedistill.errors import EdgeDistillError, IntegrityError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SUPPORTED_MANIFEST_VERSION = 1
_ARCH = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}


class BundleError(EdgeDistillError):
    """A bundle that cannot be loaded as it is."""


# The formats the offline runtime opens, each a module of this package defining `Model` (a LoadedModel: generation)
# and `Logits` (every position's logits: validation and fidelity). Adding one is a module and a line here; the
# export side of a format is its module in edgedistill.quantize (see docs/formats.md).
BACKENDS = {"gguf": "edgedistill.runtime.gguf", "onnx": "edgedistill.runtime.onnx"}
# Formats whose bundles hold an adapter, loaded over a base bundle of the format named here (never alone).
ADAPTERS = {"gguf-lora": "gguf"}


def backend(fmt: str):
    """The runtime module of format `fmt` (its Model and Logits classes)."""
    import importlib

    if fmt not in BACKENDS:
        raise BundleError(f"format {fmt!r} has no runtime backend ({', '.join(BACKENDS)})")
    return importlib.import_module(BACKENDS[fmt])


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read a MiB at a time (bundle and kit checksums)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def source_hash(model_dir: Path) -> str:
    """sha256 over a source model's weight files (sorted by name): what a bundle names as its source, and what an
    adapter bundle names as the base it was trained on."""
    h = hashlib.sha256()
    for p in sorted(Path(model_dir).glob("*.safetensors")):
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def confine(folder: Path, names) -> None:
    """Every file a bundle names, and every link inside it, stays inside the bundle folder: no absolute paths, no
    `..`, no symbolic link leading out. A manifest cannot make the runtime open another file on the machine."""
    root = folder.resolve()

    def inside(p: Path) -> bool:
        try:
            p.resolve().relative_to(root)
            return True
        except ValueError:
            return False

    for name in names:
        rel = Path(str(name))
        if rel.is_absolute() or ".." in rel.parts or not inside(folder / rel):
            raise BundleError(f"{folder}: the manifest names {name!r}, which leads outside the bundle folder; a bundle "
                              "may only name its own files (re-export it)")
    for p in folder.rglob("*"):
        if p.is_symlink() and not inside(p):
            raise BundleError(f"{folder}: {p.relative_to(folder)} links outside the bundle folder; copy the bundle "
                              "without links (cp -rL) or re-export it")


def open_bundle(folder: str | Path, *, verify: bool = True) -> dict:
    """The manifest of `folder`, after checking it can be loaded here (and, with verify, every checksum)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise BundleError(f"no bundle at {folder} (expected a folder made by `edgedistill export`)")
    if not (folder / MANIFEST).is_file():
        raise BundleError(f"{folder} has no {MANIFEST}; it is not a bundle made by `edgedistill export`")
    from edgedistill.checked import read_json

    manifest = read_json(folder / MANIFEST, "bundle manifest", BundleError)
    if not isinstance(manifest, dict):
        raise BundleError(f"{folder / MANIFEST} must hold a JSON object; re-export the bundle")
    version = manifest.get("manifest_version")
    if not isinstance(version, int):
        raise BundleError(f"{folder / MANIFEST} has no manifest_version; re-export the bundle")
    if version > SUPPORTED_MANIFEST_VERSION:
        raise BundleError(
            f"{folder} was made by a newer edgedistill ({manifest.get('edgedistill_version')}, manifest version "
            f"{version}); this runtime reads version {SUPPORTED_MANIFEST_VERSION}: upgrade edgedistill"
        )
    if manifest.get("format") not in BACKENDS and manifest.get("format") not in ADAPTERS:
        raise BundleError(f"{folder}: format {manifest.get('format')!r} has no runtime backend ({', '.join(BACKENDS)})")
    files = manifest.get("files") or {}
    if not isinstance(files, dict) or manifest.get("model_file") not in files:
        raise BundleError(f"{folder}: the manifest does not list its model file")
    confine(folder, files)
    if verify:
        for name, meta in files.items():
            p = folder / name
            if not p.is_file():
                raise IntegrityError(f"{folder}: {name} is missing; the bundle is incomplete, copy it again")
            if p.stat().st_size != meta["bytes"] or sha256_file(p) != meta["sha256"]:
                raise IntegrityError(f"{folder}: {name} does not match its sha256 in the manifest (changed or "
                                     "damaged); copy the bundle again")
    built = _ARCH.get(str(manifest.get("built_on_arch", "")).lower())
    here = _ARCH.get(platform.machine().lower())
    if built and here and built != here:
        log.warning("bundle %s was built on %s, this machine is %s; it should still load, but was validated on %s",
                    folder, built, here, built)
    return manifest


def adapter_args(base: dict, base_path: Path, adapter: str | Path | None, *, verify: bool = True) -> dict:
    """The backend's keyword arguments for `adapter` (a gguf-lora bundle) over the base bundle: {} for none, else
    {"adapter": its file} once check_adapter has accepted the pair."""
    if adapter is None:
        return {}
    manifest = open_bundle(adapter, verify=verify)
    check_adapter(base, manifest, Path(base_path), Path(adapter))
    return {"adapter": Path(adapter) / manifest["model_file"]}


def check_adapter(base: dict, adapter: dict, base_path: Path, adapter_path: Path) -> None:
    """An adapter bundle goes over a base bundle of its format that was exported from the model it was trained on
    (the same source sha256); anything else is refused in one line."""
    fmt = ADAPTERS.get(adapter.get("format"))
    if fmt is None:
        raise BundleError(f"{adapter_path} is a {adapter.get('format')} bundle, not an adapter (a gguf-lora bundle)")
    if base.get("format") != fmt:
        raise BundleError(f"{adapter_path} is a {adapter['format']} adapter; it goes over a {fmt} bundle, and "
                          f"{base_path} is {base.get('format')}")
    want = ((adapter.get("quantization") or {}).get("adapter") or {})
    got = (base.get("source") or {}).get("sha256")
    if not want.get("base_sha256") or want.get("base_sha256") != got:
        raise BundleError(f"{adapter_path} was trained on {want.get('base')!r} and {base_path} was exported from "
                          f"{(base.get('source') or {}).get('name')!r} (another model: source sha256 differs); "
                          f"export the base with `edgedistill export {want.get('base')}`")
