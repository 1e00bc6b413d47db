"""GGUF backend: llama-cpp-python, with the bundle's chat template and our stop-string handling."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from edgedistill.runtime import GenerationConfig, LoadedModel
from edgedistill.runtime.text import chat_template


def eog_ids(model) -> set[int]:
    """Every id llama.cpp ends generation on for this model: eos, end-of-turn (Gemma's <end_of_turn>, Llama 3's
    <|eot_id|>, Phi-3's <|end|>, ChatML's <|im_end|>) and the others its vocabulary marks."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(model)
    return {t for t in range(llama_cpp.llama_vocab_n_tokens(vocab)) if llama_cpp.llama_vocab_is_eog(vocab, t)}


class GGUFModel(LoadedModel):
    def __init__(self, path: Path, manifest: dict, threads: int | None = None, n_ctx: int = 2048):
        import llama_cpp

        self.path, self.manifest = path, manifest
        self.llm = llama_cpp.Llama(str(path / manifest["model_file"]), n_ctx=n_ctx, n_threads=threads or os.cpu_count(),
                                   verbose=False)
        self.template, self.special = chat_template(path)
        self.eos_ids = eog_ids(self.llm.model)
        trained = int(llama_cpp.llama_model_n_ctx_train(self.llm.model))
        self.context_length = min(int(self.llm.n_ctx()), trained or int(self.llm.n_ctx()))  # no further than trained

    def encode(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def generate_ids(self, prompt_ids: list[int], cfg: GenerationConfig) -> Iterator[int]:
        if cfg.seed is not None:
            self.llm.set_seed(cfg.seed)
        sampling = ({"temp": 0.0, "top_k": 1} if cfg.temperature <= 0
                    else {"temp": cfg.temperature, "top_p": cfg.top_p, "top_k": 0})
        for n, tid in enumerate(self.llm.generate(prompt_ids, repeat_penalty=1.0, reset=True, **sampling)):
            if n >= cfg.max_tokens or (tid in self.eos_ids and not cfg.ignore_eos):
                return
            yield tid

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None
