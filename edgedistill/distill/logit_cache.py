"""Offline logit KD: run the teacher once, keep its top-k log-probabilities per response token, train from them.

Layout of a cache folder:
  cache.json          what it was made from (teacher id and fingerprint, the engine and its settings, data
                      fingerprint, k, sizes, coverage)
  topk.safetensors    ids (N, k) uint16 (int32 for vocabularies over 65,536), logprobs (N, k) float16,
                      tail_mass (N,) float16 (the teacher's probability outside its top k),
                      offsets (S + 1,) int64: rows offsets[i]:offsets[i+1] are sequence i's response tokens

N is the number of response tokens (prompt tokens are never trained on, so they are not stored). At k = 64 and
a vocabulary under 65,536 that is 64 x (2 + 2) + 2 = 258 bytes per token. The rows come from any teacher engine:
scored teacher-forced (torch, llama.cpp) or read from the records of a served teacher's answers (openai). Training reads the cache instead of the
teacher; the loss then compares k + 1 bins (the teacher's top k and "the rest"), see losses.base.bins.

A cache is keyed by the teacher's fingerprint and by the exact token sequences it was computed on; training
with other data or another teacher is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgedistill.distill.dataset import Encoded
from edgedistill.tensors import IGNORE
from edgedistill.errors import EdgeDistillError

FORMAT = "edgedistill-topk-v1"


class StaleCacheError(EdgeDistillError):
    """A cache that does not belong to the data or teacher it is used with."""


@dataclass
class LogitCache:
    meta: dict
    ids: torch.Tensor  # (N, k) int64
    logprobs: torch.Tensor  # (N, k) float32
    offsets: torch.Tensor  # (S + 1,)

    def teacher_for(self, indices: list[int], labels: torch.Tensor):
        """Dense-shaped top-k tensors for a batch: (log-probs (B, T, k), ids (B, T, k)). Positions that are not
        response tokens, and rows with index -1 (cross-entropy-only examples, not in the cache), get a harmless
        uniform filler; the loss masks or replaces them."""
        B, T = labels.shape
        k = self.meta["k"]
        lp = torch.full((B, T, k), -float(np.log(k)) - 1.0)
        ids = torch.zeros((B, T, k), dtype=torch.long)
        for row, i in enumerate(indices):
            if i < 0:
                continue
            pos = (labels[row] != IGNORE).nonzero().squeeze(-1)
            a, b = int(self.offsets[i]), int(self.offsets[i + 1])
            if b - a != len(pos):
                raise StaleCacheError(f"cache row {i} holds {b - a} tokens, the batch has {len(pos)}; rebuild the cache")
            lp[row, pos] = self.logprobs[a:b]
            ids[row, pos] = self.ids[a:b]
        return lp, ids


FILLER_LOGPROB = -30.0  # the log-probability of padding entries: no mass, but finite for the divergences


def build(rows, teacher_id: str, teacher_fingerprint: str, data: Encoded, out_dir: Path, *, k: int, vocab: int,
          engine: dict | None = None, filled: int = 0, progress=None, extra_files: dict | None = None) -> dict:
    """Write the cache folder atomically from `rows`: per example of `data`, in order, (ids (n, k), logprobs
    (n, k)) of the teacher's top k at its n response positions. `engine`: what made them (recorded); `filled`:
    positions that had no teacher top-k and hold the label alone. `extra_files`: name -> a function that writes
    that file, inside the same atomic step. Returns cache.json's content."""
    from safetensors.numpy import save_file

    from edgedistill.paths import atomic_dir

    if not 1 <= k <= vocab:
        raise EdgeDistillError(f"k={k} must be between 1 and the vocabulary size {vocab}")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise EdgeDistillError(f"{out_dir} already exists; delete it or choose another --out")
    id_dtype = np.uint16 if vocab <= 65536 else np.int32
    all_ids, all_lp, offsets = [], [], [0]
    task = progress.add_task(f"teacher top-{k} log-probs", total=len(data.examples)) if progress else None
    for ex, (ids, lps) in zip(data.examples, rows, strict=True):
        n = sum(1 for x in ex["labels"] if x != IGNORE)
        if ids.shape != (n, k) or lps.shape != (n, k):
            raise StaleCacheError(f"example {ex['id']}: the teacher gave {ids.shape} top-k rows for {n} response "
                                  f"tokens at k={k}")
        all_lp.append(np.asarray(lps, dtype=np.float16))
        all_ids.append(np.asarray(ids).astype(id_dtype))
        offsets.append(offsets[-1] + n)
        if progress:
            progress.advance(task)
    n = offsets[-1]
    ids = np.concatenate(all_ids)
    lps = np.concatenate(all_lp)
    tail = np.clip(1.0 - np.exp(lps.astype(np.float64)).sum(-1), 0.0, 1.0).astype(np.float16)  # (N,)
    meta = {
        "format": FORMAT,
        "teacher": teacher_id,
        "teacher_fingerprint": teacher_fingerprint,
        "engine": engine or {"engine": "torch"},
        "data_fingerprint": data.fingerprint(),
        "vocab_size": vocab,
        "k": k,
        "sequences": len(data.examples),
        "tokens": n,
        "positions_without_teacher_topk": filled,
        "bytes_per_token": (ids.nbytes + lps.nbytes + tail.nbytes) / max(n, 1),
        "teacher_mass_in_top_k": float(1.0 - tail.astype(np.float64).mean()) if n else 0.0,
    }
    with atomic_dir(out_dir) as tmp:
        save_file({"ids": ids, "logprobs": lps, "tail_mass": tail, "offsets": np.asarray(offsets, dtype=np.int64)},
                  str(tmp / "topk.safetensors"))
        (tmp / "cache.json").write_text(json.dumps(meta, indent=2) + "\n")
        for name, write in (extra_files or {}).items():
            write(tmp / name)
    meta["file_bytes"] = os.path.getsize(out_dir / "topk.safetensors")
    return meta


def _pad_row(ids: list[int], lps: list[float], k: int, vocab: int) -> tuple[list[int], list[float]]:
    """A top-k row of exactly k distinct ids: cut, or padded with unused ids of no mass."""
    ids, lps = list(ids[:k]), list(lps[:k])
    used, j = set(ids), 0
    while len(ids) < k:
        if j not in used:
            ids.append(j)
            lps.append(FILLER_LOGPROB)
        j += 1
    return ids, lps


def rows_from_records(records: list[dict], data: Encoded, k: int, vocab: int):
    """Top-k rows of `data`'s examples from the teacher's own log-probabilities kept in the generation records
    (`generate --logprobs K`). A record's generated tokens must be the start of its response's encoding exactly;
    positions the teacher gave no top-k for (the end-of-turn token a server does not report, or a record kept as
    text alone) hold the label alone. Returns (rows, filled positions)."""
    by_id = {r["id"]: r for r in records}
    rows, filled = [], 0
    for ex in data.examples:
        rec = by_id[ex["id"]]
        labels = [x for x in ex["labels"] if x != IGNORE]
        top = rec.get("teacher_topk") or {"ids": [], "logprobs": []}
        tokens = rec.get("teacher_tokens") or []
        m = min(len(tokens), len(labels))
        if tokens[:m] != labels[:m]:
            raise StaleCacheError(
                f"record {rec['id']}: the teacher's tokens {tokens[:m][:12]} are not the tokenizer's encoding of its "
                f"response {labels[:m][:12]}: the data was generated with another tokenizer; rebuild the data")
        ids, lps = [], []
        for j, label in enumerate(labels):
            if j < len(top["ids"]):
                i, lp = _pad_row(top["ids"][j], top["logprobs"][j], k, vocab)
            else:
                i, lp = _pad_row([label], [0.0], k, vocab)
                filled += 1
            ids.append(i)
            lps.append(lp)
        rows.append((np.asarray(ids, dtype=np.int64).reshape(-1, k), np.asarray(lps, dtype=np.float32).reshape(-1, k)))
    return rows, filled


def describe(cache_dir: Path) -> dict:
    """cache.json of a cache folder, checked to be one this version reads."""
    from edgedistill.checked import read_json

    cache_dir = Path(cache_dir)
    if not (cache_dir / "cache.json").is_file():
        raise EdgeDistillError(f"{cache_dir} is not a logit cache (no cache.json); make one with "
                               "`edgedistill cache-logits`")
    meta = read_json(cache_dir / "cache.json", "logit cache description")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        meta = meta if isinstance(meta, dict) else {}
        raise EdgeDistillError(f"{cache_dir}: unknown cache format {meta.get('format')!r} (this version reads {FORMAT})")
    return meta


def served(meta: dict) -> bool:
    """Whether a served teacher (no local model) made the cache."""
    return (meta.get("engine") or {}).get("engine") == "openai"


def load(cache_dir: Path, data: Encoded, teacher_fingerprint: str | None = None) -> LogitCache:
    """Open a cache and prove it belongs to `data` (and to the teacher, when its fingerprint is given)."""
    from edgedistill.checked import load_safetensors_numpy

    cache_dir = Path(cache_dir)
    meta = describe(cache_dir)
    if meta.get("data_fingerprint") != data.fingerprint():
        raise StaleCacheError(
            f"{cache_dir} was computed on other training data (fingerprint {meta['data_fingerprint']}, this run "
            f"{data.fingerprint()}): the data, tokenizer or --max-length changed; rebuild it with `edgedistill cache-logits`"
        )
    if teacher_fingerprint is not None and meta.get("teacher_fingerprint") != teacher_fingerprint:
        raise StaleCacheError(f"{cache_dir} was made by teacher {meta.get('teacher')!r} ({meta.get('teacher_fingerprint')}), "
                              f"not this teacher ({teacher_fingerprint}); rebuild it")
    arrays = load_safetensors_numpy(cache_dir / "topk.safetensors", StaleCacheError)
    if not {"ids", "logprobs", "offsets"} <= set(arrays):  # tail_mass: written since the teacher engines; not needed to train
        raise StaleCacheError(f"{cache_dir}: topk.safetensors lacks ids/logprobs/offsets; rebuild the cache")
    ids = torch.from_numpy(arrays["ids"].astype(np.int64))
    lp = torch.from_numpy(arrays["logprobs"].astype(np.float32))
    offsets = torch.from_numpy(arrays["offsets"])
    if ids.shape != lp.shape or ids.shape[0] != meta.get("tokens") or len(offsets) != (meta.get("sequences") or 0) + 1:
        raise StaleCacheError(f"{cache_dir}: topk.safetensors does not match cache.json; rebuild the cache")
    return LogitCache(meta, ids, lp, offsets)


def load_arrays(cache_dir: Path) -> dict[str, np.ndarray]:
    """The cache's arrays as stored (ids, logprobs, tail_mass, offsets), for inspection and comparisons."""
    from edgedistill.checked import load_safetensors_numpy

    describe(cache_dir)
    return load_safetensors_numpy(Path(cache_dir) / "topk.safetensors", StaleCacheError)
