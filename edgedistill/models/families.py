"""Model families: what each stage needs to know about an architecture beyond its config.

One entry per family, keyed by the `model_type` values of its transformers configs. tests/test_families.py
takes a tiny model of every entry through the whole trip (prune, distill, GGUF and ONNX export, runtime); an entry
without a tiny model there fails the suite. A model of an unknown type is refused by the stages that need the
family (pruning, ONNX), up front, in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgedistill.errors import UnsupportedError


# the linear layers of a decoder block, as most families name them: LoRA adapts all of them by default (attention and
# FFN alike), the common choice for instruction tuning (QLoRA, Dettmers et al. 2023) and what was measured here
_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    # llama.cpp lays out sliding-window layers by a fixed period for this family: with period p, layer i uses the
    # window unless i % p == p - 1 (Gemma 2: every other layer, Gemma 3: five in six). 0: no per-layer pattern.
    swa_period: int = 0
    # embeddings multiplied by sqrt(hidden size), and block outputs normed before the residual (Gemma): pruning
    # the hidden size rescales the post-norms so the residual stream keeps its proportions
    scaled_embeddings: bool = False
    # llama.cpp's loader for this architecture sizes the attention projections by the hidden size, so a pruned
    # student must keep heads x head_dim == hidden (Qwen2, Phi-3); elsewhere the widths are free
    attention_is_hidden: bool = False
    # llama.cpp gives this family's special tokens their whitespace rules (Phi-3's rstrip) only when the GGUF's
    # general.name contains this tag: the converter's name for a student gets it
    gguf_name_tag: str | None = None
    # the modules a LoRA adapter goes on (peft's target_modules): every projection of a block, by this family's names
    lora_targets: tuple[str, ...] = _PROJECTIONS


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("llama", ("llama",)),
    Family("mistral", ("mistral",)),
    Family("qwen2", ("qwen2",), attention_is_hidden=True),
    Family("qwen3", ("qwen3",)),
    Family("gemma2", ("gemma2",), swa_period=2, scaled_embeddings=True),
    Family("gemma3", ("gemma3_text",), swa_period=6, scaled_embeddings=True),
    Family("phi3", ("phi3",), attention_is_hidden=True, gguf_name_tag="phi3",
           lora_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj")),
]}

_BY_TYPE = {t: f for f in FAMILIES.values() for t in f.model_types}


def family_of(config, stage: str) -> Family:
    """The family of a transformers config (or its dict); `stage` names what needs it, for the message."""
    fam = find_family(config)
    if fam is None:
        model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
        raise UnsupportedError(f"{stage} does not support {model_type!r} models; it supports the families "
                               f"{', '.join(FAMILIES)} (see docs/models.md, Model families)")
    return fam


def find_family(config) -> Family | None:
    """The family of a config (or its dict), None when none is registered."""
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    return _BY_TYPE.get(model_type)


def swa_pattern(fam: Family, layers: int) -> list[str] | None:
    """The per-layer attention types llama.cpp assumes for `layers` blocks of `fam` (None: no pattern)."""
    if not fam.swa_period:
        return None
    p = fam.swa_period
    return ["full_attention" if i % p == p - 1 else "sliding_attention" for i in range(layers)]


def end_of_generation_ids(model, tokenizer) -> list[int]:
    """Every id the model declares as ending its output: the tokenizer's eos, the config's and the generation
    config's eos ids (Llama 3's <|eot_id|>, Gemma's <end_of_turn>, Phi-3's <|end|> are declared there)."""
    ids: set[int] = set()
    sources = [getattr(tokenizer, "eos_token_id", None), getattr(getattr(model, "config", None), "eos_token_id", None),
               getattr(getattr(model, "generation_config", None), "eos_token_id", None)]
    for v in sources:
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return sorted(ids)
