"""Tiny models of every model family the project supports, built in-process (no hub): each with its family's own
config class, its kind of tokenizer (byte-level BPE or SentencePiece) with the family's special tokens and chat
template, and the quirks the stages must handle (a turn that ends on a token other than eos, a vocabulary padded
past the tokenizer, QKV biases, q/k norms, Gemma's extra norms and sliding-window layers, Phi-3's fused
projections).

`TINY` has one entry per family of `edgedistill.models.families.FAMILIES`; tests/test_families.py takes each
through the whole trip, and fails for a registered family without an entry here."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.tiny import _CORPUS, fit_replies

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{{ '<|begin_of_text|>' }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
          " + m['content'] + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
GEMMA = ("{{ '<bos>' }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
         "{{ '<start_of_turn>' + role + '\n' + m['content'] + '<end_of_turn>\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")
PHI3 = ("{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
MISTRAL = ("{{ '<s>' }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
           "{% else %}{{ ' ' + m['content'] + '</s>' }}{% endif %}{% endfor %}")


@dataclass(frozen=True)
class Tok:
    """A tokenizer recipe: kind ("bpe" or "spm"), special tokens, which ends a turn, the chat template."""

    kind: str
    special: tuple[str, ...]
    bos: str
    eos: str
    pad: str
    unk: str
    end_of_turn: str  # the token the chat template closes the assistant's turn with
    template: str
    extra: dict = field(default_factory=dict)  # more tokenizer_config.json entries


@dataclass(frozen=True)
class TinyFamily:
    name: str
    config: Callable  # (vocab_size, special ids) -> a transformers config
    tok: Tok
    vocab_pad: int = 0  # config.vocab_size rows past the tokenizer (Qwen2.5 pads its embedding)
    layers: int = 4

    def build(self, out: Path, *, layers: int | None = None, seed: int = 0) -> Path:
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig

        out = Path(out)
        tok = build_tokenizer(self.tok, out)
        ids = {name: tok.convert_tokens_to_ids(getattr(self.tok, name)) for name in ("bos", "eos", "pad")}
        end = sorted({ids["eos"], tok.convert_tokens_to_ids(self.tok.end_of_turn)})
        cfg = self.config(vocab_size=len(tok) + self.vocab_pad, layers=layers or self.layers)
        cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = ids["bos"], end if len(end) > 1 else end[0], ids["pad"]
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
        with torch.no_grad():  # random norms and biases (zeros / ones hide a wrongly sliced tensor)
            for name, p in model.named_parameters():
                if p.ndim == 1:
                    p.copy_(torch.randn_like(p) * 0.3 + (0 if "bias" in name or self.name.startswith("gemma") else 1))
        model.generation_config = GenerationConfig(bos_token_id=ids["bos"], eos_token_id=end, pad_token_id=ids["pad"])
        model.save_pretrained(out, safe_serialization=True)
        return out


def _spm(tok: Tok, path: Path) -> None:
    """A SentencePiece BPE model trained on the corpus, with byte fallback and the family's special pieces."""
    import sentencepiece as spm

    if tok.extra.get("class") == "GemmaTokenizer":  # Gemma's order: <pad> <eos> <bos> <unk>
        ids = dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
                   unk_piece="<unk>")
        reserved = {"<pad>", "<eos>", "<bos>", "<unk>"}
    else:  # Llama's: <unk> <s> </s>, no pad piece
        ids, reserved = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1), {"<unk>", "<s>", "</s>"}
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sorted(set(_CORPUS)) * 20), model_writer=buf, vocab_size=320, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2, num_threads=1,
        add_dummy_prefix=tok.extra.get("add_dummy_prefix", True), remove_extra_whitespaces=False, **ids,
        user_defined_symbols=[s for s in tok.special if s not in reserved])
    path.write_bytes(buf.getvalue())


def build_tokenizer(tok: Tok, out: Path):
    """Write the tokenizer files into `out` and return the transformers tokenizer loaded from them."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    specials = {"bos_token": tok.bos, "eos_token": tok.eos, "pad_token": tok.pad, "unk_token": tok.unk}
    if tok.kind == "spm":
        _spm(tok, out / "tokenizer.model")
        conf = {"tokenizer_class": tok.extra.get("class", "LlamaTokenizer"), **specials, "add_bos_token": False,
                "legacy": tok.extra.get("legacy", True),
                "add_eos_token": False, "model_max_length": 1024, "chat_template": tok.template,
                **({"mask_token": None} if tok.extra.get("class") == "GemmaTokenizer" else {})}
        (out / "tokenizer_config.json").write_text(json.dumps(conf))
        t = AutoTokenizer.from_pretrained(out)
        if tok.extra.get("rstrip"):  # Phi-3's turn markers swallow the whitespace after them
            from tokenizers import AddedToken

            t.add_special_tokens({"additional_special_tokens": [AddedToken(s, rstrip=True, special=True, normalized=False)
                                                                for s in tok.extra["rstrip"]]})
        t.model_input_names = ["input_ids", "attention_mask"]
        t.chat_template = tok.template
        t.save_pretrained(out)  # tokenizer.json beside tokenizer.model, as the families ship them
        return AutoTokenizer.from_pretrained(out)
    from tests.tiny import build_tokenizer as bpe

    base = bpe()  # byte-level BPE; the family's special tokens added after the trained ones
    base.add_special_tokens({"additional_special_tokens": [s for s in tok.special if s not in base.get_vocab()]})
    t = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, **specials, model_max_length=1024,
                                model_input_names=["input_ids", "attention_mask"])
    t.chat_template = tok.template
    t.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


_QWEN_TOK = Tok("bpe", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), bos="<|im_start|>", eos="<|im_end|>",
                pad="<|endoftext|>", unk="<|endoftext|>", end_of_turn="<|im_end|>", template=CHATML)


def _common(vocab_size: int, layers: int) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)


def _llama(vocab_size, layers):
    from transformers import LlamaConfig

    return LlamaConfig(**_common(vocab_size, layers), rope_theta=500000.0)


def _mistral(vocab_size, layers):
    from transformers import MistralConfig

    return MistralConfig(**{**_common(vocab_size, layers), "tie_word_embeddings": False}, sliding_window=None)


def _qwen2(vocab_size, layers):
    from transformers import Qwen2Config

    return Qwen2Config(**_common(vocab_size, layers), use_sliding_window=False)


def _qwen3(vocab_size, layers):
    from transformers import Qwen3Config

    return Qwen3Config(**_common(vocab_size, layers), head_dim=32, use_sliding_window=False)


def _gemma2(vocab_size, layers):
    from transformers import Gemma2Config

    return Gemma2Config(**_common(vocab_size, layers), head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                        hidden_activation="gelu_pytorch_tanh")


def _gemma3(vocab_size, layers):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(**_common(vocab_size, layers), head_dim=16, query_pre_attn_scalar=16, sliding_window=8)


def _phi3(vocab_size, layers):
    from transformers import Phi3Config

    return Phi3Config(**{**_common(vocab_size, layers), "tie_word_embeddings": False}, sliding_window=None,
                      original_max_position_embeddings=1024)  # a 4k-style model (no LongRoPE)


_GEMMA_TOK = Tok("spm", ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"),
                 bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", end_of_turn="<end_of_turn>", template=GEMMA,
                 extra={"class": "GemmaTokenizer", "add_dummy_prefix": False})

TINY: dict[str, TinyFamily] = {f.name: f for f in [
    TinyFamily("llama", _llama, Tok("bpe", ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                            "<|end_header_id|>", "<|eot_id|>"),
                                    bos="<|begin_of_text|>", eos="<|end_of_text|>", pad="<|end_of_text|>",
                                    unk="<|end_of_text|>", end_of_turn="<|eot_id|>", template=LLAMA3)),
    TinyFamily("mistral", _mistral, Tok("spm", ("<unk>", "<s>", "</s>"), bos="<s>", eos="</s>", pad="<unk>",
                                        unk="<unk>", end_of_turn="</s>", template=MISTRAL)),
    TinyFamily("qwen2", _qwen2, _QWEN_TOK, vocab_pad=61),
    TinyFamily("qwen3", _qwen3, _QWEN_TOK),
    TinyFamily("gemma2", _gemma2, _GEMMA_TOK),
    TinyFamily("gemma3", _gemma3, _GEMMA_TOK, layers=7),  # five sliding-window layers, a global one, a sliding one
    TinyFamily("phi3", _phi3, Tok("spm", ("<unk>", "<s>", "</s>", "<|endoftext|>", "<|user|>", "<|assistant|>",
                                          "<|end|>"),
                                  bos="<s>", eos="<|endoftext|>", pad="<|endoftext|>", unk="<unk>", end_of_turn="<|end|>",
                                  template=PHI3, extra={"rstrip": ("<|user|>", "<|assistant|>", "<|end|>")})),
]}


def build_chatty(name: str, out: Path, *, steps: int = 200, seed: int = 0) -> tuple[Path, dict[str, str]]:
    """A tiny model of family `name` fitted to reply to each question with one corpus sentence, close its turn
    with the family's end-of-turn token and then, as an unstopped model would, go on with an invented user turn
    and eos. Returns the folder and {question: the reply}."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fam = TINY[name]
    fam.build(out, layers=2, seed=seed)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    sentences = sorted(set(_CORPUS))
    replies = {f"Question {i}?": s for i, s in enumerate(sentences)}
    rows = []
    for q, s in replies.items():
        prompt = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": s},
                                        {"role": "user", "content": "Invented question?"}], tokenize=False)
        p = tok(prompt, add_special_tokens=False).input_ids
        rows.append((p, tok(full[len(prompt):] + fam.tok.eos, add_special_tokens=False).input_ids))
    fit_replies(model, rows, tok.pad_token_id, steps=steps, seed=seed)
    model.save_pretrained(out, safe_serialization=True)
    return out, replies
