"""Greedy chat answers through transformers: the reference behaviour every exported model is compared to."""

from __future__ import annotations


def leading_ids(tokenizer) -> list[int]:
    """The ids the tokenizer puts before a text of its own accord (Gemma's and Llama's <bos>), [] for none. A
    model trained with them is lost without them (Gemma 3 without <bos> repeats one word)."""
    from edgedistill.runtime.text import leading_part

    return leading_part(tokenizer("a", verbose=False)["input_ids"],
                        tokenizer("a", add_special_tokens=False, verbose=False)["input_ids"])


def prompt_text(tokenizer, messages) -> str:
    """`messages` as the model reads them before its reply: rendered with its chat template, or, for a base model
    without one, as a plain completion prompt (the contents joined by newlines, after the tokenizer's leading
    tokens, as the runtime renders it)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    from edgedistill.runtime.text import render

    lead = "".join(tokenizer.convert_ids_to_tokens(leading_ids(tokenizer)))
    return render(None, list(messages), {"lead": lead})


def turn_end(tokenizer) -> str:
    """The token that closes the model's turn: the first special token its chat template writes after an
    assistant message (Gemma's <end_of_turn>, Llama 3's <|eot_id|>, Phi-3's <|end|>, ChatML's <|im_end|>), or eos
    for a model without a template. Training responses end with it, as the teacher's own turns do."""
    eos = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        return eos
    marker = "edgedistill-reply-7f3a"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}],
                                             tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render an assistant turn: fall back to eos
        return eos
    tail = text.split(marker, 1)[1] if marker in text else ""
    specials = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    specials |= set(tokenizer.all_special_tokens) | {eos}
    found = [(tail.find(s), s) for s in specials if s and s in tail]
    return min(found)[1] if found else eos


def chat_ids(tokenizer, messages) -> list[int]:
    """Token ids of `messages` rendered for the reply (prompt_text; the rendered text holds its own special
    tokens, so none are added when it is encoded)."""
    return list(tokenizer(prompt_text(tokenizer, messages), add_special_tokens=False)["input_ids"])


def chat_input_ids(tokenizer, prompt: str, system: str | None = None):
    """Token ids (1, T) of one user turn rendered with the model's chat template, ready for the reply."""
    import torch

    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return torch.tensor([chat_ids(tokenizer, messages)])


def answer(model_spec, prompt: str, *, max_new_tokens: int = 64, system: str | None = None,
           trust_remote_code: bool = False, loaded=None) -> str:
    """The model's greedy reply to `prompt`. `loaded` = (model, tokenizer) skips loading."""
    import torch

    from edgedistill.models.families import end_of_generation_ids
    from edgedistill.models.locate import load_model

    model, tokenizer = loaded or load_model(model_spec, trust_remote_code=trust_remote_code)
    ids = chat_input_ids(tokenizer, prompt, system)
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=end_of_generation_ids(model, tokenizer),
        )
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


# --- a torch model's logits and greedy tokens, position by position (the reference validation compares with) ---

def torch_logits(model, chunks) -> list:
    """float32 numpy logits (T, V) of each token list."""
    import torch

    out = []
    with torch.inference_mode():
        for ids in chunks:
            out.append(model(torch.tensor([ids])).logits[0].float().numpy())
    return out


def torch_greedy(model, prompt_ids: list[int], n: int) -> list[int]:
    """n greedy tokens after prompt_ids."""
    import torch

    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()
