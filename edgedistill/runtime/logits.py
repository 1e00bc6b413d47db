"""Logits from the runtimes, position by position: what export validation and the bench's fidelity compare with a
reference. numpy and the runtimes only (no torch), so the bench worker needs nothing but the runtime extra.

`open_logits(bundle)` gives the runner of a bundle's format; `GGUFLogits` and `ONNXLogits` also open a file or
folder before it is a bundle (export validation). `sequence_stats` sums KL, top-1 agreement and next-token NLL
over one sequence.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def sequence_stats(ref_lp: np.ndarray, cand_logits: np.ndarray, targets) -> dict:
    """Sums over the scored rows of one sequence. ref_lp: the reference's log-probabilities (T, V); cand_logits:
    the variant's logits at the same rows; targets: the next token of each row (the last row may have none).

    Returns kl (Σ KL(ref || cand)), agree (rows with the same argmax), n (rows), nll_ref and nll (Σ next-token
    negative log-likelihood of each model over the rows with a target), n_next."""
    v = min(ref_lp.shape[-1], cand_logits.shape[-1])  # runtimes may pad the vocabulary
    lr = ref_lp[:, :v].astype(np.float64)
    # renormalised in float64: over the shared rows, and for log-probs stored in float32 (the bench's reference)
    lr = lr - np.log(np.exp(lr).sum(-1, keepdims=True))
    lc = log_softmax(cand_logits[:, :v])
    t = np.asarray(targets, dtype=np.int64)[: lr.shape[0]]
    rows = np.arange(len(t))
    return {"kl": float((np.exp(lr) * (lr - lc)).sum()), "agree": int((lr.argmax(-1) == lc.argmax(-1)).sum()),
            "n": int(lr.shape[0]), "nll_ref": float(-lr[rows, t].sum()), "nll": float(-lc[rows, t].sum()),
            "n_next": int(len(t))}



class GGUFLogits:
    """llama-cpp-python over one GGUF file with every position's logits kept (validation and fidelity; GGUFModel keeps
    only the last, for speed)."""

    def __init__(self, path: Path, n_ctx: int, threads: int | None = None):
        import llama_cpp

        self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False,
                                   n_threads=threads or os.cpu_count(), seed=0)

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


class ONNXLogits:
    """onnxruntime-genai over a folder its model builder wrote: the runtime the bundle will run in."""

    def __init__(self, folder: Path, threads: int | None = None):
        from edgedistill.runtime import onnx as rt

        self.rt, self.folder = rt, Path(folder)
        self.model = rt.open_model(self.folder, threads)
        self.window = rt.sliding_window(self.folder)

    def logits(self, chunks) -> list[np.ndarray]:
        return [self.rt.prompt_logits(self.model, list(ids), self.window) for ids in chunks]

    def greedy(self, prompt_ids: list[int], n: int) -> list[int]:
        from edgedistill.runtime import GenerationConfig

        # no id is treated as the end here: the runtime itself stops after an end-of-generation id, which is kept,
        # as torch's generate and llama.cpp keep it
        return list(self.rt.generate_ids(self.model, list(prompt_ids), GenerationConfig(max_tokens=n), set(),
                                             self.window))

    def close(self) -> None:
        self.model = None


def open_logits(bundle: Path, *, n_ctx: int, threads: int | None = None):
    """The logits runner of a bundle's format (its manifest says which)."""
    from edgedistill.runtime.bundle import open_bundle

    bundle = Path(bundle)
    manifest = open_bundle(bundle, verify=False)
    if manifest["format"] == "gguf":
        return GGUFLogits(bundle / manifest["model_file"], n_ctx=n_ctx, threads=threads)
    return ONNXLogits(bundle, threads=threads)
