"""Llama-family model (transformers, float32) -> GGUF file that llama.cpp loads, at F32 or F16.

Quantized types are made from the F16 file by llama.cpp's own quantizer (see quantize/gguf.py), so this writer
only has to get the layout right. Facts about the format used here (GGUF spec, llama.cpp's loader):
- hyper-parameters under "llama.*": context_length, embedding_length, block_count, feed_forward_length,
  attention.head_count(_kv), attention.layer_norm_rms_epsilon, rope.freq_base, rope.dimension_count, and
  attention.key_length / value_length when heads x head_dim differs from the hidden size;
- tensor names token_embd, output_norm, output, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm,
  ffn_gate, ffn_up, ffn_down}; one-dimensional tensors stay F32;
- llama.cpp applies rotary embeddings to interleaved pairs, transformers to the two halves of each head, so the
  rows of the Q and K projections are reordered per head (the inverse of what transformers does when reading);
- the tokenizer as "gpt2" BPE: tokens, token types (1 normal, 3 control, 4 user-defined), merges, the name of
  the pre-tokenizer llama.cpp should run, special token ids, whether BOS is prepended, and the chat template.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from edgedistill import __version__
from edgedistill.errors import InvalidModelError, UnsupportedError

log = logging.getLogger(__name__)

SUPPORTED_ARCHS = ("llama",)
_LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4


def check_model(model) -> None:
    """Refuse what the writer cannot represent, before any work."""
    cfg = model.config
    if cfg.model_type not in SUPPORTED_ARCHS:
        raise UnsupportedError(
            f"GGUF export supports the {', '.join(SUPPORTED_ARCHS)} architecture, not {cfg.model_type!r}; "
            "export this model to ONNX instead (--variant onnx:fp32)"
        )
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise UnsupportedError("GGUF export of llama models with bias terms is not implemented")
    rope = _rope(cfg)
    if rope.get("rope_type", "default") != "default":
        raise UnsupportedError(f"GGUF export with rope scaling {rope} is not implemented")


def _rope(cfg) -> dict:
    """The rotary settings: transformers 5 keeps them in rope_parameters (rope_theta, rope_type, scaling
    fields); older configs have rope_theta and rope_scaling as attributes."""
    rope = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    if "rope_type" not in rope and "type" in rope:
        rope["rope_type"] = rope.pop("type")
    rope.setdefault("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    return rope


def _head_dim(cfg) -> int:
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def permute_for_llama_cpp(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a Q or K projection, (n_head * head_dim, in): per head, from [first half | second half] to
    interleaved pairs (0, d/2, 1, d/2+1, ...), which is how llama.cpp's rotary embedding reads them."""
    rows, cols = w.shape
    head_dim = rows // n_head
    return w.reshape(n_head, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """The `tokenizer.ggml.pre` name llama.cpp uses for this tokenizer's pre-tokenization."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [(p.get("type"), p.get("individual_digits")) for p in parts]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    if kinds == [("ByteLevel", None)] and byte_level[0].get("use_regex", True):
        return "gpt-2"
    if kinds == [("Digits", True), ("ByteLevel", None)] and byte_level[0].get("use_regex", True):
        return "smollm"  # digits split one by one, then the GPT-2 byte-level regex
    raise UnsupportedError(
        f"GGUF export does not know llama.cpp's name for the pre-tokenizer {json.dumps(pre)[:120]}; "
        "supported: byte-level BPE (gpt-2) and SmolLM's digits + byte-level (smollm)"
    )


def tokenizer_metadata(tokenizer) -> dict:
    """Everything llama.cpp needs to rebuild `tokenizer` (a transformers fast byte-level BPE tokenizer)."""
    if not getattr(tokenizer, "is_fast", False):
        raise UnsupportedError("GGUF export needs a fast (tokenizer.json) tokenizer")
    tj = json.loads(tokenizer.backend_tokenizer.to_str())
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UnsupportedError(
            f"GGUF export supports byte-level BPE tokenizers, not {model.get('type')!r}"
            + (" with byte fallback" if model.get("byte_fallback") else "")
        )
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in tj.get("added_tokens", [])}
    for content, t in added.items():
        vocab[content] = t["id"]
    n = max(vocab.values()) + 1
    tokens = [""] * n
    types = [TOKEN_NORMAL] * n
    for tok, i in vocab.items():
        tokens[i] = tok
    missing = [i for i, t in enumerate(tokens) if t == ""]
    if missing:
        raise InvalidModelError(f"tokenizer has holes in its vocabulary (first missing id {missing[0]})")
    for content, t in added.items():
        types[t["id"]] = TOKEN_CONTROL if t.get("special") else TOKEN_USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    probe = tokenizer("a")["input_ids"]
    add_bos = tokenizer.bos_token_id is not None and len(probe) > 1 and probe[0] == tokenizer.bos_token_id
    return {
        "pre": pre_tokenizer_name(tj),
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id,
        "pad": tokenizer.pad_token_id,
        "add_bos": bool(add_bos),
        "chat_template": tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
    }


def write_gguf(model, tokenizer, out: Path, *, dtype: str = "f16", name: str = "model") -> Path:
    """Write `model` (a transformers LlamaForCausalLM) and its tokenizer to `out` as one GGUF file."""
    import gguf

    check_model(model)
    if dtype not in ("f16", "f32"):
        raise UnsupportedError(f"the GGUF writer writes f16 or f32, not {dtype!r}; other types are quantized from f16")
    cfg = model.config
    tk = tokenizer_metadata(tokenizer)
    if len(tk["tokens"]) > cfg.vocab_size:
        raise InvalidModelError(f"tokenizer has {len(tk['tokens'])} tokens but the model's vocabulary is {cfg.vocab_size}")
    tokens, types = tk["tokens"], tk["types"]
    for i in range(len(tokens), cfg.vocab_size):  # embedding rows beyond the tokenizer: padding tokens
        tokens.append(f"[PAD{i}]")
        types.append(TOKEN_USER_DEFINED)

    head_dim = _head_dim(cfg)
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(name)
    w.add_string("general.quantized_by", f"edgedistill {__version__}")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(int(cfg.num_hidden_layers))
    w.add_feed_forward_length(int(cfg.intermediate_size))
    w.add_head_count(int(cfg.num_attention_heads))
    w.add_head_count_kv(int(cfg.num_key_value_heads))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_rope_freq_base(float(_rope(cfg)["rope_theta"]))
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(int(cfg.vocab_size))
    if head_dim * cfg.num_attention_heads != cfg.hidden_size:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tk["pre"])
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(tk["merges"])
    for key, fn in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("unk", w.add_unk_token_id),
                    ("pad", w.add_pad_token_id)):
        if tk[key] is not None:
            fn(int(tk[key]))
    w.add_add_bos_token(tk["add_bos"])
    w.add_add_eos_token(False)
    if tk["chat_template"]:
        w.add_chat_template(tk["chat_template"])

    for gname, arr in _tensors(model):
        if arr.ndim == 1 or dtype == "f32":
            w.add_tensor(gname, arr.astype(np.float32))
        else:
            w.add_tensor(gname, arr.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def _tensors(model):
    """(GGUF name, float32 numpy array) for every weight, in llama.cpp's order."""
    cfg = model.config
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    tied = getattr(cfg, "tie_word_embeddings", False)
    out = [("token_embd.weight", sd.pop("model.embed_tokens.weight"))]
    for i in range(cfg.num_hidden_layers):
        prefix = f"model.layers.{i}."
        for hf, g in _LAYER_TENSORS.items():
            key = prefix + hf
            if key not in sd:
                raise InvalidModelError(f"model has no tensor {key}; is it really a llama model?")
            arr = sd.pop(key)
            if hf.startswith("self_attn.q_proj"):
                arr = permute_for_llama_cpp(arr, cfg.num_attention_heads)
            elif hf.startswith("self_attn.k_proj"):
                arr = permute_for_llama_cpp(arr, cfg.num_key_value_heads)
            out.append((f"blk.{i}.{g}", arr))
    out.append(("output_norm.weight", sd.pop("model.norm.weight")))
    head = sd.pop("lm_head.weight", None)
    if head is not None and not tied:
        out.append(("output.weight", head))
    left = [k for k in sd if not k.endswith("rotary_emb.inv_freq")]
    if left:
        raise UnsupportedError(f"GGUF export does not know where to put tensor(s) {', '.join(left[:3])}")
    return out
