"""Distillation losses: a registry of divergences (one file each) and the combined objective.

objective = kd_weight · τ² · divergence(student/τ, teacher/τ) + (1 - kd_weight) · cross-entropy(targets)

τ is the *loss* temperature (softens both distributions before comparing them; τ² keeps gradient size as in
Hinton et al.). It is unrelated to the sampling temperature used to generate data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from edgedistill.distill.losses import forward_kl, jsd, reverse_kl, skew_kl, tvd  # noqa: F401  (register)
from edgedistill.distill.losses.base import bins, check_params, get, losses, masked_mean, masked_sum, shared_rows, wide
from edgedistill.errors import EdgeDistillError


@dataclass(frozen=True)
class LossConfig:
    name: str = "forward_kl"  # a registered divergence
    params: dict = field(default_factory=dict)  # e.g. {"beta": 0.5} for jsd
    temperature: float = 1.0  # loss temperature τ
    kd_weight: float = 1.0  # 1: pure distillation, 0: pure cross-entropy on the target tokens

    def __post_init__(self) -> None:
        problems = []
        if not 0.05 <= self.temperature <= 20:
            problems.append(f"loss temperature {self.temperature} must be in [0.05, 20]")
        if not 0.0 <= self.kd_weight <= 1.0:
            problems.append(f"kd_weight {self.kd_weight} must be in [0, 1]")
        try:
            object.__setattr__(self, "params", check_params(get(self.name), self.params))
        except EdgeDistillError as e:
            problems.append(str(e))
        if problems:
            raise EdgeDistillError("; ".join(problems))


def per_token_objective(cfg: LossConfig, student_logits: torch.Tensor, teacher, targets: torch.Tensor | None):
    """Per-position loss (B, T) in float32. teacher: dense logits or a top-k (log-probs, ids) pair; targets
    (B, T) are the next-token ids for the cross-entropy part (ignored positions may hold any id)."""
    out = torch.zeros(student_logits.shape[:2], dtype=wide(student_logits).dtype, device=student_logits.device)
    if cfg.kd_weight > 0:
        s, t = bins(student_logits, teacher, cfg.temperature)
        out = out + cfg.kd_weight * cfg.temperature**2 * get(cfg.name).fn(s, t, **cfg.params)
    if cfg.kd_weight < 1:
        if targets is None:
            raise EdgeDistillError("kd_weight < 1 needs target tokens for the cross-entropy part")
        logp = torch.log_softmax(wide(student_logits), -1)
        ce = -logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
        out = out + (1 - cfg.kd_weight) * ce
    return out


__all__ = ["LossConfig", "bins", "get", "losses", "masked_mean", "masked_sum", "per_token_objective",
           "shared_rows"]
