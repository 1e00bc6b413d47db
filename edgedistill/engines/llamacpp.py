"""The llama.cpp engine: a GGUF teacher in this process through llama-cpp-python's bindings.

Several sequences are decoded together in one llama.cpp context (one KV buffer shared by up to batch_size
sequences), one token per sequence per step; the next token and the top-k log-probabilities are read from the
same logits. A registry or Hugging Face teacher is written to GGUF once (F16 by our writer, Q8_0 by llama.cpp's
quantizer from it) and kept in EDGEDISTILL_HOME/engines. Token ids are the teacher's transformers tokenizer's
(the GGUF carries the same vocabulary), so the data matches the torch engine's token for token.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgedistill.engines import Answer, Engine, EngineError, EngineSpec, log_softmax, register, topk_rows
from edgedistill.runtime.gguf import eog_ids
from edgedistill.runinfo import available_cores

log = logging.getLogger(__name__)

GGUF_TYPES = ("f16", "q8_0")


def teacher_gguf(ref, gguf_type: str, fingerprint: str, loaded=None) -> Path:
    """The GGUF of a registry / Hugging Face teacher at `gguf_type`, written once into EDGEDISTILL_HOME/engines."""
    from edgedistill.paths import atomic_file, ensure_writable_dir, home

    if gguf_type not in GGUF_TYPES:
        raise EngineError(f"--teacher-gguf-type {gguf_type!r}: choose one of {', '.join(GGUF_TYPES)}")
    from edgedistill.formats.llamacpp_source import version

    folder = ensure_writable_dir(home() / "engines")
    stem = f"{fingerprint}-llama.cpp-{version()}"  # a newer converter writes the file anew
    f16 = folder / f"{stem}-f16.gguf"
    if not f16.exists():
        from edgedistill.formats.gguf import convert, write_gguf
        from edgedistill.models.locate import load_model

        log.info("writing %s as GGUF for the llama.cpp engine (once)", ref.spec)
        name = ref.name or Path(ref.location).name
        with atomic_file(f16) as tmp:
            if ref.kind == "hf_dir":
                convert(ref.path, tmp, dtype="f16", name=name)
            else:
                model, tok = loaded or load_model(ref)
                write_gguf(model, tok, tmp, dtype="f16", name=name)
                del model
    if gguf_type == "f16":
        return f16
    out = folder / f"{stem}-{gguf_type}.gguf"
    if not out.exists():
        from edgedistill.quantize.gguf import llama_quantize

        with atomic_file(out) as tmp:
            llama_quantize(f16, tmp, gguf_type.upper())
    return out


@register("llama.cpp")
class LlamaCppEngine(Engine):
    gguf: Path | None = None

    @classmethod
    def open(cls, spec: EngineSpec, *, loaded=None) -> LlamaCppEngine:
        from edgedistill.models.locate import load_tokenizer, resolve

        ref = resolve(spec.model, pull=True)
        teacher_id, fp, settings = cls.identity(spec)
        e = cls(spec, teacher_id=teacher_id, fingerprint=fp, settings=settings)
        e.gguf = ref.path if ref.kind == "gguf" else teacher_gguf(ref, spec.gguf_type, fp, loaded)
        e.tokenizer = loaded[1] if loaded else load_tokenizer(ref)
        e._open_model()
        return e

    @classmethod
    def identity(cls, spec: EngineSpec) -> tuple[str, str, dict]:
        """A registry / Hugging Face teacher keeps its own fingerprint (its GGUF is made from it, the type is
        recorded); a .gguf teacher is the file's."""
        from edgedistill.models.fingerprint import model_fingerprint, spec_fingerprint
        from edgedistill.models.locate import resolve

        ref = resolve(spec.model, pull=True)
        if ref.kind == "gguf":
            return ref.spec, model_fingerprint(ref.path), {"engine": cls.name}
        if ref.kind != "hf_dir":
            raise EngineError(f"the llama.cpp engine needs a registry name, a model folder or a .gguf, not {spec.model!r}")
        if spec.gguf_type not in GGUF_TYPES:
            raise EngineError(f"--teacher-gguf-type {spec.gguf_type!r}: choose one of {', '.join(GGUF_TYPES)}")
        return ref.name or ref.spec, spec_fingerprint(ref), {"engine": cls.name, "gguf_type": spec.gguf_type}

    # -- llama.cpp objects ------------------------------------------------------------------------------------

    def _open_model(self) -> None:
        import llama_cpp
        from llama_cpp import _internals

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's own log: errors only
        params = llama_cpp.llama_model_default_params()
        try:
            self._model = _internals.LlamaModel(path_model=str(self.gguf), params=params, verbose=False)
        except (ValueError, RuntimeError) as e:
            raise EngineError(f"llama.cpp cannot load {self.gguf}: {e}") from None
        self._vocab = llama_cpp.llama_model_get_vocab(self._model.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.context = self._model.n_ctx_train()
        self.eog = {self.tokenizer.eos_token_id} | eog_ids(self._model.model)

    def _context(self, n_ctx: int, n_seq: int):
        import llama_cpp
        from llama_cpp import _internals

        p = llama_cpp.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_batch = p.n_ubatch = 512
        p.n_seq_max = n_seq
        p.kv_unified = True  # one buffer shared by the sequences: n_ctx is their total
        p.n_threads = p.n_threads_batch = self.spec.threads or available_cores()
        try:
            return _internals.LlamaContext(model=self._model, params=p, verbose=False)
        except ValueError as e:
            raise EngineError(f"llama.cpp cannot make a context of {n_ctx} tokens for {n_seq} sequences: {e}") from None

    def _decode(self, ctx, batch, items: list[tuple[int, int, int, bool]]) -> np.ndarray:
        """Decode (token, position, sequence, wants_logits) items; the log-probabilities (n_wanted, V) of the
        items that asked for them, in order."""
        import llama_cpp

        b = batch.batch
        b.n_tokens = len(items)
        for j, (tok, pos, seq, want) in enumerate(items):
            b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = tok, pos, 1, want
            b.seq_id[j][0] = seq
        rc = llama_cpp.llama_decode(ctx.ctx, b)
        if rc != 0:
            raise EngineError(f"llama.cpp could not decode a batch (return code {rc}): the context is too small")
        n_out = sum(1 for it in items if it[3])
        if not n_out:
            return np.zeros((0, self.n_vocab), np.float32)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx.ctx), shape=(n_out, self.n_vocab))
        return log_softmax(logits)

    def _batch(self, n: int):
        from llama_cpp import _internals

        return _internals.LlamaBatch(n_tokens=n, embd=0, n_seq_max=1, verbose=False)

    def _prefill(self, ctx, batch, prompts: list[list[int]], cap: int) -> list[np.ndarray]:
        """Feed each prompt (sequence j = prompts[j]) in packed batches of at most `cap` tokens; the
        log-probabilities after each prompt's last token."""
        last: list[np.ndarray | None] = [None] * len(prompts)
        items, owners = [], []
        for seq, ids in enumerate(prompts):
            for pos, tok in enumerate(ids):
                want = pos == len(ids) - 1
                items.append((tok, pos, seq, want))
                if want:
                    owners.append(seq)
                if len(items) == cap:
                    for o, row in zip(owners, self._decode(ctx, batch, items)):
                        last[o] = row
                    items, owners = [], []
        if items:
            for o, row in zip(owners, self._decode(ctx, batch, items)):
                last[o] = row
        return last

    # -- the engine -------------------------------------------------------------------------------------------

    def answer(self, conversations, gen, *, logprobs=0, max_prompt_tokens=None):
        from edgedistill.engines import plan

        encoded, too_long, todo = plan(self.tokenizer, conversations, max_prompt_tokens)
        for i in too_long:
            yield Answer(i, None, 0, "prompt_too_long")
        rng = np.random.default_rng(gen.seed)
        batch = self._batch(512)
        for start in range(0, len(todo), gen.answer_batch):
            idx = todo[start : start + gen.answer_batch]
            prompts = [encoded[i] for i in idx]
            per_seq = max(len(p) for p in prompts) + gen.max_new_tokens
            ctx = self._context(len(idx) * per_seq + 16, len(idx))
            try:
                yield from self._answer_batch(ctx, batch, idx, prompts, gen, logprobs, rng)
            finally:
                ctx.close()
        batch.close()

    def _answer_batch(self, ctx, batch, idx, prompts, gen, logprobs, rng):
        lp = self._prefill(ctx, batch, prompts, 512)
        out = [[] for _ in idx]
        tops: list[list] = [[] for _ in idx]
        active = list(range(len(idx)))
        while active:
            step_items, still = [], []
            for row, j in enumerate(active):
                logp = lp[row]
                tok = self._pick(logp, gen, rng)
                out[j].append(tok)
                if logprobs:
                    tops[j].append(topk_rows(logp[None], logprobs))
                if tok in self.eog or len(out[j]) >= gen.max_new_tokens:
                    continue
                still.append(j)
                step_items.append((tok, len(prompts[j]) + len(out[j]) - 1, j, True))
            active = still
            if active:
                lp = self._decode(ctx, batch, step_items)
        for j, i in enumerate(idx):
            toks = out[j]
            stop = toks[-1] in self.eog
            n = len(toks) - 1 if stop else len(toks)
            text = self.tokenizer.decode(toks[:n], skip_special_tokens=True).strip()
            a = Answer(i, text, n, "stop" if stop else "length", tokens=toks)
            if logprobs:
                a.topk_ids = [t[0][0].tolist() for t in tops[j]]
                a.topk_logprobs = [t[1][0].tolist() for t in tops[j]]
            yield a

    @staticmethod
    def _pick(logp: np.ndarray, gen, rng) -> int:
        if not gen.sample:
            return int(np.argmax(logp))
        x = logp.astype(np.float64) / gen.temperature
        p = np.exp(x - x.max())
        p /= p.sum()
        order = np.argsort(-p)
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), gen.top_p) + 1)]
        q = p[keep] / p[keep].sum()
        return int(rng.choice(keep, p=q))

    def score(self, examples, k, *, batch_size=4, progress=None):
        from edgedistill.tensors import IGNORE

        if not 1 <= k <= self.n_vocab:
            raise EngineError(f"k={k} must be between 1 and the vocabulary size {self.n_vocab}")
        width = max(len(ex["input_ids"]) for ex in examples)
        ctx = self._context(width + 16, 1)
        batch = self._batch(512)
        try:
            for ex in examples:
                ctx.kv_cache_clear()
                ids, labels = ex["input_ids"], ex["labels"]
                rows = []
                for a in range(0, len(ids), 512):
                    items = [(ids[t], t, 0, labels[t] != IGNORE) for t in range(a, min(a + 512, len(ids)))]
                    rows.append(self._decode(ctx, batch, items))
                top_ids, top_lp = topk_rows(np.concatenate(rows), k)
                yield top_ids, top_lp
        finally:
            ctx.close()
            batch.close()

    def close(self) -> None:
        m = getattr(self, "_model", None)
        if m is not None:
            m.close()
            self._model = None
