"""Greedy chat answers through transformers: the reference behaviour every exported model is compared to."""

from __future__ import annotations

from edgedistill.errors import InvalidModelError


def chat_ids(tokenizer, messages) -> list[int]:
    """Token ids of `messages` rendered with the model's chat template, ready for the reply (the rendered text
    holds its own special tokens, so none are added when it is encoded)."""
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def chat_input_ids(tokenizer, prompt: str, system: str | None = None):
    """Token ids (1, T) of one user turn rendered with the model's chat template, ready for the reply."""
    import torch

    if not tokenizer.chat_template:
        raise InvalidModelError("this model has no chat template; give it one in tokenizer_config.json")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return torch.tensor([chat_ids(tokenizer, messages)])


def answer(model_spec, prompt: str, *, max_new_tokens: int = 64, system: str | None = None,
           trust_remote_code: bool = False, loaded=None) -> str:
    """The model's greedy reply to `prompt`. `loaded` = (model, tokenizer) skips loading."""
    import torch

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
        )
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
