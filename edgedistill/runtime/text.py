"""Chat templates, stop strings and sampling shared by the backends (numpy and jinja2 only)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def chat_template(folder: Path) -> tuple[str | None, dict]:
    """The bundle's chat template and its special tokens (from chat_template.jinja / tokenizer_config.json)."""
    cfg = {}
    p = folder / "tokenizer_config.json"
    if p.is_file():
        cfg = json.loads(p.read_text())
    template = cfg.get("chat_template")
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        template = jinja.read_text()
    special = {k: cfg.get(k) for k in ("bos_token", "eos_token")}
    for k, v in list(special.items()):
        if isinstance(v, dict):
            special[k] = v.get("content")
    special["lead"] = _leading_text(folder)
    return template, special


def _leading_text(folder: Path) -> str:
    """The tokens tokenizer.json puts before a text of its own accord (Gemma's <bos>), as text: a prompt
    rendered without a chat template starts with them, as it does in training."""
    if not (folder / "tokenizer.json").is_file():
        return ""
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return "".join(tk.id_to_token(i) for i in leading_part(tk.encode("a").ids,
                                                           tk.encode("a", add_special_tokens=False).ids))


def leading_part(full: Sequence[int], bare: Sequence[int]) -> list[int]:
    """The ids an encoding with special tokens (`full`) puts before the bare encoding of the same text, [] when
    it is not a prefix of it."""
    n = len(full) - len(bare)
    return list(full[:n]) if bare and n >= 0 and list(full[n:]) == list(bare) else []


def render(template: str | None, messages: Sequence[dict], special: dict, tools: Sequence[dict] | None = None
           ) -> str:
    """Messages -> prompt text with the generation prompt added; a plain join when the bundle has no template.
    `tools` (OpenAI's shape) go to a template that takes them (its own tool-call convention); any other template
    gets them described in a system message."""
    messages = list(messages)
    if tools and not (template and "tools" in template):
        messages = with_tools_described(messages, tools)
    if not template:
        return (special.get("lead") or "") + "\n".join(m.get("content") or "" for m in messages) + "\n"
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # the template is data from a file: sandbox it

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    extra = {"tools": list(tools)} if tools else {}
    return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            bos_token=special.get("bos_token") or "",
                                            eos_token=special.get("eos_token") or "", **extra)


def with_tools_described(messages: list[dict], tools: Sequence[dict]) -> list[dict]:
    """The messages with the tools described at the head of the system message (one made where there is none),
    and how to call one: a JSON object {"name": ..., "arguments": {...}} alone."""
    import json

    text = ("You can call these functions (JSON schemas):\n"
            + "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
            + '\nTo call one, answer with a JSON object {"name": FUNCTION, "arguments": {...}} and nothing else.')
    if messages and messages[0].get("role") == "system":
        return [{**messages[0], "content": f"{messages[0].get('content') or ''}\n\n{text}".strip()}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


class Sampler:
    """Greedy at temperature 0, else temperature + nucleus (top-p) sampling with a seeded generator."""

    def __init__(self, temperature: float, top_p: float, seed: int | None):
        self.t, self.p = temperature, top_p
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> int:
        if self.t <= 0:
            return int(logits.argmax())
        z = logits.astype(np.float64) / self.t
        z -= z.max()
        probs = np.exp(z)
        probs /= probs.sum()
        if self.p < 1.0:
            order = np.argsort(-probs)
            keep = np.cumsum(probs[order]) - probs[order] < self.p  # smallest set whose mass reaches p
            mask = np.zeros_like(probs, dtype=bool)
            mask[order[keep]] = True
            probs = np.where(mask, probs, 0.0)
            probs /= probs.sum()
        return int(self.rng.choice(len(probs), p=probs))


class StopText:
    """Holds back text that could be the start of a stop string, so a stop string is never shown."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.done = False

    def feed(self, piece: str) -> str:
        if not self.stops:
            return piece
        self.pending += piece
        for s in self.stops:
            i = self.pending.find(s)
            if i >= 0:
                self.done = True
                out, self.pending = self.pending[:i], ""
                return out
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
