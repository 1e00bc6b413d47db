"""GGUF file -> Hugging Face directory (float32 safetensors + tokenizer + chat template).

transformers reads the GGUF tensors, undoes llama.cpp's Q/K row permutation and de-quantizes to float32;
the tokenizer is rebuilt from the file's own metadata (see gguf_file.build_tokenizer) because transformers'
generic conversion gets the special tokens and the BOS rule of byte-level BPE files wrong.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edgedistill import __version__
from edgedistill.errors import InvalidModelError
from edgedistill.models import gguf_file
from edgedistill.models.locate import save_tokenizer

log = logging.getLogger(__name__)

PROVENANCE_FILE = "edgedistill.json"
# Raised whenever the conversion writes something different; a pulled model converted by an older one is
# converted again on the next pull (2: tokenizer_config.json names the model inputs).
CONVERSION = 2


def load_gguf(path: Path, *, dtype=None):
    """(model, tokenizer) from a GGUF file, in float32 by default."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # callers show their own progress
    path = Path(path)
    reader = gguf_file.open_gguf(path)
    meta = gguf_file.metadata(reader)
    del reader  # release the memmap before transformers opens the file again
    if not meta.get("tokenizer.ggml.tokens"):
        raise InvalidModelError(f"{path.name} carries no tokenizer (no tokenizer.ggml.tokens); it cannot be a teacher")
    try:
        tokenizer = gguf_file.build_tokenizer(None, meta) or gguf_file.build_sentencepiece_tokenizer(meta)
        if tokenizer is None:
            log.warning("tokenizer of %s rebuilt by transformers' generic GGUF converter", path.name)
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=dtype or torch.float32
        )
    except Exception as e:  # the file is user input: any failure inside transformers means "unusable file"
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InvalidModelError(f"transformers cannot load {path.name}: {first}") from e
    tokenizer.model_input_names = list(gguf_file.MODEL_INPUTS)  # also for transformers' own GGUF tokenizer
    # The weights are now plain float tensors: drop any quantizer marker so save_pretrained accepts them.
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for key in ("bos", "eos", "pad"):
        tid = getattr(tokenizer, f"{key}_token_id")
        if tid is not None:
            setattr(model.config, f"{key}_token_id", tid)
            setattr(model.generation_config, f"{key}_token_id", tid)
    return model, tokenizer


def convert_gguf_to_hf(path: Path, out_dir: Path, *, source: dict | None = None) -> Path:
    """Write `path` as a Hugging Face model directory into `out_dir` (which the caller makes atomic)."""
    model, tokenizer = load_gguf(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    save_tokenizer(tokenizer, out_dir)
    provenance = {"converted_from": Path(path).name, "edgedistill_version": __version__, "conversion": CONVERSION,
                  **(source or {})}
    (out_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return out_dir
