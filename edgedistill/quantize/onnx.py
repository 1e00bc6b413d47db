"""ONNX schemes, all written by onnxruntime-genai's model builder (formats/onnx.py) for its runtime.

- fp32: the float graph; reproduces the torch model.
- int8 / int4: weight-only, blockwise (MatMulNBits for the linear layers; with tied embeddings the builder
  shares one quantized table between the embedding Gather and the lm_head). Activations stay float between
  layers; inside MatMulNBits they are quantized to int8 per block (accuracy level 4), which keeps the
  matmuls on onnxruntime's integer kernels: float compute dequantizes every weight on every call and decodes
  many times slower on a CPU.

onnxruntime's activation-quantizing int8 schemes (dynamic and static QDQ) are not offered: on the default
teacher both failed their tolerance (KL 0.47 and 3.4, docs/export.md), and weight-only int8 keeps KL near 0.
"""

from __future__ import annotations

from pathlib import Path

from edgedistill.errors import EdgeDistillError
from edgedistill.quantize import BuildContext, Format, Scheme, register, register_format

MODEL_FILE = "model.onnx"
# MatMulNBits computes with int8 activations (per block of the input): onnxruntime's fast CPU kernels.
DEFAULT_ACCURACY = 4
ALGORITHMS = ("rtn", "k_quant", "k_quant_mixed")
WEIGHT_OPTIONS = ("block_size", "symmetric", "accuracy_level", "algorithm", "head_bits")


def builder_options(options: dict, *, default_algorithm: str, default_block: int = 32,
                    default_symmetric: bool = True, default_head_bits: int | None = None) -> dict:
    """Our scheme options -> the builder's extra options for a weight-only precision."""
    algorithm = options.get("algorithm") or default_algorithm
    if algorithm not in ALGORITHMS:
        raise EdgeDistillError(f"unknown weight-only algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    head_bits = options.get("head_bits") or default_head_bits
    symmetric = options.get("symmetric")
    out = {
        "block_size": int(options.get("block_size") or default_block),
        "is_symmetric": default_symmetric if symmetric is None else bool(symmetric),
        "accuracy_level": DEFAULT_ACCURACY if options.get("accuracy_level") is None else options["accuracy_level"],
        "algo_config": algorithm,
    }
    if head_bits == 8 and algorithm != "k_quant_mixed":  # k_quant_mixed already keeps the lm_head at 8 bits
        out["matmul_mixed_precision"] = "last_matmul:int8"
    return out


def _build(precision: str, **defaults):
    def build(ctx: BuildContext) -> Path:
        from edgedistill.formats.onnx import build_onnx

        extra = builder_options(ctx.options, **defaults) if precision != "fp32" else {}
        return build_onnx(ctx.model_dir, ctx.out_dir, precision, extra,
                          trust_remote_code=bool(ctx.options.get("trust_remote_code")))

    return build


class ONNX(Format):
    name, runtime, offline = "onnx", "onnxruntime-genai", True

    def unsupported(self, model_dir: Path) -> str | None:
        import json

        from edgedistill.errors import UnsupportedError
        from edgedistill.formats.onnx import check_model

        try:
            check_model(json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")))
        except UnsupportedError as e:
            return str(e)
        return None


FORMAT = register_format(ONNX())

register(Scheme("onnx", "fp32", "float32 graph (onnxruntime-genai builder, GroupQueryAttention): reproduces the "
                "torch model", _build("fp32"), max_kl=1e-4, min_top1=0.995, exact=True, nominal_bits=32))
register(Scheme("onnx", "int8", "weight-only int8 in blocks of 32 (MatMulNBits, round-to-nearest), int8 compute",
                _build("int8", default_algorithm="rtn"), max_kl=0.03, min_top1=0.90, nominal_bits=9,
                options=WEIGHT_OPTIONS))
# k_quant_mixed: k-quant int4, with the lm_head (tied: the shared embedding table too) and the most sensitive
# layers at int8; the closest to the float model of the settings measured on the default teacher
# (benchmarks/results/runtime/onnx_int4_sweep.md), all on the integer kernel.
register(Scheme("onnx", "int4", "weight-only int4 in blocks of 32 (MatMulNBits, k-quant; lm_head and the most "
                "sensitive layers at int8), int8 compute", _build("int4", default_algorithm="k_quant_mixed"), max_kl=0.6, min_top1=0.60, nominal_bits=5,
                options=WEIGHT_OPTIONS))
