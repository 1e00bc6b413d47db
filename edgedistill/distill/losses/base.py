"""What every distillation loss shares: one signature, float32 math, masking, and token normalisation.

A divergence takes the student's and the teacher's log-probabilities over the same N bins, shape (..., N),
and returns one value per position, shape (...). N is the vocabulary for live teachers, or k+1 for a cached
top-k teacher (its k tokens plus one bin for the rest of the mass; see `bins`). Reduction is separate
(`masked_sum`), because the right denominator is the number of response tokens in the whole gradient-
accumulation step, not in one micro-batch: dividing each micro-batch by its own count over-weights tokens
of short micro-batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from edgedistill.errors import EdgeDistillError

Divergence = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: Divergence
    params: dict = field(default_factory=dict)  # name -> (default, low, high)
    reference: str = ""


_LOSSES: dict[str, LossSpec] = {}


def register(name: str, *, params: dict | None = None, reference: str = ""):
    """Decorator: make a divergence available by name. A name registered twice is an error."""

    def deco(fn: Divergence) -> Divergence:
        if name in _LOSSES:
            raise EdgeDistillError(f"loss {name!r} is registered twice")
        _LOSSES[name] = LossSpec(name, fn, dict(params or {}), reference)
        return fn

    return deco


def losses() -> dict[str, LossSpec]:
    return dict(_LOSSES)


def get(name: str) -> LossSpec:
    try:
        return _LOSSES[name]
    except KeyError:
        raise EdgeDistillError(f"unknown loss {name!r}; choose from {', '.join(sorted(_LOSSES))}") from None


def check_params(spec: LossSpec, given: dict) -> dict:
    """Defaults filled in, unknown names and out-of-range values reported all at once."""
    problems, out = [], {}
    for k in given:
        if k not in spec.params:
            problems.append(f"{spec.name} has no parameter {k!r} (it takes: {', '.join(spec.params) or 'none'})")
    for k, (default, lo, hi) in spec.params.items():
        v = float(given.get(k, default))
        if not lo <= v <= hi:
            problems.append(f"{spec.name}: {k}={v} must be in [{lo}, {hi}]")
        out[k] = v
    if problems:
        raise EdgeDistillError("; ".join(problems))
    return out


def wide(x: torch.Tensor) -> torch.Tensor:
    """x in float32 at least: divergences never run in bf16/fp16 (float64 stays float64, for exact tests)."""
    return x if x.dtype == torch.float64 else x.float()


def kl(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis, with 0·log 0 = 0."""
    p = p_logp.exp()
    return torch.where(p > 0, p * (p_logp - q_logp), torch.zeros_like(p)).sum(-1)


def log_mix(a_logp: torch.Tensor, b_logp: torch.Tensor, w: float) -> torch.Tensor:
    """log(w·a + (1-w)·b), computed in log space."""
    if w <= 0.0:
        return b_logp
    if w >= 1.0:
        return a_logp
    return torch.logaddexp(a_logp + math.log(w), b_logp + math.log1p(-w))


def shared_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both logits cut to the output rows both models have (padded vocabularies of one tokenizer)."""
    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    return student_logits[..., :v], teacher_logits[..., :v]


def bins(student_logits: torch.Tensor, teacher: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
         temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned float32 log-probabilities (student, teacher).

    teacher is either dense logits (B, T, V), or a top-k pair (log-probs (B, T, k) at temperature 1, token ids
    (B, T, k)) from the logit cache. For top-k both distributions are collapsed to k+1 bins: the k teacher
    tokens and "everything else", so every divergence stays finite and exact on that partition.
    """
    if isinstance(teacher, torch.Tensor):
        student_logits, teacher = shared_rows(student_logits, teacher)
        return (torch.log_softmax(wide(student_logits) / temperature, dim=-1),
                torch.log_softmax(wide(teacher) / temperature, dim=-1))
    s_logp = torch.log_softmax(wide(student_logits) / temperature, dim=-1)  # (B, T, V)
    t_topk, ids = teacher
    t_topk = wide(t_topk)
    if temperature != 1.0:
        # Re-temper the cached log-probs; the rest bin keeps its share of the re-tempered mass approximately.
        t_topk = t_topk / temperature
    t_rest = torch.log1p(-t_topk.exp().sum(-1).clamp(max=1 - 1e-6))  # (B, T)
    t = torch.cat([t_topk, t_rest.unsqueeze(-1)], -1)
    t = t - torch.logsumexp(t, -1, keepdim=True)  # (B, T, k+1), sums to 1
    ids = ids.long()
    outside = ids >= s_logp.shape[-1]  # a padded row the student does not have: a probability it cannot give
    s_topk = s_logp.gather(-1, ids.masked_fill(outside, 0)).masked_fill(outside, -30.0)  # (B, T, k)
    s_rest = torch.log1p(-s_topk.exp().sum(-1).clamp(max=1 - 1e-6))
    return torch.cat([s_topk, s_rest.unsqueeze(-1)], -1), t


def masked_sum(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of per-token values where mask is 1 (padding and prompt tokens contribute nothing)."""
    return torch.where(mask.bool(), per_token, torch.zeros_like(per_token)).sum()


def masked_mean(per_token: torch.Tensor, mask: torch.Tensor, num_tokens: int | torch.Tensor | None = None) -> torch.Tensor:
    """masked_sum / num_tokens, where num_tokens defaults to this mask's count but should be the count over the
    whole accumulation step when gradients are accumulated. An empty mask gives 0 (with a graph)."""
    n = mask.sum() if num_tokens is None else num_tokens
    total = masked_sum(per_token, mask)
    if float(n) == 0:
        return total * 0.0
    return total / n
