"""Torch schemes: bitsandbytes int8 (LLM.int8) and nf4 on CPU — the in-framework quantized reference that the
exported GGUF and ONNX files are compared with. The bundle is a Hugging Face directory whose safetensors hold the
quantized weights; loading it needs torch, transformers and bitsandbytes (the full install, not the runtime one).
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgedistill.quantize import BuildContext, Format, Scheme, register, register_format

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"


def bnb_config(name: str):
    import torch
    from transformers import BitsAndBytesConfig

    if name == "bnb_int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                              bnb_4bit_use_double_quant=False)


def load_quantized(model_dir: Path, name: str | None = None):
    """The model in `model_dir` quantized on load by bitsandbytes on the CPU (name None: a directory that was
    saved already quantized, whose config carries its quantization settings)."""
    import logging as _logging

    from transformers import AutoModelForCausalLM

    # bitsandbytes logs a warning about optional CPU kernels it can do without; keep the CLI quiet.
    _logging.getLogger("bitsandbytes").setLevel(_logging.ERROR)
    extra = {"quantization_config": bnb_config(name)} if name else {}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), device_map="cpu", use_safetensors=True, **extra)
    model.eval()
    return model


def _build(name: str):
    def build(ctx: BuildContext) -> Path:
        model = load_quantized(ctx.model_dir, name)
        model.save_pretrained(ctx.out_dir, safe_serialization=True)
        return ctx.out_dir / MODEL_FILE

    return build


class _TorchRunner:
    """The bitsandbytes model in torch, as validation reads it (logits; no greedy check: not an exact scheme)."""

    def __init__(self, main: Path):
        self.model = load_quantized(Path(main).parent)

    def logits(self, chunks):
        from edgedistill.models.generate import torch_logits

        return torch_logits(self.model, chunks)

    def greedy(self, prompt_ids: list[int], n: int) -> list[int]:
        from edgedistill.models.generate import torch_greedy

        return torch_greedy(self.model, prompt_ids, n)

    def close(self) -> None:
        self.model = None


class Torch(Format):
    """bitsandbytes in torch: validated and benchmarked in-framework, not loaded by the offline runtime."""

    name, runtime, offline = "torch", "torch", False

    def runner(self, main: Path, *, n_ctx: int, threads: int | None, ctx=None):
        return _TorchRunner(main)


FORMAT = register_format(Torch())

register(Scheme("torch", "bnb_int8", "bitsandbytes LLM.int8 (8-bit weights, outliers in float)", _build("bnb_int8"),
                max_kl=0.05, min_top1=0.88, nominal_bits=8))
register(Scheme("torch", "bnb_nf4", "bitsandbytes NF4 (4-bit normal-float blocks of 64)", _build("bnb_nf4"),
                max_kl=0.6, min_top1=0.60, nominal_bits=4.5))
