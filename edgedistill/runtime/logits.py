"""Logits from the runtimes, position by position: what export validation and the bench's fidelity compare with a
reference. numpy and the runtimes only (no torch), so the bench worker needs nothing but the runtime extra.

`open_logits(bundle)` gives the runner of a bundle's format (its backend's `Logits`, which export validation also
opens on a file before it is a bundle). `sequence_stats` sums KL, top-1 agreement and next-token NLL
over one sequence against the reference's full log-probabilities; `top_k_reference` keeps the reference's top-k of
each row (what a device kit carries) and `top_k_stats` sums the same measures against it.
"""

from __future__ import annotations

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


def top_k_reference(ref_lp: np.ndarray, targets, k: int) -> dict[str, np.ndarray]:
    """The reference's k most likely tokens per row and their log-probabilities (renormalised over the rows' whole
    vocabulary first, as sequence_stats does), and its log-probability of each row's target: enough for
    top_k_stats on a machine that has no reference."""
    lr = ref_lp.astype(np.float64)
    lr = lr - np.log(np.exp(lr).sum(-1, keepdims=True))
    k = min(k, lr.shape[-1])
    ids = np.argsort(-lr, axis=-1, kind="stable")[:, :k]
    t = np.asarray(targets, dtype=np.int64)[: lr.shape[0]]
    return {"ids": ids.astype(np.int32), "lp": np.take_along_axis(lr, ids, -1).astype(np.float32),
            "target_lp": lr[np.arange(len(t)), t].astype(np.float32)}


def top_k_stats(ref: dict[str, np.ndarray], cand_logits: np.ndarray, targets) -> dict:
    """sequence_stats against a reference's top-k (top_k_reference): KL over k + 1 bins (the top-k tokens and the
    rest of the mass; a lower bound of the full KL, as merging outcomes never raises a KL), top-1 agreement (exact:
    the reference's first token is its argmax), and the next-token NLL of both (exact)."""
    lc = log_softmax(cand_logits[: ref["ids"].shape[0]])
    ids = np.minimum(ref["ids"].astype(np.int64), lc.shape[-1] - 1)
    lp = ref["lp"].astype(np.float64)
    lq = np.take_along_axis(lc, ids, -1)
    p_rest = np.clip(1 - np.exp(lp).sum(-1), 0, 1)
    q_rest = np.clip(1 - np.exp(lq).sum(-1), 1e-12, 1)
    kl = (np.exp(lp) * (lp - lq)).sum(-1) + np.where(p_rest > 0, p_rest * (np.log(np.maximum(p_rest, 1e-300))
                                                                           - np.log(q_rest)), 0.0)
    t = np.asarray(targets, dtype=np.int64)[: lc.shape[0]]
    rows = np.arange(len(t))
    return {"kl": float(kl.sum()), "agree": int((ref["ids"][:, 0] == lc.argmax(-1)).sum()), "n": int(lc.shape[0]),
            "nll_ref": float(-ref["target_lp"].astype(np.float64).sum()), "nll": float(-lc[rows, t].sum()),
            "n_next": int(len(t))}


def open_logits(bundle: Path, *, n_ctx: int, threads: int | None = None, adapter: Path | None = None):
    """The logits runner of a bundle's format (its manifest says which); adapter: a gguf-lora bundle over it."""
    from edgedistill.runtime.bundle import adapter_args, backend, open_bundle

    bundle = Path(bundle)
    manifest = open_bundle(bundle, verify=False)
    return backend(manifest["format"]).Logits(bundle / manifest["model_file"], n_ctx=n_ctx, threads=threads,
                                              **adapter_args(manifest, bundle, adapter, verify=False))
