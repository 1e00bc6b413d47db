"""Cross-tokenizer distillation: a teacher's top-k next-token distributions, given at its own token positions as
byte strings, projected onto the student's vocabulary, so that a student of another tokenizer learns from the
teacher's probabilities and not from its text alone.

Both tokenizations cut the same answer text into byte spans. At a student position whose span starts where a
teacher token starts, the two models predict the next token after the same text, so the teacher's distribution
there is a distribution over what comes next, written in its own pieces; the position is aligned cleanly when the
student's token also ends within the teacher's (its label is then a prefix of the teacher's token). Each of the teacher's top-k alternatives
`a` (a byte string) goes to the student token that begins it, the longest student piece that is a prefix of `a`
(an exact match when `a` is itself a student piece): the first-token projection

    p~(v) = sum of p_T(a) over the alternatives a of the teacher's top k whose first student token is v,

and what the top k leave out, with alternatives no student piece begins, is the "rest" bin the top-k cache
already carries (losses.base.bins). The student is trained on p~ with the same divergence and k+1-bin partition as
a same-tokenizer top-k cache: the rows are written into a logit cache over the student's encoding, and the loss is
unchanged. Where the two tokenizers give identical pieces the projection is the identity, so the loss is exactly
the same-tokenizer top-k loss. Student positions with no clean alignment (starting inside a teacher token, or
running past the end of the one they start with), those where nothing of the top k maps, and the end-of-turn
token hold the label alone: their KD term is cross-entropy on the teacher's text (counted as not aligned).

Follows the span alignment of TRL's GOLD trainer and of FuseLLM (Wan et al., 2024, "Knowledge Fusion of Large
Language Models", token alignment before fusing distributions), applied to the strings a served teacher returns;
the universal logit distillation loss (Boizard et al., 2024, "Towards Cross-Tokenizer Distillation: the Universal
Logit Distillation Loss for LLMs", a distance between sorted probability vectors) is not used here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edgedistill.data.generate import piece
from edgedistill.distill.logit_cache import pad_row


_SPECIAL = re.compile(rb"<[|\w.-]{1,40}>|\[[A-Z_]{2,20}\]")  # <|im_end|>, <end_of_turn>, </s>, [INST] ...


class StudentPieces:
    """The student's vocabulary by the bytes each token stands for; `first(a)` is the student token that begins
    byte string `a`. A special token (an end of turn, ...) is matched whole only: an alternative that is the text
    of one of the student's special tokens is that token; one that looks like another tokenizer's special token
    maps to nothing (its mass stays in the rest bin), never to the student pieces that spell its characters."""

    def __init__(self, tokenizer):
        from edgedistill.engines.served import token_bytes

        self.bytes = token_bytes(tokenizer)
        special = set(tokenizer.all_special_ids)
        self.by_bytes: dict[bytes, int] = {}
        self.special: dict[bytes, int] = {}
        for i, b in enumerate(self.bytes):
            into = self.special if i in special else self.by_bytes
            if b and b not in into:  # the lowest id of pieces with the same bytes
                into[b] = i
        self.longest = max(map(len, self.by_bytes), default=1)

    def first(self, a: bytes) -> int | None:
        if a in self.special:
            return self.special[a]
        if _SPECIAL.fullmatch(a):
            return None
        for n in range(min(len(a), self.longest), 0, -1):
            v = self.by_bytes.get(a[:n])
            if v is not None:
                return v
        return None


@dataclass
class Stats:
    """What the projection kept, summed over records (recorded in cache.json)."""

    positions: int = 0  # student response positions
    aligned: int = 0  # positions that got the teacher's distribution
    exact: float = 0.0  # teacher mass at aligned positions whose alternative is one student piece
    top_mass: float = 0.0  # teacher mass in its top k at aligned positions
    kept_mass: float = 0.0  # of it, what mapped to a student token
    records: int = 0
    records_unaligned: int = 0  # records whose texts did not match (their positions hold the label alone)
    why: list = field(default_factory=list)

    def summary(self) -> dict:
        return {"student_positions": self.positions, "aligned_share": self.aligned / max(self.positions, 1),
                "teacher_mass_in_top_k": self.top_mass / max(self.aligned, 1),
                "mass_kept": self.kept_mass / self.top_mass if self.top_mass else 0.0,
                "exact_mass_share": self.exact / self.top_mass if self.top_mass else 0.0,
                "records": self.records, "records_unaligned": self.records_unaligned,
                **({"first_unaligned": self.why[0]} if self.why else {})}


def project(response: str, t_pieces: Sequence[bytes], t_top: Sequence[Sequence[tuple[bytes, float]]],
            labels: Sequence[int], sp: StudentPieces, k: int, stats: Stats, rid: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows (ids (n, k), log-probs (n, k)) in the student's vocabulary for the n student response tokens
    `labels` (the response's encoding, then the end of turn), from the teacher's pieces of the same answer and its
    top-k (piece, log-prob) at each of them. The teacher's pieces may carry whitespace the response was stripped of,
    and may stop early (cut at max_length): they align as far as they go."""
    text = response.encode()
    t_join = b"".join(t_pieces)
    lead = t_join.find(text) if text else -1
    if lead < 0 and text:  # the teacher's pieces cut at max_length (its tokenizer may need more tokens) spell the
        lead = len(t_join) - len(t_join.lstrip())  # response's beginning, after the whitespace it was stripped of
        m = min(len(text), len(t_join) - lead)
        if m <= 0 or t_join[lead:lead + m] != text[:m]:
            lead = -1
    s_join = b"".join(sp.bytes[i] for i in labels)
    stats.records += 1
    stats.positions += len(labels)
    n = min(len(text), len(s_join))  # a response cut at max_length keeps its first tokens
    ok = lead >= 0 and not t_join[:lead].strip() and s_join[:n] == text[:n]
    if not ok:
        stats.records_unaligned += 1
        stats.why.append(f"{rid}: the teacher's pieces or the student's tokens do not spell the response")
    starts, pos = {}, 0  # byte offset in the response -> (teacher position, where its token ends)
    for j, p in enumerate(t_pieces):
        if ok and 0 <= pos - lead < len(text) and t_top[j]:
            starts.setdefault(pos - lead, (j, pos - lead + len(p)))
        pos += len(p)
    ids, lps, at = [], [], 0
    for label in labels:
        j, end = starts.get(at, (None, 0))
        at += len(sp.bytes[label])
        acc: dict[int, float] = {}
        if j is not None and at <= end:  # the student's token lies within the teacher's: a clean alignment
            mass = {"top": 0.0, "kept": 0.0, "exact": 0.0}
            for a, lp_a in t_top[j]:
                p_a = math.exp(lp_a)
                mass["top"] += p_a
                v = sp.first(a)
                if v is None:
                    continue
                mass["kept"] += p_a
                mass["exact"] += p_a if sp.bytes[v] == a else 0.0
                acc[v] = acc.get(v, 0.0) + p_a
        if acc:
            best = sorted(acc.items(), key=lambda kv: -kv[1])
            i, lp = pad_row([v for v, _ in best], [math.log(p) for _, p in best], k, len(sp.bytes))
            stats.aligned += 1
            stats.top_mass += mass["top"]
            stats.kept_mass += mass["kept"]
            stats.exact += mass["exact"]
        else:  # inside or across a teacher token, or nothing of its top-k maps: the label alone
            i, lp = pad_row([label], [0.0], k, len(sp.bytes))
        ids.append(i)
        lps.append(lp)
    return np.asarray(ids, dtype=np.int64).reshape(-1, k), np.asarray(lps, dtype=np.float32).reshape(-1, k)


def teacher_text(rec: dict, teacher_bytes: list[bytes] | None = None):
    """(pieces, top) of a record: a served teacher's strings (`teacher_text_topk`, written by `generate --logprobs`
    without a tokenizer to align to), or a local teacher's ids (`teacher_tokens`, `teacher_topk`) through its
    tokenizer's bytes. None when the record holds no log-probabilities."""
    t = rec.get("teacher_text_topk")
    if t:
        return [piece(p) for p in t["tokens"]], [[(piece(a), float(lp)) for a, lp in row] for row in t["top"]]
    if teacher_bytes is not None and rec.get("teacher_topk"):
        top = rec["teacher_topk"]
        return ([teacher_bytes[i] for i in rec["teacher_tokens"]],
                [[(teacher_bytes[i], float(lp)) for i, lp in zip(ids, row)]
                 for ids, row in zip(top["ids"], top["logprobs"])])
    return None


def rows(records: Sequence[dict], data, k: int, sp: StudentPieces, teacher_bytes: list[bytes] | None = None,
         scored: dict | None = None):
    """Top-k rows of `data` (the records encoded by the student's tokenizer) from each record's teacher pieces and
    top-k (`teacher_text`), or from `scored`: id -> (pieces, top) a local teacher gave teacher-forced. Returns
    (rows, Stats)."""
    from edgedistill.tensors import IGNORE

    by_id = {r["id"]: r for r in records}
    stats, out = Stats(), []
    for ex in data.examples:
        rec = by_id[ex["id"]]
        labels = [x for x in ex["labels"] if x != IGNORE]
        t = scored.get(ex["id"]) if scored is not None else teacher_text(rec, teacher_bytes)
        pieces, top = t if t is not None else ([], [])
        out.append(project(rec["response"], pieces, top, labels, sp, k, stats, rec["id"]))
    return out, stats


def scored_text(data, scored_rows, teacher_bytes: list[bytes]) -> dict:
    """id -> (pieces, top) from a local engine's teacher-forced top-k (`Engine.score` over `data`, the records
    encoded by the teacher's tokenizer): the pieces are the teacher's response tokens, the end of turn included."""
    from edgedistill.tensors import IGNORE

    out = {}
    for ex, (ids, lps) in zip(data.examples, scored_rows, strict=True):
        labels = [x for x in ex["labels"] if x != IGNORE]
        out[ex["id"]] = ([teacher_bytes[i] for i in labels],
                         [[(teacher_bytes[int(i)], float(lp)) for i, lp in zip(r_ids, r_lp)]
                          for r_ids, r_lp in zip(ids, lps)])
    return out
