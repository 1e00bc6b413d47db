"""Cheap, stable ids of model files: what the data, cache and training records name their teacher by."""

from __future__ import annotations

from pathlib import Path


def model_fingerprint(path: Path) -> str:
    """A cheap, stable id of a model directory or file: sha256 over its config and weight headers and sizes."""
    import hashlib

    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file() and p.suffix in
                                                 (".json", ".safetensors", ".gguf", ".onnx", ".jinja"))
    for f in files:
        h.update(f.name.encode())
        h.update(str(f.stat().st_size).encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))  # config files whole; weight files' headers and first tensors
    return h.hexdigest()[:16]


def spec_fingerprint(spec) -> str:
    """model_fingerprint of what a model spec (name, folder, .gguf, hub id or ModelRef) resolves to; a hub id is
    its own fingerprint."""
    from edgedistill.models.locate import ModelRef, resolve

    ref = spec if isinstance(spec, ModelRef) else resolve(spec, pull=True)
    return model_fingerprint(ref.path) if ref.kind != "hub" else ref.location
