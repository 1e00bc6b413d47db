"""Split a prompt file into train / validation / test with near-duplicates kept on one side."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgedistill.data import SPLITS
from edgedistill.data.dedup import assign_splits, groups
from edgedistill.data.load import DataError, Prompt, load_prompts
from edgedistill.paths import check_writable_dir, write_texts_atomic


def prompt_text(p: Prompt) -> str:
    return "\n".join(m["content"] for m in p.messages)


@dataclass
class SplitReport:
    counts: dict[str, int]
    duplicate_groups: int  # groups of 2+ near-duplicate prompts, each kept inside one split


def _record(p: Prompt) -> dict:
    rec = {"id": p.id, "category": p.category, "reasoning": p.reasoning, "messages": list(p.messages)}
    return rec if not p.domain else {"id": p.id, "domain": p.domain, **{k: v for k, v in rec.items() if k != "id"}}


def split_prompts(src: Path, out_dir: Path, fractions=(0.8, 0.1, 0.1), threshold: float = 0.5) -> SplitReport:
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise DataError(f"fractions {fractions} must be three non-negative numbers that sum to 1")
    prompts, _ = load_prompts(src)
    texts = [prompt_text(p) for p in prompts]
    names = assign_splits([p.id for p in prompts], texts, fractions, threshold, SPLITS)
    labels = groups(texts, threshold)
    dup_groups = sum(1 for lab in set(labels) if labels.count(lab) > 1)
    check_writable_dir(Path(out_dir), "--out-dir")
    counts, texts = {}, {}
    for split in SPLITS:
        chosen = [p for p, s in zip(prompts, names) if s == split]
        counts[split] = len(chosen)
        texts[Path(out_dir) / f"{split}.jsonl"] = "".join(json.dumps(_record(p), ensure_ascii=False) + "\n"
                                                          for p in chosen)
    write_texts_atomic(texts)  # the three files, or none of them
    return SplitReport(counts, dup_groups)
