"""GGUF LoRA adapters: the adapter a pretrained student was distilled with (`distill --lora-rank`), alone, as the GGUF
LoRA file llama.cpp applies over its base model's GGUF at load time. One base file on a device and one small file
per task, instead of one whole model per task.

The adapter is written by llama.cpp's own `convert_lora_to_gguf.py` (formats/gguf.py: convert_lora) against the base
model's folder (the student as it was before distillation, named in the adapter's config). Validation loads the base
model's F16 GGUF with the adapter in llama.cpp and compares it with the merged student in torch, like any variant.
A bundle of this format is not loadable alone: `runtime.load(base_bundle, adapter=this_bundle)` checks that the
base bundle was exported from the model the adapter was trained on (its source sha256).
"""

from __future__ import annotations

import json
from pathlib import Path

from edgedistill.errors import EdgeDistillError
from edgedistill.paths import atomic_file
from edgedistill.quantize import BuildContext, Format, Scheme, register, register_format

ADAPTER_DIR = "adapter"  # inside a distilled student folder (distill.stage writes it there)
ADAPTER_FILE = "adapter.gguf"
ADAPTER_VARIANT = "gguf-lora:f16"  # the variant `run` exports beside a LoRA-trained student's merged files


def adapter_base(model_dir: Path) -> tuple[str, Path]:
    """(the base model as the adapter names it, its Hugging Face folder) for a student folder holding an adapter."""
    from edgedistill.models.locate import resolve

    config = Path(model_dir) / ADAPTER_DIR / "adapter_config.json"
    if not config.is_file():
        raise EdgeDistillError(f"{model_dir} holds no LoRA adapter ({ADAPTER_DIR}/adapter_config.json): distill a "
                               "pretrained student with --lora-rank N (the default for one) to export an adapter")
    try:
        base = str(json.loads(config.read_text(encoding="utf-8"))["base_model_name_or_path"])
    except (OSError, ValueError, KeyError, TypeError):
        raise EdgeDistillError(f"{config} names no base model (base_model_name_or_path)") from None
    ref = resolve(base, pull=True)
    if ref.kind != "hf_dir":
        raise EdgeDistillError(f"the adapter's base model {base!r} is not a Hugging Face folder or registry model here")
    return base, ref.path


def _base_f16(ctx: BuildContext) -> Path:
    """The base model as an F16 GGUF (validation's base), converted once per export run."""
    from edgedistill.formats.gguf import convert

    path = ctx.work_dir / "adapter-base-f16.gguf"
    if not path.exists():
        _, base_dir = adapter_base(ctx.model_dir)
        with atomic_file(path) as tmp:
            convert(base_dir, tmp, dtype="f16", name=base_dir.name)
    return path


def _build(dtype: str):
    def build(ctx: BuildContext) -> Path:
        from edgedistill.formats.gguf import convert_lora, model_name
        from edgedistill.runtime.bundle import source_hash

        base, base_dir = adapter_base(ctx.model_dir)
        out = ctx.out_dir / ADAPTER_FILE
        convert_lora(ctx.model_dir / ADAPTER_DIR, base_dir, out, dtype=dtype)
        peft = json.loads((ctx.model_dir / ADAPTER_DIR / "adapter_config.json").read_text(encoding="utf-8"))
        # the base by name and hash (the runtime matches it by hash), never a folder of this machine
        ctx.options["adapter"] = {"base": model_name(base), "base_sha256": source_hash(base_dir), "rank": peft.get("r"),
                                  "alpha": peft.get("lora_alpha"),
                                  "target_modules": sorted(peft.get("target_modules") or [])}
        return out

    return build


class GGUFLora(Format):
    name, runtime, offline = "gguf-lora", "llama-cpp-python", False  # loaded over a base bundle, never alone

    def unsupported(self, model_dir: Path) -> str | None:
        if not (Path(model_dir) / ADAPTER_DIR / "adapter_config.json").is_file():
            return (f"{model_dir} holds no LoRA adapter; distill a pretrained student with --lora-rank N to make "
                    "one")
        from edgedistill.quantize.gguf import FORMAT as GGUF_FORMAT

        return GGUF_FORMAT.unsupported(model_dir)

    def runner(self, main: Path, *, n_ctx: int, threads: int | None, ctx: BuildContext | None = None):
        from edgedistill.runtime.gguf import GGUFLogits

        if ctx is None:
            raise EdgeDistillError("a GGUF LoRA adapter is validated over its base model: the export gives it")
        return GGUFLogits(_base_f16(ctx), n_ctx=n_ctx, threads=threads, adapter=main)

    def manifest_extras(self, main: Path, scheme: Scheme, options: dict) -> dict:
        from edgedistill.quantize.gguf import tensor_report

        return {**tensor_report(main), "adapter": options["adapter"]}


FORMAT = register_format(GGUFLora())

# Base F16 + adapter F16 in llama.cpp against the merged float32 student: the F16 file's own bounds, loosened a
# little for the adapter's product B·A rounded to 16 bits in two factors.
register(Scheme("gguf-lora", "f16", "the LoRA adapter alone (F16), applied by llama.cpp over the base model's GGUF",
                _build("f16"), max_kl=0.01, min_top1=0.95, nominal_bits=16))
