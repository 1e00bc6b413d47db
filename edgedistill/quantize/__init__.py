"""quantize: the schemes a model can be exported with, one registry over all formats.

A scheme is data (format, runtime, validation tolerance, options it takes) plus one build function; adding a
scheme is adding one `register(...)` call in the module of its format:
- quantize/gguf.py  — F16 from our writer, Q8_0 / Q4_0 / Q4_K_M / Q5_K_M by llama.cpp's own quantizer;
- quantize/onnx.py  — fp32, int8 / int4 weight-only (MatMulNBits) by onnxruntime-genai's model builder;
- quantize/bnb.py   — bitsandbytes int8 and nf4 in torch, the in-framework reference.

Tolerances are on the validation against the float32 torch model (see export/validate.py): a variant whose
mean KL is above max_kl or whose top-1 agreement is below min_top1 fails and is not written unless forced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgedistill.errors import EdgeDistillError, UnsupportedError

RUNTIMES = {"gguf": "llama-cpp-python", "onnx": "onnxruntime-genai", "torch": "torch"}


@dataclass
class BuildContext:
    """What a build function gets: the float32 model, where to write, shared intermediates, options."""

    model: object  # transformers model, float32, eval mode
    tokenizer: object
    model_dir: Path  # the source as a Hugging Face directory (the ONNX builder and bitsandbytes read it)
    out_dir: Path  # the bundle being written (a temporary folder until it validates)
    work_dir: Path  # intermediates shared by the variants of one export run (F16 GGUF, fp32 ONNX)
    options: dict = field(default_factory=dict)
    threads: int | None = None


@dataclass(frozen=True)
class Scheme:
    format: str  # "gguf" | "onnx" | "torch"
    name: str  # e.g. "q4_k_m"
    help: str
    build: Callable[[BuildContext], Path]  # writes the model file(s) into ctx.out_dir, returns the main file
    max_kl: float  # validation tolerance: mean KL(reference || artifact), nats
    min_top1: float  # validation tolerance: top-1 agreement with the reference
    exact: bool = False  # must also reproduce the reference's greedy tokens
    nominal_bits: float = 16.0
    options: tuple[str, ...] = ()  # option names this scheme reads from ctx.options

    @property
    def key(self) -> str:
        return f"{self.format}:{self.name}"

    @property
    def runtime(self) -> str:
        return RUNTIMES[self.format]


_SCHEMES: dict[str, Scheme] = {}


def register(scheme: Scheme) -> Scheme:
    if scheme.format not in RUNTIMES:
        raise EdgeDistillError(f"scheme {scheme.key}: unknown format {scheme.format!r}")
    if scheme.key in _SCHEMES:
        raise EdgeDistillError(f"scheme {scheme.key} is registered twice")
    _SCHEMES[scheme.key] = scheme
    return scheme


def _load_all() -> None:
    # each module registers its schemes; imported in the order they are listed (GGUF, ONNX, torch)
    from edgedistill.quantize import gguf  # noqa: F401
    from edgedistill.quantize import onnx  # noqa: F401
    from edgedistill.quantize import bnb  # noqa: F401


def schemes() -> dict[str, Scheme]:
    _load_all()
    return dict(_SCHEMES)


def get(key: str) -> Scheme:
    """'gguf:q4_k_m' -> Scheme; a wrong format or scheme names the valid ones."""
    _load_all()
    fmt, _, name = key.partition(":")
    if fmt not in RUNTIMES:
        raise UnsupportedError(f"unknown format {fmt!r} in {key!r}; formats: {', '.join(RUNTIMES)}")
    if not name:
        raise UnsupportedError(f"{key!r} names no scheme; write FORMAT:SCHEME, e.g. {fmt}:{_first(fmt)}")
    scheme = _SCHEMES.get(f"{fmt}:{name.lower()}")
    if scheme is None:
        names = ", ".join(s.name for s in _SCHEMES.values() if s.format == fmt)
        raise UnsupportedError(f"format {fmt} has no scheme {name!r}; it supports: {names}")
    return scheme


def _first(fmt: str) -> str:
    return next((s.name for s in _SCHEMES.values() if s.format == fmt), "")


def unsupported_reason(key: str, model_dir: Path) -> str | None:
    """Why the transformers model in `model_dir` cannot be exported as variant `key`, in one line (None: it can):
    an architecture llama.cpp's converter or onnxruntime-genai's builder does not write."""
    import json

    scheme = get(key)
    try:
        if scheme.format == "gguf":
            from edgedistill.formats.gguf import check_model_dir

            check_model_dir(Path(model_dir))
        elif scheme.format == "onnx":
            from edgedistill.formats.onnx import check_model

            check_model(json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")))
    except UnsupportedError as e:
        return str(e)
    return None

