"""Distillation losses: a registry of divergences (one file each) and the combined objective.

objective = kd_weight · τ² · divergence(student/τ, teacher/τ) + (1 - kd_weight) · cross-entropy(targets)

τ is the *loss* temperature (softens both distributions before comparing them; τ² keeps gradient size as in
Hinton et al.). It is unrelated to the sampling temperature used to generate data.
"""

from __future__ import annotations

import torch

from edgedistill.distill.losses import forward_kl, jsd, reverse_kl, skew_kl, tvd  # noqa: F401  (register)
from edgedistill.distill.losses.base import bins, check_params, get, losses, masked_mean, masked_sum, shared_rows, wide
from edgedistill.distill.settings import LossSettings
from edgedistill.errors import EdgeDistillError


def per_token_objective(cfg: LossSettings, student_logits: torch.Tensor, teacher, targets: torch.Tensor | None):
    """Per-position loss (B, T) in float32. teacher: dense logits or a top-k (log-probs, ids) pair; targets
    (B, T) are the next-token ids for the cross-entropy part (ignored positions may hold any id)."""
    out = torch.zeros(student_logits.shape[:2], dtype=wide(student_logits).dtype, device=student_logits.device)
    if cfg.kd_weight > 0:
        tau = cfg.loss_temperature
        s, t = bins(student_logits, teacher, tau)
        out = out + cfg.kd_weight * tau**2 * get(cfg.loss).fn(s, t, **cfg.params)
    if cfg.kd_weight < 1:
        if targets is None:
            raise EdgeDistillError("kd_weight < 1 needs target tokens for the cross-entropy part")
        logp = torch.log_softmax(wide(student_logits), -1)
        ce = -logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
        out = out + (1 - cfg.kd_weight) * ce
    return out


__all__ = ["LossSettings", "bins", "check_params", "get", "losses", "masked_mean", "masked_sum", "per_token_objective",
           "shared_rows"]
