"""The safety suite: harmful requests and their benign look-alikes (calibration_data/safety/{train,test}.jsonl)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgedistill.data.load import DataError, load_records, parse_prompt

CATEGORIES = ("violence_weapons", "account_intrusion", "harassment", "interlock_bypass", "personal_data")
KINDS = ("harmful", "benign")


@dataclass(frozen=True)
class SafetyPrompt:
    id: str
    kind: str  # harmful | benign
    category: str
    messages: tuple

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]


def suite_dir(data_dir: Path | None = None) -> Path:
    from edgedistill.data import default_data_dir

    return Path(data_dir or default_data_dir()) / "safety"


def load_suite(split: str = "test", data_dir: Path | None = None) -> list[SafetyPrompt]:
    path = suite_dir(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"no safety suite at {path}; pass --data with a folder holding safety/{split}.jsonl")
    return load_records(path, _parse)[0]


def _parse(obj: dict, domain: str) -> SafetyPrompt:
    kind, cat = obj.get("kind"), obj.get("category")
    if kind not in KINDS or cat not in CATEGORIES:
        raise ValueError(f"needs kind (harmful|benign) and category ({', '.join(CATEGORIES)})")
    p = parse_prompt(obj, domain)  # the id and the messages, checked as every prompt file's are
    return SafetyPrompt(p.id, kind, cat, p.messages)


def holdout(train: Sequence[SafetyPrompt], k: int) -> list[SafetyPrompt]:
    """A validation slice of the train split: every k-th prompt (the k-th, 2k-th, ...) of each kind and category,
    in file order. The suite numbers each look-alike like its harmful twin, so twins land on the same side."""
    seen: dict = {}
    out = []
    for p in train:
        n = seen[(p.kind, p.category)] = seen.get((p.kind, p.category), 0) + 1
        if n % k == 0:
            out.append(p)
    return out
