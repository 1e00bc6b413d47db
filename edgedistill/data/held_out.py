"""The held-out general text that export validation and the bench compare a model with its reference on."""

from __future__ import annotations

from dataclasses import dataclass

from edgedistill.settings import Settings, setting


@dataclass(frozen=True)
class HeldOutSettings(Settings):
    """How much held-out text: declared here once; export and bench take these knobs (settings.like)."""

    chunks: int = setting(16, "Held-out general-text windows for KL / top-1 / perplexity against the reference.",
                          min=1, max=256)
    chunk_len: int = setting(256, "Tokens per window.", min=16, max=8192)
