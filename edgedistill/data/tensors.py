"""Token lists to tensors, shared by generation (data) and training (distill)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


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
