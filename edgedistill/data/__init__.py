"""data: prompts, texts and graded eval sets; teacher generations; splits without near-duplicate leaks."""

from __future__ import annotations

import os
from pathlib import Path

from edgedistill.data.load import DataError, EvalItem, LoadReport, Prompt, load_eval, load_prompts, load_texts

SPLITS = ("train", "validation", "test")


def default_data_dir() -> Path:
    """$EDGEDISTILL_DATA, else the calibration_data/ folder of this source tree."""
    env = os.environ.get("EDGEDISTILL_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "calibration_data"


__all__ = [
    "SPLITS",
    "DataError",
    "EvalItem",
    "LoadReport",
    "Prompt",
    "default_data_dir",
    "load_eval",
    "load_prompts",
    "load_texts",
]
