"""Offline logit KD: run the teacher once, keep its top-k log-probabilities per response token, train from them.

Layout of a cache folder:
  cache.json                    what it was made from (teacher id and fingerprint, the engine and its settings,
                                data fingerprint, k, sizes, coverage) and its shards
  shard-00000.safetensors ...   consecutive sequences each: ids (n, k) uint16 (int32 for vocabularies over
                                65,536), logprobs (n, k) float16, tail_mass (n,) float16 (the teacher's probability
                                outside its top k), offsets (s + 1,) int64: rows offsets[j]:offsets[j+1] are the
                                shard's j-th sequence's response tokens

Only response tokens are stored (prompt tokens are never trained on). At k = 64 and a vocabulary under 65,536 that
is 64 x (2 + 2) + 2 = 258 bytes per token. A shard holds about `shard_tokens` tokens (default 2^20, 258 MB at
k = 64). Training memory-maps the shards and reads the rows of each batch only, so the cache never sits in memory
whole, and several processes (DDP ranks) share one copy through the page cache. The rows come from any teacher
engine: scored teacher-forced (torch, llama.cpp) or read from the records of a served teacher's answers (openai).
The loss then compares k + 1 bins (the teacher's top k and "the rest"), see losses.base.bins.

A cache is keyed by the teacher's fingerprint and by the exact token sequences it was computed on; training
with other data or another teacher is refused. Version-1 caches (one topk.safetensors) are still read.
"""

from __future__ import annotations

import bisect
import json
import os
from pathlib import Path

import numpy as np
import torch

from edgedistill.distill.dataset import Encoded
from edgedistill.tensors import IGNORE
from edgedistill.errors import EdgeDistillError

FORMAT = "edgedistill-topk-v2"
_V1 = "edgedistill-topk-v1"
SHARD_TOKENS = 1 << 20  # response tokens per shard file


class StaleCacheError(EdgeDistillError):
    """A cache that does not belong to the data or teacher it is used with, or a damaged one."""


class LogitCache:
    """An opened cache: the description and its memory-mapped shards. Rows are read per batch."""

    def __init__(self, meta: dict, shards: list[tuple[int, np.ndarray, object]]):
        self.meta = meta
        self._shards = shards  # (first sequence, local offsets (s + 1,), safe_open handle) in sequence order
        self._firsts = [first for first, _, _ in shards]

    def rows(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sequence i's (ids (n, k), log-probs (n, k)) as stored, read from its shard."""
        if not 0 <= i < self.meta["sequences"]:
            raise IndexError(f"sequence {i} is not in the cache ({self.meta['sequences']} sequences)")
        first, offsets, f = self._shards[bisect.bisect_right(self._firsts, i) - 1]
        a, b = int(offsets[i - first]), int(offsets[i - first + 1])
        return f.get_slice("ids")[a:b], f.get_slice("logprobs")[a:b]

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
            r_ids, r_lp = self.rows(i)
            if len(r_ids) != len(pos):
                raise StaleCacheError(f"cache row {i} holds {len(r_ids)} tokens, the batch has {len(pos)}; rebuild "
                                      "the cache")
            lp[row, pos] = torch.from_numpy(r_lp.astype(np.float32))
            ids[row, pos] = torch.from_numpy(r_ids.astype(np.int64))
        return lp, ids


FILLER_LOGPROB = -30.0  # the log-probability of padding entries: no mass, but finite for the divergences


def build(rows, teacher_id: str, teacher_fingerprint: str, data: Encoded, out_dir: Path, *, k: int, vocab: int,
          engine: dict | None = None, filled: int = 0, progress=None, extra_files: dict | None = None,
          shard_tokens: int = SHARD_TOKENS, projection: dict | None = None) -> dict:
    """Write the cache folder atomically from `rows`: per example of `data`, in order, (ids (n, k), logprobs
    (n, k)) of the teacher's top k at its n response positions. Rows are written out a shard at a time (about
    `shard_tokens` tokens each), so building holds one shard in memory. `engine`: what made them (recorded);
    `filled`: positions that had no teacher top-k and hold the label alone. `extra_files`: name -> a function that
    writes that file, inside the same atomic step. `projection`: for rows projected onto a student of another
    tokenizer (distill.cross_tokenizer), its tokenizer and what the projection kept. Returns cache.json's content."""
    from safetensors.numpy import save_file

    from edgedistill.paths import atomic_dir

    if not 1 <= k <= vocab:
        raise EdgeDistillError(f"k={k} must be between 1 and the vocabulary size {vocab}")
    if shard_tokens < 1:
        raise EdgeDistillError(f"shard_tokens={shard_tokens} must be at least 1")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise EdgeDistillError(f"{out_dir} already exists; delete it or choose another --out")
    id_dtype = np.uint16 if vocab <= 65536 else np.int32
    task = progress.add_task(f"teacher top-{k} log-probs", total=len(data.examples)) if progress else None
    shards: list[dict] = []
    total, nbytes, mass_out = 0, 0, 0.0
    with atomic_dir(out_dir) as tmp:
        buf_ids, buf_lp, offsets, first = [], [], [0], 0

        def flush(end: int) -> None:
            nonlocal total, nbytes, mass_out
            ids = np.concatenate(buf_ids) if buf_ids else np.zeros((0, k), id_dtype)
            lps = np.concatenate(buf_lp) if buf_lp else np.zeros((0, k), np.float16)
            tail = np.clip(1.0 - np.exp(lps.astype(np.float64)).sum(-1), 0.0, 1.0).astype(np.float16)
            name = f"shard-{len(shards):05d}.safetensors"
            save_file({"ids": ids, "logprobs": lps, "tail_mass": tail, "offsets": np.asarray(offsets, np.int64)},
                      str(tmp / name))
            shards.append({"file": name, "first_sequence": first, "sequences": end - first, "tokens": len(ids),
                           "bytes": os.path.getsize(tmp / name)})
            total, nbytes = total + len(ids), nbytes + ids.nbytes + lps.nbytes + tail.nbytes
            mass_out += float(tail.astype(np.float64).sum())

        n_seq = 0
        for n_seq, (ex, (ids, lps)) in enumerate(zip(data.examples, rows, strict=True), 1):
            n = sum(1 for x in ex["labels"] if x != IGNORE)
            if ids.shape != (n, k) or lps.shape != (n, k):
                raise StaleCacheError(f"example {ex['id']}: the teacher gave {ids.shape} top-k rows for {n} response "
                                      f"tokens at k={k}")
            buf_lp.append(np.asarray(lps, dtype=np.float16))
            buf_ids.append(np.asarray(ids).astype(id_dtype))
            offsets.append(offsets[-1] + n)
            if offsets[-1] >= shard_tokens:
                flush(n_seq)
                buf_ids, buf_lp, offsets, first = [], [], [0], n_seq
            if progress:
                progress.advance(task)
        if len(offsets) > 1 or not shards:
            flush(n_seq)
        meta = {
            "format": FORMAT,
            "teacher": teacher_id,
            "teacher_fingerprint": teacher_fingerprint,
            "engine": engine or {"engine": "torch"},
            "data_fingerprint": data.fingerprint(),
            "vocab_size": vocab,
            "k": k,
            "sequences": len(data.examples),
            "tokens": total,
            "positions_without_teacher_topk": filled,
            "bytes_per_token": nbytes / max(total, 1),
            "teacher_mass_in_top_k": 1.0 - mass_out / total if total else 0.0,
            "shards": shards,
            **({"projection": projection} if projection else {}),
        }
        (tmp / "cache.json").write_text(json.dumps(meta, indent=2) + "\n")
        for name, write in (extra_files or {}).items():
            write(tmp / name)
    meta["file_bytes"] = sum(sh["bytes"] for sh in shards)
    return meta


def pad_row(ids: list[int], lps: list[float], k: int, vocab: int) -> tuple[list[int], list[float]]:
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
                i, lp = pad_row(top["ids"][j], top["logprobs"][j], k, vocab)
            else:
                i, lp = pad_row([label], [0.0], k, vocab)
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
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, _V1):
        meta = meta if isinstance(meta, dict) else {}
        raise EdgeDistillError(f"{cache_dir}: unknown cache format {meta.get('format')!r} (this version reads {FORMAT})")
    return meta


def served(meta: dict) -> bool:
    """Whether a served teacher (no local model) made the cache."""
    return (meta.get("engine") or {}).get("engine") == "openai"


def _shard_list(cache_dir: Path, meta: dict) -> list[dict]:
    if meta["format"] == _V1:  # one file, global offsets
        return [{"file": "topk.safetensors", "first_sequence": 0, "sequences": meta.get("sequences"),
                 "tokens": meta.get("tokens")}]
    shards = meta.get("shards")
    if not isinstance(shards, list) or not shards:
        raise StaleCacheError(f"{cache_dir}/cache.json lists no shards; rebuild the cache")
    return shards


def open_shards(cache_dir: Path, meta: dict) -> list[tuple[int, np.ndarray, object]]:
    """Every shard checked before any is read: present, not truncated (the header's promise against the file's
    size), its shapes as cache.json says, the shards covering the sequences in order. Returns (first sequence,
    offsets, an open memory-mapped handle) per shard."""
    from safetensors import safe_open

    from edgedistill.checked import check_safetensors

    cache_dir = Path(cache_dir)
    fix = "rebuild the cache with `edgedistill cache-logits` or copy it again"
    out, expect_first = [], 0
    for sh in _shard_list(cache_dir, meta):
        path = cache_dir / str(sh.get("file"))
        if not path.is_file():
            raise StaleCacheError(f"{cache_dir}: shard {sh.get('file')} is missing; {fix}")
        if "bytes" in sh and path.stat().st_size != sh["bytes"]:
            raise StaleCacheError(f"{path} has {path.stat().st_size} bytes, cache.json says {sh['bytes']}: the shard is "
                                  f"truncated or replaced; {fix}")
        header = check_safetensors(path, StaleCacheError)
        shape = lambda name: tuple((header.get(name) or {}).get("shape") or ())  # noqa: E731
        n, s = sh.get("tokens"), sh.get("sequences")
        if (not {"ids", "logprobs", "offsets"} <= set(header) or shape("ids") != (n, meta["k"])
                or shape("logprobs") != (n, meta["k"]) or shape("offsets") != ((s or 0) + 1,)
                or sh.get("first_sequence") != expect_first):
            raise StaleCacheError(f"{path} does not match cache.json; {fix}")
        f = safe_open(str(path), framework="numpy")
        offsets = f.get_tensor("offsets")
        if int(offsets[0]) != 0 or int(offsets[-1]) != n or np.any(np.diff(offsets) < 0):
            raise StaleCacheError(f"{path}: its offsets do not match its rows; {fix}")
        out.append((expect_first, offsets, f))
        expect_first += s
    if expect_first != meta.get("sequences") or sum(sh.get("tokens") or 0 for sh in _shard_list(cache_dir, meta)) \
            != meta.get("tokens"):
        raise StaleCacheError(f"{cache_dir}: the shards hold {expect_first} sequences, cache.json says "
                              f"{meta.get('sequences')}; {fix}")
    return out


def load(cache_dir: Path, data: Encoded, teacher_fingerprint: str | None = None) -> LogitCache:
    """Open a cache (memory-mapped) and prove it belongs to `data` (and to the teacher, when its fingerprint is
    given) and that every shard is whole."""
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
    return LogitCache(meta, open_shards(cache_dir, meta))


def load_arrays(cache_dir: Path) -> dict[str, np.ndarray]:
    """The whole cache in memory as one set of arrays (ids, logprobs, tail_mass, offsets over all sequences), for
    inspection and comparisons; training reads shards per batch instead."""
    meta = describe(cache_dir)
    parts = {"ids": [], "logprobs": [], "tail_mass": []}
    offsets = [np.zeros(1, np.int64)]
    for _, off, f in open_shards(Path(cache_dir), meta):
        for name in parts:
            if name in f.keys():
                parts[name].append(f.get_tensor(name))
        offsets.append(off[1:] + offsets[-1][-1])
    out = {name: np.concatenate(v) for name, v in parts.items() if v}
    out["offsets"] = np.concatenate(offsets)
    return out
