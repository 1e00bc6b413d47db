"""Greedy chat answers through transformers: the reference behaviour every exported model is compared to."""

from __future__ import annotations

from edgedistill.errors import InvalidModelError


def chat_input_ids(tokenizer, prompt: str, system: str | None = None):
    """Token ids (1, T) of one user turn rendered with the model's chat template, ready for the reply."""
    if not tokenizer.chat_template:
        raise InvalidModelError("this model has no chat template; give it one in tokenizer_config.json")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")


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
