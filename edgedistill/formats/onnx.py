"""Model directory -> ONNX decoder for onnxruntime-genai, through its own model builder.

The builder (`onnxruntime_genai.models.builder`) writes one graph with fused GroupQueryAttention and rotary
embeddings, MatMulNBits int4/int8 weights when asked, `genai_config.json` (what onnxruntime-genai's runtime
reads) and the tokenizer files. The graph takes input_ids, attention_mask and past_key_values.N.{key,value}
and returns logits (all positions) and present.N.{key,value}; plain onnxruntime loads it too.

The builder runs in a child process: it logs a line per tensor, holds the whole model while it works, and a
failure there must not take the caller down. It never reaches a hub: the input is a local folder and the
child runs with the hub offline.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from edgedistill import children
from edgedistill.errors import EdgeDistillError, UnsupportedError

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
CONFIG_FILE = "genai_config.json"
# Architectures the builder has a module for; the tests here take llama through export and the runtime (the
# other families get their tests with the family registry).
SUPPORTED_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3_text")
PRECISIONS = ("fp32", "int8", "int4")


def check_model(config: dict) -> None:
    """Refuse what the builder path does not cover, before any work."""
    if config.get("model_type") not in SUPPORTED_ARCHS:
        raise UnsupportedError(
            f"ONNX export supports {', '.join(SUPPORTED_ARCHS)}, not {config.get('model_type')!r}; "
            "export this model to GGUF instead (--variant gguf:q8_0)"
        )


# The builder in a child process, as `python -m onnxruntime_genai.models.builder` but for one shim: its Gemma 3
# path reads `config.rope_theta`, `config.rope_local_base_freq` and one flat `rope_parameters`, which transformers 5
# keeps per layer type in `rope_parameters`; the config the builder loads gets them back from there.
_DRIVER = r"""
import runpy, sys
import transformers

_load = transformers.AutoConfig.from_pretrained.__func__

def from_pretrained(cls, *args, **kwargs):
    config = _load(cls, *args, **kwargs)
    text = getattr(config, "text_config", config)
    rope = getattr(text, "rope_parameters", None) or {}
    if "sliding_attention" in rope and "full_attention" in rope:
        text.rope_theta = rope["full_attention"]["rope_theta"]
        text.rope_local_base_freq = rope["sliding_attention"]["rope_theta"]
        text.rope_parameters = dict(rope["full_attention"])  # the builder reads one flat set (its scaling type)
    return config

transformers.AutoConfig.from_pretrained = classmethod(from_pretrained)
sys.argv[0] = "builder"
runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
"""


def build_onnx(model_dir: Path, out_dir: Path, precision: str, options: dict | None = None, *,
               trust_remote_code: bool = False) -> Path:
    """Write `out_dir`/model.onnx (+ model.onnx.data), genai_config.json and the tokenizer files.

    options are the builder's own extra options (e.g. block_size=32, accuracy_level=4, algo_config="k_quant",
    is_symmetric=True, matmul_mixed_precision="last_matmul:int8"); None values are left to the builder."""
    if precision not in PRECISIONS:
        raise EdgeDistillError(f"unknown ONNX precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_model(json.loads((model_dir / "config.json").read_text()))
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = out_dir / ".builder-cache"
    extra = {"hf_token": "false", "hf_remote": str(bool(trust_remote_code)).lower()}
    extra.update({k: _text(v) for k, v in (options or {}).items() if v is not None})
    cmd = [sys.executable, "-c", _DRIVER, "-i", str(model_dir), "-o", str(out_dir),
           "-p", precision, "-e", "cpu", "-c", str(cache), "--extra_options", *(f"{k}={v}" for k, v in extra.items())]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    log.debug("running %s", " ".join(cmd))
    done = children.run(cmd, env=env, output=out_dir)
    _remove_tree(cache)
    if done.returncode != 0 or not (out_dir / MODEL_FILE).exists():
        lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        last = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
        raise EdgeDistillError(f"onnxruntime-genai's model builder failed on {model_dir} ({precision}): "
                               f"{last.strip()[:300]}")
    return out_dir / MODEL_FILE


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
