"""Model directory -> ONNX decoder with KV cache, through optimum-onnx (task text-generation-with-past).

The exported graph takes input_ids, attention_mask, position_ids and past_key_values.N.{key,value}, and returns
logits and present.N.{key,value}; onnxruntime and optimum's ORTModelForCausalLM both load it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgedistill.errors import UnsupportedError

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
SUPPORTED_ARCHS = ("llama", "mistral", "qwen2", "phi3", "gemma")


def export_onnx(model_dir: Path, out_dir: Path, *, trust_remote_code: bool = False) -> Path:
    """Export the float32 model in `model_dir` to `out_dir`/model.onnx (+ its external data when > 2 GB)."""
    import json

    from optimum.exporters.onnx import main_export

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    if cfg.get("model_type") not in SUPPORTED_ARCHS:
        raise UnsupportedError(
            f"ONNX export is tested for {', '.join(SUPPORTED_ARCHS)}, not {cfg.get('model_type')!r}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    main_export(str(model_dir), str(out_dir), task="text-generation-with-past", do_validation=False,
                local_files_only=True, trust_remote_code=trust_remote_code, dtype="fp32")
    # optimum writes config.json, generation_config.json and the tokenizer beside the graph; ORTModelForCausalLM
    # needs them, so they stay.
    return out_dir / MODEL_FILE
