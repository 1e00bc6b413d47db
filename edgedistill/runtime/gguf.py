"""GGUF backend: llama-cpp-python, with the bundle's chat template and our stop-string handling."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgedistill.runtime import BundleError, SamplingParams, LoadedModel
from edgedistill.runtime.text import chat_template
from edgedistill.runinfo import available_cores


def eog_ids(model) -> set[int]:
    """Every id llama.cpp ends generation on for this model: eos, end-of-turn (Gemma's <end_of_turn>, Llama 3's
    <|eot_id|>, Phi-3's <|end|>, ChatML's <|im_end|>) and the others its vocabulary marks."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(model)
    return {t for t in range(llama_cpp.llama_vocab_n_tokens(vocab)) if llama_cpp.llama_vocab_is_eog(vocab, t)}


def system_info() -> dict:
    """llama.cpp's own line of the CPU features this build uses (e.g. "CPU : SSE3 = 1 | AVX2 = 1 | ..."), with the
    llama-cpp-python version."""
    from importlib import metadata

    import llama_cpp

    return {"runtime": "llama.cpp", "llama_cpp_python": metadata.version("llama_cpp_python"),
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()}


def missing_features(system_info: str, features: list[str]) -> list[str]:
    """The instruction sets a loaded llama.cpp says it was compiled with ("AVX512 = 1" in its system-info line) that
    this CPU lacks: a build made on another machine, which would die with SIGILL at its first such instruction."""
    from edgedistill.runinfo import GGML_CPU_FEATURES

    compiled = {k for k, v in re.findall(r"(\w+) = (\d+)", system_info) if v != "0"}
    return sorted(k for k, v in GGML_CPU_FEATURES.items() if k in compiled and v not in set(features))


def check_cpu(system_info_line: str | None = None, features: list[str] | None = None) -> None:
    """Refuse in one line, instead of dying with SIGILL, a llama.cpp build that uses instructions this CPU lacks
    (built on another machine: formats/llamacpp_build.py builds AVX-512 only where the build machine has it)."""
    from edgedistill.runinfo import cpu_features

    features = cpu_features() if features is None else features
    if not features:  # /proc/cpuinfo unreadable: nothing to compare with
        return
    line = system_info()["system_info"] if system_info_line is None else system_info_line
    missing = missing_features(line, features)
    if missing:
        raise BundleError(f"this llama.cpp build uses {', '.join(missing)}, which this CPU lacks (it was built on "
                          "another machine); rebuild it here: make clean-venv && make install")


@functools.lru_cache(maxsize=1)
def _check_this_cpu() -> None:
    check_cpu()  # neither the CPU nor the loaded library changes within a process: once


def _lora(adapter: Path | None) -> dict:
    """llama-cpp-python's arguments for a GGUF LoRA adapter applied over the model at full scale."""
    return {} if adapter is None else {"lora_path": str(adapter), "lora_scale": 1.0}


class GGUFModel(LoadedModel):
    def __init__(self, path: Path, manifest: dict, threads: int | None = None, n_ctx: int = 2048,
                 adapter: Path | None = None):
        import llama_cpp

        _check_this_cpu()

        self.path, self.manifest, self.adapter = path, manifest, adapter
        self._grammars: dict = {}  # constraint key -> its grammar, checked (the last 32)
        self._never_utf8: np.ndarray | None = None  # token ids no UTF-8 text holds (computed at first need)
        self.llm = llama_cpp.Llama(str(path / manifest["model_file"]), n_ctx=n_ctx, n_threads=threads or available_cores(),
                                   verbose=False, **_lora(adapter))
        self.template, self.special = chat_template(path)
        self.eos_ids = eog_ids(self.llm.model)
        trained = int(llama_cpp.llama_model_n_ctx_train(self.llm.model))
        self.context_length = min(int(self.llm.n_ctx()), trained or int(self.llm.n_ctx()))  # no further than trained

    def encode(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def generate_ids(self, prompt_ids: list[int], cfg: SamplingParams) -> Iterator[int]:
        if cfg.constraint is not None:
            yield from self._constrained_ids(prompt_ids, cfg)
            return
        if cfg.seed is not None:
            self.llm.set_seed(cfg.seed)
        import llama_cpp

        llama_cpp.llama_perf_context_reset(self.llm.ctx)  # counts what this generation computes
        sampling = ({"temp": 0.0, "top_k": 1} if cfg.temperature <= 0
                    else {"temp": cfg.temperature, "top_p": cfg.top_p, "top_k": 0})
        for n, tid in enumerate(self.llm.generate(prompt_ids, repeat_penalty=1.0, reset=True, **sampling)):
            if n >= cfg.max_tokens or (tid in self.eos_ids and not cfg.ignore_eos):
                return
            yield tid

    def _constrained_ids(self, prompt_ids: list[int], cfg: SamplingParams) -> Iterator[int]:
        """Token ids under llama.cpp's grammar, checked lazily: the token chosen from the model's own distribution is
        kept when the grammar accepts it (one candidate checked); only when it refuses is the grammar applied to the
        whole vocabulary and the token chosen again from what it allows, which is the same distribution as masking
        first at a fraction of the work on a large vocabulary (benchmarks/constrained.py measures the cost).
        Tokens holding bytes that never occur in UTF-8 are out (llama.cpp's grammar decodes them leniently)."""
        import ctypes

        import llama_cpp
        from llama_cpp._internals import LlamaTokenDataArray

        from edgedistill.runtime.constrain import ConstraintError
        from edgedistill.runtime.text import Sampler

        text = self._grammar(cfg.constraint)
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        grammar = llama_cpp.llama_sampler_init_grammar(vocab, text.encode(), b"root")
        if not grammar:
            raise ConstraintError("llama.cpp cannot parse the grammar made from this constraint")
        n_vocab = self.llm.n_vocab()
        banned = self._never_utf8_ids(n_vocab)
        one = np.recarray((1,), dtype=np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)],
                                               align=True))
        single = llama_cpp.llama_token_data_array(data=one.ctypes.data_as(llama_cpp.llama_token_data_p), size=1,
                                                  selected=-1, sorted=False)
        full = LlamaTokenDataArray(n_vocab=n_vocab)
        pick = Sampler(cfg.temperature, cfg.top_p, cfg.seed)
        try:
            llama_cpp.llama_perf_context_reset(self.llm.ctx)
            self._feed(prompt_ids)
            for _ in range(cfg.max_tokens):
                logits = np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), shape=(n_vocab,)).copy()
                logits[banned] = -np.inf
                tid = pick(logits)
                one.id[0], one.logit[0], one.p[0] = tid, logits[tid], 0.0
                single.size, single.selected = 1, -1
                llama_cpp.llama_sampler_apply(grammar, ctypes.byref(single))
                if not np.isfinite(one.logit[0]):  # refused: choose among what the grammar allows
                    full.copy_logits(logits)
                    llama_cpp.llama_sampler_apply(grammar, ctypes.byref(full.candidates))
                    allowed = np.array(full.candidates_data.logit[: full.candidates.size])
                    ids = np.array(full.candidates_data.id[: full.candidates.size])
                    if not np.isfinite(allowed).any():
                        return  # the grammar allows nothing more (it is complete and no end token exists)
                    masked = np.full(n_vocab, -np.inf, dtype=np.float32)
                    masked[ids] = allowed
                    tid = pick(masked)
                llama_cpp.llama_sampler_accept(grammar, tid)
                if tid in self.eos_ids and not cfg.ignore_eos:
                    return
                yield tid
                self.llm.eval([tid])
        finally:
            llama_cpp.llama_sampler_free(grammar)

    def _feed(self, prompt_ids: list[int]) -> None:
        """Evaluate the prompt, reusing the longest prefix already in the cache (as llama-cpp-python's generate
        does), at least its last token computed again so that its logits are there."""
        keep = 0
        for a, b in zip(self.llm.input_ids[: self.llm.n_tokens], prompt_ids[:-1]):
            if a != b:
                break
            keep += 1
        self.llm.n_tokens = keep
        self.llm.eval(prompt_ids[keep:])

    def _never_utf8_ids(self, n_vocab: int) -> np.ndarray:
        """Token ids holding a byte that never occurs in UTF-8 (C0, C1, F5-FF), found once per model."""
        if self._never_utf8 is None:
            bad = {0xC0, 0xC1, *range(0xF5, 0x100)}
            self._never_utf8 = np.array([t for t in range(n_vocab) if not bad.isdisjoint(self.llm.detokenize([t]))],
                                        dtype=np.int64)
        return self._never_utf8

    def check_constraint(self, c) -> None:
        self._grammar(c)

    def _grammar(self, c) -> str:
        """The constraint as llama.cpp's grammar (GBNF), made and checked to parse once per distinct constraint (the
        last 32 kept); the sampler is built from it at the start of each generation."""
        import llama_cpp

        from edgedistill.runtime.constrain import ConstraintError, gbnf

        if c.key not in self._grammars:
            text = gbnf(c)
            vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
            probe = llama_cpp.llama_sampler_init_grammar(vocab, text.encode(), b"root")
            if not probe:  # llama.cpp logs why; a NULL sampler would crash the generation: refused here
                raise ConstraintError("llama.cpp cannot parse the grammar made from this constraint")
            llama_cpp.llama_sampler_free(probe)
            self._grammars[c.key] = text
            while len(self._grammars) > 32:
                self._grammars.pop(next(iter(self._grammars)))
        return self._grammars[c.key]

    def runtime_info(self) -> dict:
        return system_info()

    def reset(self) -> None:
        self.llm.reset()  # the next generate() finds no cached prefix and computes the whole prompt

    def prompt_tokens_computed(self) -> int:
        """From llama.cpp's own counters: tokens decoded in batches of more than one since the generation began
        (the prompt; each new token is a batch of one). A prompt found whole in the cache reads as 1."""
        import llama_cpp

        return int(llama_cpp.llama_perf_context(self.llm.ctx).n_p_eval)

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None


class GGUFLogits:
    """llama-cpp-python over one GGUF file with every position's logits kept (validation and fidelity; GGUFModel keeps
    only the last, for speed)."""

    def __init__(self, path: Path, *, n_ctx: int, threads: int | None = None, adapter: Path | None = None):
        import llama_cpp

        self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False,
                                   n_threads=threads or available_cores(), seed=0, **_lora(adapter))

    def logits(self, chunks) -> list[np.ndarray]:
        out = []
        for ids in chunks:
            self.llm.reset()
            self.llm.eval(list(ids))
            out.append(np.array(self.llm.scores[: len(ids)], dtype=np.float32))
        return out

    def greedy(self, prompt_ids: list[int], n: int) -> list[int]:
        self.llm.reset()
        toks = []
        for t in self.llm.generate(list(prompt_ids), top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            toks.append(int(t))
            if len(toks) == n:
                break
        return toks

    def close(self) -> None:
        self.llm.close()



Model, Logits = GGUFModel, GGUFLogits  # what runtime.bundle.backend('gguf') offers
