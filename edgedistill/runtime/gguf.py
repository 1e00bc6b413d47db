"""GGUF backend: llama-cpp-python, with the bundle's chat template and our stop-string handling."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from edgedistill.runtime import GenerationConfig, LoadedModel
from edgedistill.runtime.text import StopText, chat_template, render


class GGUFModel(LoadedModel):
    def __init__(self, path: Path, manifest: dict, threads: int | None = None, n_ctx: int = 2048):
        import llama_cpp

        self.path, self.manifest = path, manifest
        self.llm = llama_cpp.Llama(str(path / manifest["model_file"]), n_ctx=n_ctx, n_threads=threads or os.cpu_count(),
                                   verbose=False)
        self.template, self.special = chat_template(path)
        self.eos_id = self.llm.token_eos()

    def render_chat(self, messages) -> str:
        return render(self.template, messages, self.special)

    def encode(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def stream(self, prompt: str, **kw) -> Iterator[str]:
        cfg = GenerationConfig(**{**kw, "stop": tuple(kw.get("stop") or ())})
        stop = StopText(cfg.stop)
        if cfg.seed is not None:
            self.llm.set_seed(cfg.seed)
        sampling = ({"temp": 0.0, "top_k": 1} if cfg.temperature <= 0
                    else {"temp": cfg.temperature, "top_p": cfg.top_p, "top_k": 0})
        out: list[int] = []
        shown = text = ""
        for n, tid in enumerate(self.llm.generate(self.encode(prompt), repeat_penalty=1.0, reset=True, **sampling)):
            if tid == self.eos_id or n >= cfg.max_tokens:
                break
            out.append(tid)
            text = self.llm.detokenize(out).decode("utf-8", errors="replace")
            if text.endswith("\ufffd"):
                continue
            piece = stop.feed(text[len(shown):])
            shown = text
            if piece:
                yield piece
            if stop.done:
                return
        rest = stop.feed(text[len(shown):]) + stop.flush()  # a trailing incomplete character, as decoded
        if rest:
            yield rest

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None
