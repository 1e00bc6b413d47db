"""GGUF schemes: F16 written by llama.cpp's own converter (formats/gguf.py); every quantized type made from that F16 file by llama.cpp's own
quantizer (`llama_model_quantize`, as exposed by llama-cpp-python), so the files are what llama.cpp itself makes.

K-quants work on rows in super-blocks of 256 values; a tensor whose rows are not a multiple of 256 (the teacher's
576) falls back to another type (Q5_0, Q5_1, Q8_0 ...). The manifest lists the types really used per tensor
(`tensor_types`) and the share of weights that fell back, and the CLI prints it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

from edgedistill.errors import EdgeDistillError
from edgedistill.paths import atomic_file
from edgedistill.quantize import BuildContext, Format, Scheme, register, register_format
from edgedistill.runinfo import available_cores

log = logging.getLogger(__name__)

MODEL_FILE = "model.gguf"


def _f16(ctx: BuildContext) -> Path:
    """The F16 file of this export run, written once and shared by all GGUF variants."""
    from edgedistill.formats.gguf import convert

    path = ctx.work_dir / "model-f16.gguf"
    if not path.exists():
        with atomic_file(path) as tmp:
            convert(ctx.model_dir, tmp, dtype="f16", name=ctx.options.get("name", "model"))
    return path


def _build_f16(ctx: BuildContext) -> Path:
    out = ctx.out_dir / MODEL_FILE
    try:
        os.link(_f16(ctx), out)  # same file system: no second copy of the bytes
    except OSError:
        shutil.copyfile(_f16(ctx), out)
    return out


# llama.cpp's quantizer is one long C call: in our own process it would hold off Ctrl-C until it returned. It runs
# in a child process instead, which the parent kills when interrupted.
_CHILD = """
import ctypes, sys
import llama_cpp
src, dst, ftype, threads = sys.argv[1:5]
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + ftype)
params.nthread = int(threads)
sys.exit(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)))
"""


def llama_quantize(src: Path, dst: Path, ftype_name: str, threads: int | None = None) -> None:
    """Run llama.cpp's quantizer: src (F16/F32 GGUF) -> dst at LLAMA_FTYPE_<ftype_name>, in a child process that
    stops at once (and leaves no dst) on Ctrl-C or any error here."""
    _run_tool([sys.executable, "-c", _CHILD, str(src), str(dst), ftype_name, str(threads or available_cores())],
              f"quantizer ({ftype_name}, on {Path(src).name})", dst)


IMATRIX_FILE = "imatrix.gguf"
IMATRIX_CHUNK = 512  # tokens per llama-imatrix chunk


def _imatrix(ctx: BuildContext) -> Path:
    """llama.cpp's importance matrix of the F16 file over the calibration text (options["imatrix_text"], made by
    the export pipeline), computed once per export run by llama.cpp's own llama-imatrix."""
    from edgedistill.formats.llamacpp_tools import tool

    path = ctx.work_dir / IMATRIX_FILE
    if path.exists():
        return path
    text = ctx.work_dir / "imatrix-calibration.txt"
    text.write_text(ctx.options["imatrix_text"], encoding="utf-8")
    chunks = int(ctx.options.get("imatrix_chunks") or 32)
    with atomic_file(path) as tmp:
        _run_tool([str(tool("llama-imatrix")), "-m", str(_f16(ctx)), "-f", str(text), "-o", str(tmp),
                   "-c", str(IMATRIX_CHUNK), "-b", str(IMATRIX_CHUNK), "--chunks", str(chunks), "--no-ppl",
                   "--parse-special", "-t", str(ctx.threads or available_cores())], "llama-imatrix", tmp)
    return path


def _run_tool(cmd: list[str], what: str, out: Path) -> None:
    """Run a llama.cpp tool as a child process (stopped, leaving no `out`, on Ctrl-C: see children); its log is
    kept for --verbose, its last lines go into the error."""
    from edgedistill import children

    try:
        done = children.run(cmd, merge_output=True, output=out)
    except BaseException:
        Path(out).unlink(missing_ok=True)
        raise
    log.debug("%s:\n%s", what, done.stdout)
    if done.returncode != 0 or not Path(out).exists():
        Path(out).unlink(missing_ok=True)
        tail = " | ".join(ln.strip() for ln in done.stdout.splitlines()[-3:] if ln.strip())
        raise EdgeDistillError(f"llama.cpp's {what} failed (return code {done.returncode})" + (f": {tail}" if tail else ""))


def _quantized(ftype_name: str, takes_imatrix: bool = False):
    def build(ctx: BuildContext) -> Path:
        out = ctx.out_dir / MODEL_FILE
        if takes_imatrix and ctx.options.get("imatrix"):
            from edgedistill.formats.llamacpp_tools import tool

            imatrix = _imatrix(ctx)
            _run_tool([str(tool("llama-quantize")), "--imatrix", str(imatrix), str(_f16(ctx)), str(out), ftype_name,
                       str(ctx.threads or available_cores())], "llama-quantize", out)
            shutil.copyfile(imatrix, ctx.out_dir / IMATRIX_FILE)  # the bundle says what its 4 bits were fitted to
        else:
            llama_quantize(_f16(ctx), out, ftype_name, ctx.threads)
        return out

    return build


def tensor_report(path: Path) -> dict:
    """Types actually used in the file, bits per weight over tensor data (as llama.cpp counts it), fallbacks."""
    from edgedistill.models.gguf_file import open_gguf

    reader = open_gguf(path)
    types: dict[str, int] = {}
    weights_by_type: dict[str, int] = {}
    n_bytes = n_weights = 0
    for t in reader.tensors:
        name = t.tensor_type.name
        types[name] = types.get(name, 0) + 1
        weights_by_type[name] = weights_by_type.get(name, 0) + int(t.n_elements)
        n_bytes += int(t.n_bytes)
        n_weights += int(t.n_elements)
    return {"tensor_types": types, "weights_by_type": weights_by_type,
            "tensor_bits_per_weight": 8 * n_bytes / n_weights}


def fallback_share(report: dict, main_types: tuple[str, ...]) -> float:
    """Share of 2-D weights (1-D norms excluded by their F32 type) not stored in one of main_types."""
    w = {k: v for k, v in report["weights_by_type"].items() if k != "F32"}
    total = sum(w.values())
    return 0.0 if not total else sum(v for k, v in w.items() if k not in main_types) / total


class GGUF(Format):
    name, runtime, offline = "gguf", "llama-cpp-python", True

    def unsupported(self, model_dir: Path) -> str | None:
        from edgedistill.errors import UnsupportedError
        from edgedistill.formats.gguf import check_model_dir

        try:
            check_model_dir(model_dir)
        except UnsupportedError as e:
            return str(e)
        return None

    def manifest_extras(self, main: Path, scheme: Scheme, options: dict) -> dict:
        """The tensor types really used, the share that fell back from the scheme's types, the importance matrix."""
        quant = tensor_report(main)
        quant["fallback_share"] = fallback_share(quant, MAIN_TYPES[scheme.name])
        if (main.parent / IMATRIX_FILE).is_file():
            quant["imatrix"] = {"file": IMATRIX_FILE, "tool": "llama-imatrix", "chunks": options["imatrix_chunks"],
                                "chunk_tokens": IMATRIX_CHUNK,
                                "calibration": "train-split prompts of every domain, in the model's chat format"}
        return quant

    def native_bench(self, model_file: Path, *, prompt_tokens: int, new_tokens: int, threads: int,
                     repeats: int) -> dict | None:
        """llama.cpp's llama-bench (the figures llama.cpp users quote)."""
        from edgedistill.formats.llamacpp_tools import llama_bench

        return llama_bench(model_file, prompt_tokens=prompt_tokens, new_tokens=new_tokens, threads=threads,
                           repeats=repeats)


FORMAT = register_format(GGUF())

# Tolerances: mean KL / top-1 against float32 torch on held-out text. The values reached by llama.cpp's own tools
# on the default teacher are Q8_0 0.006 / 94.8%, Q4_K_M 0.063 / 86.5%, Q4_0 0.305 / 71%; these bounds leave room
# for other models and chunks while still catching a broken file (a wrong permutation gives KL > 5).
register(Scheme("gguf", "f16", "16-bit floats, norms in F32: reproduces the torch model", _build_f16,
                max_kl=0.005, min_top1=0.97, exact=True, nominal_bits=16))
register(Scheme("gguf", "q8_0", "8-bit blocks of 32 with one scale (llama.cpp Q8_0)", _quantized("Q8_0"),
                max_kl=0.03, min_top1=0.90, nominal_bits=8.5))
_IMATRIX = ("imatrix", "imatrix_chunks")  # the options of the types llama.cpp fits to an importance matrix
register(Scheme("gguf", "q5_k_m", "llama.cpp Q5_K_M: 5-bit K-quants, some tensors at 6 bits",
                _quantized("Q5_K_M", takes_imatrix=True), max_kl=0.15, min_top1=0.80, nominal_bits=5.7,
                options=_IMATRIX))
register(Scheme("gguf", "q4_k_m", "llama.cpp Q4_K_M: 4-bit K-quants, some tensors at 6 bits",
                _quantized("Q4_K_M", takes_imatrix=True), max_kl=0.25, min_top1=0.75, nominal_bits=4.9,
                options=_IMATRIX))
register(Scheme("gguf", "q4_0", "4-bit blocks of 32 with one scale (llama.cpp Q4_0)",
                _quantized("Q4_0", takes_imatrix=True), max_kl=0.6, min_top1=0.60, nominal_bits=4.5,
                options=_IMATRIX))

MAIN_TYPES = {"f16": ("F16",), "q8_0": ("Q8_0",), "q5_k_m": ("Q5_K", "Q6_K"), "q4_k_m": ("Q4_K", "Q6_K"),
              "q4_0": ("Q4_0",)}
