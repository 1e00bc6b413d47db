"""quantize: the formats a model can be exported to and their schemes, one module per format.

Each format is one object (`Format`) in one module, registered once with its schemes: which architectures it
takes (and why not), how each scheme is built, the runner that validation compares with the float model, and
what its bundles' manifests record beside the common fields:
- quantize/gguf.py  — GGUF: F16 by llama.cpp's converter, Q8_0 / Q4_0 / Q4_K_M / Q5_K_M by llama.cpp's quantizer;
- quantize/onnx.py  — ONNX: fp32, int8 / int4 weight-only (MatMulNBits) by onnxruntime-genai's model builder;
- quantize/bnb.py   — torch: bitsandbytes int8 and nf4, the in-framework reference.
A format the offline runtime loads has its runtime backend in edgedistill/runtime (the runtime ships without this
package's dependencies); docs/formats.md lists what adding a format touches.

Tolerances are on the validation against the float32 torch model (see export/validate.py): a variant whose
mean KL is above max_kl or whose top-1 agreement is below min_top1 fails and is not written unless forced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgedistill.errors import EdgeDistillError, UnsupportedError

# modules of this package, each registering one Format and its schemes
FORMAT_MODULES = ("gguf", "gguf_lora", "onnx", "bnb")


class Format:
    """What one format knows. A module subclasses it once (name, runtime, and the methods it needs) and calls
    register_format with the instance before registering its schemes."""

    name: str = ""  # the FORMAT of FORMAT:SCHEME keys
    runtime: str = ""  # the runtime its files are validated and run in
    offline: bool = False  # the offline runtime (edgedistill.runtime) loads its bundles

    def unsupported(self, model_dir: Path) -> str | None:
        """Why the transformers model in model_dir cannot be written in this format (None: it can)."""
        return None

    def runner(self, main: Path, *, n_ctx: int, threads: int | None, ctx: "BuildContext | None" = None):
        """What validation compares with the float model: .logits(chunks), .greedy(ids, n), .close(). The offline
        formats' runners are their runtime backends' Logits. `ctx`: the export's build context, for a file that runs
        only beside others (an adapter over its base)."""
        from edgedistill.runtime.bundle import backend

        return backend(self.name).Logits(main, n_ctx=n_ctx, threads=threads)

    def manifest_extras(self, main: Path, scheme: "Scheme", options: dict) -> dict:
        """What a bundle's manifest records of this format's quantization beyond the common fields."""
        return {}

    def native_bench(self, model_file: Path, *, prompt_tokens: int, new_tokens: int, threads: int,
                     repeats: int) -> dict | None:
        """The runtime's own benchmark tool on the file, which the bench runs beside its own timing (None: the
        runtime has none); raises EdgeDistillError where the tool is not built."""
        return None


_FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    if fmt.name in _FORMATS:
        raise EdgeDistillError(f"format {fmt.name} is registered twice")
    _FORMATS[fmt.name] = fmt
    return fmt


def formats() -> dict[str, Format]:
    _load_all()
    return dict(_FORMATS)


def format_of(key: str) -> Format:
    """The Format of a FORMAT:SCHEME key or a format name."""
    return formats()[get(key).format if ":" in key else key]


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
        return _FORMATS[self.format].runtime


_SCHEMES: dict[str, Scheme] = {}


def register(scheme: Scheme) -> Scheme:
    if scheme.format not in _FORMATS:
        raise EdgeDistillError(f"scheme {scheme.key}: format {scheme.format!r} is not registered (register_format first)")
    if scheme.key in _SCHEMES:
        raise EdgeDistillError(f"scheme {scheme.key} is registered twice")
    _SCHEMES[scheme.key] = scheme
    return scheme


def _load_all() -> None:
    """Import each format's module (it registers its Format and schemes), in FORMAT_MODULES' order."""
    import importlib

    for name in FORMAT_MODULES:
        importlib.import_module(f"edgedistill.quantize.{name}")


def schemes() -> dict[str, Scheme]:
    _load_all()
    return dict(_SCHEMES)


def get(key: str) -> Scheme:
    """'gguf:q4_k_m' -> Scheme; a wrong format or scheme names the valid ones."""
    _load_all()
    fmt, _, name = key.partition(":")
    if fmt not in _FORMATS:
        raise UnsupportedError(f"unknown format {fmt!r} in {key!r}; formats: {', '.join(_FORMATS)}")
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
    an architecture the format's writer does not write."""
    return format_of(key).unsupported(Path(model_dir))


def bundle_name(key: str) -> str:
    """The folder a variant's bundle is written to: 'gguf:q4_k_m' -> 'gguf-q4_k_m'."""
    return key.replace(":", "-")
