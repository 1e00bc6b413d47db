"""The distillation objective without full-vocabulary logits: the output head is applied to a few positions at a
time, so (positions × vocabulary) float32 logits of the student and the teacher exist for one chunk only.

The models run as usual, through whatever wraps them (DDP), but asked for the last position's logits alone
(`logits_to_keep=1`); a hook on the backbone keeps the final hidden states it returned. Only the response
positions (labels set) are kept. For each chunk of `chunk` of them the student's head (and the teacher's, for a
live teacher) gives logits, the registered objective sums them, and the chunk is checkpointed: its logits are not
kept for the backward pass but recomputed there, one chunk at a time. The result and its gradients equal
`per_token_objective` on full logits (tests/distill/test_chunked_loss.py, float64).

It needs the output head's weight between forward and backward, which FSDP reshards; under FSDP the full-logits
path is used (see distill.train).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from edgedistill.errors import EdgeDistillError


def head_of(model) -> tuple[torch.nn.Module, float | None]:
    """(the output head, the final logit soft-cap or None) of a causal LM, as its own forward applies them."""
    head = model.get_output_embeddings()
    if head is None:
        raise EdgeDistillError(f"{type(model).__name__} has no output head to apply per chunk; use --kd-chunk 0")
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return head, getattr(cfg, "final_logit_softcapping", None)


def logits_from_hidden(head: torch.nn.Module, cap: float | None, hidden: torch.Tensor) -> torch.Tensor:
    logits = head(hidden)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _backbone(model) -> torch.nn.Module:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    decoder = decoder if isinstance(decoder, torch.nn.Module) and decoder is not model else model.base_model
    if decoder is model:
        raise EdgeDistillError(f"{type(model).__name__} has no separate backbone to take hidden states from; use "
                               "--kd-chunk 0")
    return decoder


def final_hidden(model, head: torch.nn.Module, **inputs) -> tuple[torch.Tensor, object]:
    """(final hidden states (B, T, H), as the head would see them, the model's output with the last position's
    logits only). `model` may be a wrapper (DDP) of the module that owns `head`: the forward goes through it, and a
    hook on the backbone keeps its output."""
    module = model.module if hasattr(model, "module") else model
    seen: list = []
    handle = _backbone(module).register_forward_hook(lambda mod, args, out: seen.append(out[0]))
    try:
        out = model(**inputs, logits_to_keep=1)
    finally:
        handle.remove()
    if not seen:
        raise EdgeDistillError("the model's forward did not run its backbone; use --kd-chunk 0")
    return seen[-1], out


def chunked_objective(loss_cfg, per_token_objective, s_head, s_cap, s_hidden: torch.Tensor, teacher,
                      labels: torch.Tensor, mask: torch.Tensor, chunk: int) -> torch.Tensor:
    """Sum over the masked positions of per_token_objective(loss_cfg, student logits, teacher, labels), computed
    `chunk` positions at a time. teacher: None (cross-entropy alone), a top-k pair ((B, T, k), (B, T, k)), or
    (head, cap, hidden (B, T, H)) of a live teacher."""
    pos = mask.nonzero(as_tuple=True)
    h = s_hidden[pos]  # (N, H)
    tgt = labels[pos].clamp(min=0)
    if isinstance(teacher, tuple) and len(teacher) == 3:
        t_head, t_cap, t_hidden = teacher
        t_sel = t_hidden[pos]
    elif teacher is not None:
        t_sel = (teacher[0][pos], teacher[1][pos])
    else:
        t_sel = None

    def piece(h_c, tgt_c, *t_c):
        s_logits = logits_from_hidden(s_head, s_cap, h_c).unsqueeze(0)  # (1, n, V)
        if t_sel is None:
            t_view = None
        elif len(t_c) == 1:
            with torch.no_grad():
                t_view = logits_from_hidden(t_head, t_cap, t_c[0]).unsqueeze(0)
        else:
            t_view = (t_c[0].unsqueeze(0), t_c[1].unsqueeze(0))
        return per_token_objective(loss_cfg, s_logits, t_view, tgt_c.unsqueeze(0)).sum()

    if h.shape[0] == 0:
        return s_hidden.sum().float() * 0.0  # no response token: a zero that still has a graph
    total = s_hidden.new_zeros((), dtype=torch.float64 if s_hidden.dtype == torch.float64 else torch.float32)
    for a in range(0, h.shape[0], chunk):
        sl = slice(a, a + chunk)
        t_c = () if t_sel is None else ((t_sel[sl],) if isinstance(t_sel, torch.Tensor) else (t_sel[0][sl], t_sel[1][sl]))
        if torch.is_grad_enabled() and h.requires_grad:
            total = total + checkpoint(piece, h[sl], tgt[sl], *t_c, use_reentrant=False)
        else:
            total = total + piece(h[sl], tgt[sl], *t_c)
    return total
