"""Hidden-state hints (FitNets, Romero et al. 2015): pull the student's hidden state after one of its blocks
towards the teacher's after one of its blocks, on the prompt tokens of the safety records.

Why: whether a prompt is a harmful request or its benign look-alike is decided from the model's reading of the
prompt, and a linear probe (benchmarks/safety_probe.py) reads that far better from the teacher's middle layers
than from a pruned student's. Training the student's answers alone teaches a read-out of its own, weaker
features; the hint moves the features themselves towards the teacher's.

The teacher's hidden state is standardised per channel (mean and spread over the prompt tokens of the records)
and the student's is mapped onto it by one affine map, fitted once by least squares before training and then
held fixed (student and teacher widths may differ), so the term measures what the student's features still
cannot express of the teacher's, in units where every channel counts alike.

Most of those channels have nothing to do with refusing. The decision hint (decision_basis) therefore also
matches the two states along a few directions only, at the last prompt token (where greedy decoding picks the
answer's first token and where the probe reads best): the directions in which the teacher's state there best
separates the kinds of safety prompt (harmful or look-alike, per category; linear discriminant analysis over the
train prompts, shrunk towards the identity so that a thousand prompts give stable directions). The same fitted
map carries the student's state into the teacher's units; the basis picks what of it is compared.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from edgedistill.tensors import IGNORE, collate
from edgedistill.errors import EdgeDistillError

DEPTH = 0.6  # default: the block at this share of each model's depth
SHRINK = 0.3  # decision_basis: share of the within-group scatter replaced by its mean variance


class Reached(Exception):
    """Raised by a stopping capture hook once it has what it needs."""


def default_layers(student_layers: int, teacher_layers: int) -> tuple[int, int]:
    """Hidden-state indices (0 = embeddings, n = after block n) at DEPTH of each model."""
    return max(1, round(DEPTH * student_layers)), max(1, round(DEPTH * teacher_layers))


def check_layers(layers: tuple[int, int], student_layers: int, teacher_layers: int) -> None:
    s, t = layers
    if not (1 <= s <= student_layers and 1 <= t <= teacher_layers):
        raise EdgeDistillError(f"hint layers {s}:{t} are outside the models: the student has blocks 1-{student_layers}, "
                               f"the teacher 1-{teacher_layers}")


@contextlib.contextmanager
def capturing(model, block: int, stop: bool = False):
    """Within the block, each forward pass stores the hidden state after `block` blocks (what hidden_states[block]
    holds for a block below the last) in the yielded dict under "h"; with `stop` the pass ends there (the caller
    catches Reached)."""
    captured: dict = {}

    def grab(mod, args, out):
        captured["h"] = out[0] if isinstance(out, tuple) else out
        if stop:
            raise Reached

    handle = model.model.layers[block - 1].register_forward_hook(grab)
    try:
        yield captured
    finally:
        handle.remove()


@torch.no_grad()
def hidden_after(model, block: int, input_ids, attention_mask) -> torch.Tensor:
    """The hidden state after `block` blocks, without running the blocks above it (no gradient)."""
    with capturing(model, block, stop=True) as captured:
        try:
            model(input_ids=input_ids, attention_mask=attention_mask)
        except Reached:
            pass
    return captured["h"]


def prompt_mask(labels: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the prompt tokens of each row, up to and including the last one before the response (where
    greedy decoding picks the answer's first token); no padding, no response tokens. A row without a response
    counts all its tokens."""
    resp = labels != IGNORE
    width = labels.shape[1]
    first = torch.where(resp.any(1), resp.int().argmax(1), torch.full_like(resp[:, 0], width - 1, dtype=torch.long))
    pos = torch.arange(width, device=labels.device)[None, :]
    return attention_mask.bool() & (pos <= first[:, None])


def last_prompt_index(labels: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) the position of each row's last prompt token (the last True of prompt_mask)."""
    m = prompt_mask(labels, attention_mask)
    pos = torch.arange(labels.shape[1], device=labels.device)[None, :]
    return torch.where(m, pos, torch.full_like(pos, -1)).amax(1)


def decision_basis(states: torch.Tensor, groups: list[str], shrink: float = SHRINK) -> torch.Tensor:
    """(hidden, k) the directions that best separate `groups` in `states` (N, hidden), already standardised:
    the k = groups - 1 solutions of Sb v = λ Sw v (between- and within-group scatter; Sw shrunk towards its mean
    variance), scaled so that each has unit within-group spread."""
    names = sorted(set(groups))
    if len(names) < 2:
        raise EdgeDistillError("the decision hint needs prompts of at least two kinds (harmful and look-alike)")
    x = states.double()
    label = torch.tensor([names.index(g) for g in groups])
    mean = x.mean(0)
    within = torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype)
    between = torch.zeros_like(within)
    for c in range(len(names)):
        xc = x[label == c]
        mc = xc.mean(0)
        within += (xc - mc).T @ (xc - mc)
        between += len(xc) * torch.outer(mc - mean, mc - mean)
    within /= len(x)
    between /= len(x)
    within = (1 - shrink) * within + shrink * within.diagonal().mean() * torch.eye(len(within), dtype=x.dtype)
    chol = torch.linalg.cholesky(within)
    inv = torch.linalg.solve_triangular(chol, torch.eye(len(chol), dtype=x.dtype), upper=False)  # L^-1
    vals, vecs = torch.linalg.eigh(inv @ between @ inv.T)
    top = vecs[:, vals.argsort(descending=True)[: len(names) - 1]]
    return (inv.T @ top).float()  # v = L^-T u: v' Sw v = 1


@dataclass
class HintMap:
    student_layer: int
    teacher_layer: int
    mean: torch.Tensor  # (teacher hidden,) per-channel mean of the teacher's states
    scale: torch.Tensor  # (teacher hidden,) per-channel spread
    weight: torch.Tensor  # (student hidden + 1, teacher hidden): affine map, bias in the last row
    basis: torch.Tensor | None = None  # (teacher hidden, k): decision_basis, for decision_loss

    def target(self, teacher_hidden: torch.Tensor) -> torch.Tensor:
        return (teacher_hidden.float() - self.mean) / self.scale

    def predict(self, student_hidden: torch.Tensor) -> torch.Tensor:
        return student_hidden.float() @ self.weight[:-1] + self.weight[-1]  # train() moves the map to the device

    def loss(self, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Sum over the masked tokens of the mean squared error per channel (a float32 scalar)."""
        err = (self.predict(student_hidden) - self.target(teacher_hidden)).pow(2).mean(-1)
        return (err * mask.to(err.dtype)).sum()

    def decision_loss(self, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, rows: torch.Tensor,
                      index: torch.Tensor) -> torch.Tensor:
        """Sum over `rows` (B,) bool of the mean squared error along the basis at position `index` (B,)."""
        at = torch.arange(len(index), device=index.device)
        diff = self.predict(student_hidden[at, index]) - self.target(teacher_hidden[at, index])
        err = (diff @ self.basis).pow(2).mean(-1)
        return (err * rows.to(err.dtype)).sum()

    def to(self, device) -> "HintMap":
        return HintMap(self.student_layer, self.teacher_layer, self.mean.to(device), self.scale.to(device),
                       self.weight.to(device), None if self.basis is None else self.basis.to(device))


def fit_hint_map(teacher, student, examples: list[dict], pad_id: int, layers: tuple[int, int],
                 batch_size: int = 16, ridge: float = 1e-3, decision: bool = False) -> HintMap:
    """Standardisation and the least-squares map on the prompt tokens of `examples` (each prompt once); with
    `decision`, also the decision_basis of the teacher's states at their last prompt tokens, grouped by each
    example's "group" (encode keeps a record's kind and category there)."""
    s_layer, t_layer = layers
    check_layers(layers, student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    seen, unique = set(), []
    for ex in examples:  # copies of a record share their prompt: fit on each once
        key = tuple(ex["input_ids"][: next((i for i, x in enumerate(ex["labels"]) if x != IGNORE), len(ex["labels"]))])
        if key not in seen:
            seen.add(key)
            unique.append(ex)
    if not unique:
        raise EdgeDistillError("the hint term needs records with a prompt")
    was_training = student.training
    student.eval()
    if decision and any("group" not in ex for ex in unique):
        raise EdgeDistillError("the decision hint needs each safety record's kind (safety.mix_records writes it)")
    xs, ys, lasts = [], [], []
    for i in range(0, len(unique), batch_size):
        b = collate(unique[i : i + batch_size], pad_id)
        m = prompt_mask(b["labels"], b["attention_mask"])
        dev = next(teacher.parameters()).device
        t_h = hidden_after(teacher, t_layer, b["input_ids"].to(dev), b["attention_mask"].to(dev)).float().cpu()
        ys.append(t_h[m])
        if decision:
            lasts.append(t_h[torch.arange(len(t_h)), last_prompt_index(b["labels"], b["attention_mask"])])
        dev = next(student.parameters()).device
        xs.append(hidden_after(student, s_layer, b["input_ids"].to(dev), b["attention_mask"].to(dev))[m.to(dev)].float().cpu())
    if was_training:
        student.train()
    x, y = torch.cat(xs).double(), torch.cat(ys).double()
    mean, scale = y.mean(0), y.std(0).clamp(min=1e-4)
    z = (y - mean) / scale
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    gram = xa.T @ xa
    gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    weight = torch.linalg.solve(gram, xa.T @ z)
    basis = None
    if decision:
        basis = decision_basis((torch.cat(lasts).double() - mean) / scale, [ex["group"] for ex in unique])
    return HintMap(s_layer, t_layer, mean.float(), scale.float(), weight.float(), basis)
