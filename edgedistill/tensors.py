"""Token lists to tensors, shared by the teacher engines (generation, scoring), data and training."""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE = -100  # label of a position that is not trained on (prompt, padding)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into input_ids and attention_mask (B, T), as decoder-only generation needs: the last
    column holds every row's last token."""
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, x in enumerate(seqs):
        ids[row, width - len(x):] = torch.tensor(x, dtype=torch.long, device=device)
        mask[row, width - len(x):] = 1
    return ids, mask


def collate(examples: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids (B, T), attention_mask (B, T), labels (B, T)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if "cache_index" in examples[0]:  # row of each sequence in a teacher-logit cache
        batch["cache_index"] = torch.tensor([e["cache_index"] for e in examples])
    return batch
