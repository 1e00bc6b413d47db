"""Near-duplicate detection for prompt splits: no train prompt may be a light edit of a test prompt.

Two texts are near-duplicates when the Jaccard similarity of their word 3-gram sets (after lower-casing and
replacing digits, so "order NW-123456" and "order NW-654321" look alike) reaches a threshold. Near-duplicates
are grouped (union-find over all pairs) and a whole group always lands in one split.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

_WORD = re.compile(r"[a-z]+|#")


def shingles(text: str, n: int = 3) -> frozenset[str]:
    words = _WORD.findall(re.sub(r"\d+", "#", text.lower()))
    if len(words) < n:
        return frozenset([" ".join(words)])
    return frozenset(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def near_duplicate_pairs(texts: Sequence[str], threshold: float = 0.5) -> list[tuple[int, int, float]]:
    """All index pairs (i < j) whose similarity is at least `threshold`. Quadratic: fine for thousands."""
    sh = [shingles(t) for t in texts]
    # Candidate pairs share at least one shingle: index shingles to skip the hopeless pairs.
    index: dict[str, list[int]] = {}
    for i, s in enumerate(sh):
        for g in s:
            index.setdefault(g, []).append(i)
    candidates: set[tuple[int, int]] = set()
    for ids in index.values():
        if len(ids) > 200:  # a shingle as common as "can you please" says nothing about duplication
            continue
        for x in range(len(ids)):
            for y in range(x + 1, len(ids)):
                candidates.add((ids[x], ids[y]))
    out = []
    for i, j in sorted(candidates):
        sim = jaccard(sh[i], sh[j])
        if sim >= threshold:
            out.append((i, j, sim))
    return out


def groups(texts: Sequence[str], threshold: float = 0.5) -> list[int]:
    """A group label per text (the smallest index in its near-duplicate group)."""
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in near_duplicate_pairs(texts, threshold):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return [find(i) for i in range(len(texts))]


def assign_splits(ids: Sequence[str], texts: Sequence[str], fractions=(0.8, 0.1, 0.1), threshold: float = 0.5,
                  names=("train", "validation", "test")) -> list[str]:
    """A split name per item. Groups of near-duplicates are ordered by a hash of their first id (stable across
    runs and machines) and dealt out in that order until each split has its share of items."""
    labels = groups(texts, threshold)
    members: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        members.setdefault(lab, []).append(i)
    order = sorted(members, key=lambda lab: hashlib.sha256(ids[lab].encode()).hexdigest())
    edges, acc = [], 0.0
    for f in fractions:
        acc += f
        edges.append(acc * len(ids))
    out = [""] * len(ids)
    done = 0
    for lab in order:
        split = next((n for n, e in zip(names, edges) if done < e), names[-1])
        for i in members[lab]:
            out[i] = split
        done += len(members[lab])
    return out
