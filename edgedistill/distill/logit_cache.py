"""Offline logit KD: run the teacher once, keep its top-k log-probabilities per response token, train from them.

Layout of a cache folder:
  cache.json          what it was made from (teacher id and fingerprint, data fingerprint, k, sizes, coverage)
  topk.safetensors    ids (N, k) uint16 (int32 for vocabularies over 65,536), logprobs (N, k) float16,
                      offsets (S + 1,) int64: rows offsets[i]:offsets[i+1] are sequence i's response tokens

N is the number of response tokens (prompt tokens are never trained on, so they are not stored). At k = 64 and
a vocabulary under 65,536 that is 64 x (2 + 2) = 256 bytes per token. Training reads the cache instead of the
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

from edgedistill.distill.dataset import IGNORE, Encoded, collate
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


@torch.inference_mode()
def build(teacher, teacher_id: str, teacher_fingerprint: str, data: Encoded, out_dir: Path, *, k: int = 64,
          batch_size: int = 4, pad_id: int = 0, progress=None, extra_files: dict | None = None) -> dict:
    """Run the teacher over `data` and write the cache folder atomically (`extra_files`: name -> a function that
    writes that file, inside the same atomic step). Returns cache.json's content."""
    from safetensors.numpy import save_file

    from edgedistill.paths import atomic_dir

    vocab = teacher.config.vocab_size
    if not 1 <= k <= vocab:
        raise EdgeDistillError(f"k={k} must be between 1 and the vocabulary size {vocab}")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise EdgeDistillError(f"{out_dir} already exists; delete it or choose another --out")
    id_dtype = np.uint16 if vocab <= 65536 else np.int32
    all_ids, all_lp, offsets, covered = [], [], [0], 0.0
    task = progress.add_task(f"teacher top-{k} log-probs", total=len(data.examples)) if progress else None
    teacher.eval()
    for start in range(0, len(data.examples), batch_size):
        chunk = data.examples[start : start + batch_size]
        b = collate(chunk, pad_id)
        logp = torch.log_softmax(teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float(), -1)
        top = logp.topk(k, dim=-1)  # (B, T, k), sorted
        for row in range(len(chunk)):
            m = b["labels"][row] != IGNORE
            v, ix = top.values[row][m], top.indices[row][m]  # (n, k)
            covered += float(v.exp().sum())
            all_lp.append(v.numpy().astype(np.float16))
            all_ids.append(ix.numpy().astype(id_dtype))
            offsets.append(offsets[-1] + int(m.sum()))
        if progress:
            progress.advance(task, len(chunk))
    n = offsets[-1]
    ids = np.concatenate(all_ids)
    lps = np.concatenate(all_lp)
    meta = {
        "format": FORMAT,
        "teacher": teacher_id,
        "teacher_fingerprint": teacher_fingerprint,
        "data_fingerprint": data.fingerprint(),
        "vocab_size": vocab,
        "k": k,
        "sequences": len(data.examples),
        "tokens": n,
        "bytes_per_token": (ids.nbytes + lps.nbytes) / max(n, 1),
        "teacher_mass_in_top_k": covered / max(n, 1),
    }
    with atomic_dir(out_dir) as tmp:
        save_file({"ids": ids, "logprobs": lps, "offsets": np.asarray(offsets, dtype=np.int64)},
                  str(tmp / "topk.safetensors"))
        (tmp / "cache.json").write_text(json.dumps(meta, indent=2) + "\n")
        for name, write in (extra_files or {}).items():
            write(tmp / name)
    meta["file_bytes"] = os.path.getsize(out_dir / "topk.safetensors")
    return meta


def load(cache_dir: Path, data: Encoded, teacher_fingerprint: str | None = None) -> LogitCache:
    """Open a cache and prove it belongs to `data` (and to the teacher, when its fingerprint is given)."""
    from edgedistill.checked import load_safetensors_numpy, read_json

    cache_dir = Path(cache_dir)
    if not (cache_dir / "cache.json").is_file():
        raise EdgeDistillError(f"{cache_dir} is not a logit cache (no cache.json); make one with "
                               "`edgedistill cache-logits`")
    meta = read_json(cache_dir / "cache.json", "logit cache description")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        meta = meta if isinstance(meta, dict) else {}
        raise EdgeDistillError(f"{cache_dir}: unknown cache format {meta.get('format')!r} (this version reads {FORMAT})")
    if meta.get("data_fingerprint") != data.fingerprint():
        raise StaleCacheError(
            f"{cache_dir} was computed on other training data (fingerprint {meta['data_fingerprint']}, this run "
            f"{data.fingerprint()}): the data, tokenizer or --max-length changed; rebuild it with `edgedistill cache-logits`"
        )
    if teacher_fingerprint is not None and meta.get("teacher_fingerprint") != teacher_fingerprint:
        raise StaleCacheError(f"{cache_dir} was made by teacher {meta.get('teacher')!r} ({meta.get('teacher_fingerprint')}), "
                              f"not this teacher ({teacher_fingerprint}); rebuild it")
    arrays = load_safetensors_numpy(cache_dir / "topk.safetensors", StaleCacheError)
    if not {"ids", "logprobs", "offsets"} <= set(arrays):
        raise StaleCacheError(f"{cache_dir}: topk.safetensors lacks ids/logprobs/offsets; rebuild the cache")
    ids = torch.from_numpy(arrays["ids"].astype(np.int64))
    lp = torch.from_numpy(arrays["logprobs"].astype(np.float32))
    offsets = torch.from_numpy(arrays["offsets"])
    if ids.shape != lp.shape or ids.shape[0] != meta.get("tokens") or len(offsets) != (meta.get("sequences") or 0) + 1:
        raise StaleCacheError(f"{cache_dir}: topk.safetensors does not match cache.json; rebuild the cache")
    return LogitCache(meta, ids, lp, offsets)
