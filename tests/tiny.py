"""Tiny random llama models and a tiny local tokenizer, built in-process (no hub), for fast tests."""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "Where is my order? The parcel was due on Monday.",
    "Machine M-204 raised alarm E17: spindle temperature high.",
    "Please summarize the shift handover notes for line 3.",
    "The capital of France is Paris. The capital of Italy is Rome.",
    "def add(a, b):\n    return a + b",
    "Refund requests are processed within 5 business days.",
    "Lock out and tag out the press before maintenance.",
] * 4


def build_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer with ChatML special tokens, trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_CORPUS, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        model_max_length=256,
        model_input_names=["input_ids", "attention_mask"],  # as decoder-only teachers' tokenizers say
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def build_model_dir(out: Path, *, layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                    intermediate: int = 128, seed: int = 0, init_std: float = 0.02) -> Path:
    """init_std above the default 0.02 gives peaked, teacher-like output distributions instead of near-uniform."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=1024,  # room for the graded eval prompts (ONNX bundles hold this context)
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=init_std,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def with_lora_adapter(base: Path, out: Path, *, rank: int = 4, seed: int = 0) -> Path:
    """A student folder as `distill --lora-rank` writes one, without the training: a LoRA adapter on `base`, on the
    projections its family names (distill.train.with_lora), with small random B (peft starts B at zero), saved alone in
    out/adapter (naming `base`), and the weights with it merged in `out`."""
    import torch

    from edgedistill.distill.settings import TrainSettings
    from edgedistill.distill.stage import save_adapter
    from edgedistill.distill.train import with_lora
    from edgedistill.models.locate import load_model, save_tokenizer
    from edgedistill.quantize.gguf_lora import ADAPTER_DIR

    torch.manual_seed(seed)
    model, tok = load_model(str(base))
    model = with_lora(model, TrainSettings(lora_rank=rank, lora_alpha=2.0 * rank))
    with torch.no_grad():  # about what a short training moves, not enough to flatten the model's choices
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    save_adapter(model, out / ADAPTER_DIR, base=str(base))
    model.merge_and_unload().save_pretrained(out, safe_serialization=True)
    save_tokenizer(tok, out)
    return out


def write_small_gguf(path: Path, *, tensors: int = 4) -> Path:
    """A valid GGUF file with a few float32 tensors and llama metadata (not a loadable model)."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_context_length(64)
    rng = np.random.default_rng(0)
    for i in range(tensors):
        w.add_tensor(f"blk.0.t{i}.weight", rng.standard_normal((64, 64)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def build_chatty_model_dir(out: Path, *, steps: int = 150, seed: int = 0) -> Path:
    """A tiny model fitted for a few seconds to answer chat prompts with the corpus sentences, so its greedy
    answers are real words that end with <|im_end|> (a random tiny model emits stray bytes and never stops)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    build_model_dir(out, seed=seed)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    sentences = sorted(set(_CORPUS))
    rows = []
    for i, s in enumerate(sentences):
        for q in (sentences[(i + 1) % len(sentences)], f"Question {i}?"):
            text = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
            p = tok(text, add_special_tokens=False).input_ids
            rows.append((p, tok(s + "<|im_end|>", add_special_tokens=False).input_ids))
    fit_replies(model, rows, tok.pad_token_id, steps=steps, seed=seed)
    model.save_pretrained(out, safe_serialization=True)
    return out


def fit_replies(model, rows, pad_id: int, *, steps: int, seed: int = 0) -> None:
    """Fit `model` in place, full batch, on (prompt ids, reply ids) rows: the loss is on the reply only, so the
    model learns to reply."""
    import torch

    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for n, (p, r) in enumerate(rows):
        ids[n, : len(p) + len(r)] = torch.tensor(p + r)
        labels[n, len(p) : len(p) + len(r)] = torch.tensor(r)
        mask[n, : len(p) + len(r)] = 1
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
