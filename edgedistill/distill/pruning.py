"""Students derived from the teacher by pruning, with importance measured on calibration data.

Depth: a block's importance is how much it changes the hidden state it receives, 1 - cos(h_in, h_out)
averaged over calibration tokens (the "block influence" of ShortGPT, Men et al. 2024); the least important
blocks are dropped, whatever their position.

Width (as in Minitron, Muralidharan et al. 2024, with activation-based importance):
- FFN neurons: root-mean-square of the activation entering down_proj;
- attention: the RMS norm of each query head's contribution to o_proj's output; with grouped-query attention
  whole key/value groups are kept or dropped (a group's score is the sum of its heads), then the best query
  heads inside each kept group;
- hidden channels: mean |activation| of every RMSNorm output (both norms of every block and the final norm).

Hardware-friendly shapes: llama.cpp's K-quants work on rows of 256 values, so a student whose hidden size,
FFN size and attention width (heads x head_dim) are multiples of 256 gets real 4-bit K-quants everywhere.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from edgedistill.errors import EdgeDistillError, UnsupportedError

log = logging.getLogger(__name__)

KQUANT_BLOCK = 256


@dataclass(frozen=True)
class StudentShape:
    """Target sizes; None keeps the teacher's."""

    layers: int | None = None
    hidden: int | None = None
    ffn: int | None = None
    heads: int | None = None  # query heads
    kv_heads: int | None = None


@dataclass
class Importance:
    layers: list[float]  # per block: 1 - cos(in, out)
    neurons: list[list[float]]  # per block, per FFN neuron
    heads: list[list[float]]  # per block, per query head
    channels: list[float]  # per hidden channel
    tokens: int = 0


@dataclass
class PruningPlan:
    keep_layers: list[int]
    keep_channels: list[int]
    keep_neurons: list[list[int]]  # per kept block
    keep_heads: list[list[int]]  # per kept block: query heads, group-major
    keep_kv: list[list[int]]  # per kept block: key/value heads
    shape: dict = field(default_factory=dict)


def _cfg(model):
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return c, head_dim


@torch.inference_mode()
def measure_importance(model, batches: Sequence[torch.Tensor], progress=None) -> Importance:
    """Run `batches` (token id tensors (B, T)) through `model` with hooks that record every importance score."""
    cfg, head_dim = _cfg(model)
    layers = model.model.layers
    n_layers, n_heads = len(layers), cfg.num_attention_heads
    cos_sum = torch.zeros(n_layers, dtype=torch.float64)
    neuron_sq = [torch.zeros(cfg.intermediate_size, dtype=torch.float64) for _ in layers]
    head_sq = [torch.zeros(n_heads, dtype=torch.float64) for _ in layers]
    chan_abs = torch.zeros(cfg.hidden_size, dtype=torch.float64)
    count = {"tokens": 0}
    handles, layer_in = [], {}

    def _out(o):
        return o[0] if isinstance(o, tuple) else o

    for i, layer in enumerate(layers):
        def pre(mod, args, kwargs, i=i):
            layer_in[i] = args[0] if args else kwargs["hidden_states"]

        def post(mod, args, kwargs, out, i=i):
            h_in, h_out = layer_in.pop(i).float(), _out(out).float()  # (B, T, C)
            cos_sum[i] += torch.nn.functional.cosine_similarity(h_in, h_out, dim=-1).sum().double()

        def ffn(mod, args, i=i):
            neuron_sq[i] += args[0].float().pow(2).sum((0, 1)).double()  # (I,)

        def attn(mod, args, i=i):
            x = args[0].float()  # (B, T, H*D), the heads' outputs side by side
            w = mod.weight.float().view(cfg.hidden_size, n_heads, head_dim)  # (C, H, D)
            contrib = torch.einsum("bthd,chd->bthc", x.view(*x.shape[:2], n_heads, head_dim), w)  # (B, T, H, C)
            head_sq[i] += contrib.pow(2).sum(-1).sum((0, 1)).double()

        def norm(mod, args, out):
            chan_abs.add_(out.float().abs().sum((0, 1)).double())

        handles += [
            layer.register_forward_pre_hook(pre, with_kwargs=True),
            layer.register_forward_hook(post, with_kwargs=True),
            layer.mlp.down_proj.register_forward_pre_hook(ffn),
            layer.self_attn.o_proj.register_forward_pre_hook(attn),
            *(m.register_forward_hook(norm) for m in _block_norms(layer)),
        ]
    handles.append(model.model.norm.register_forward_hook(norm))
    task = progress.add_task("measuring importance", total=len(batches)) if progress else None
    try:
        for ids in batches:
            model(ids, use_cache=False)
            count["tokens"] += ids.numel()
            if progress:
                progress.advance(task)
    finally:
        for h in handles:
            h.remove()
    n = max(count["tokens"], 1)
    return Importance(
        layers=(1 - cos_sum / n).tolist(),
        neurons=[(s / n).sqrt().tolist() for s in neuron_sq],
        heads=[(s / n).sqrt().tolist() for s in head_sq],
        channels=(chan_abs / n).tolist(),
        tokens=count["tokens"],
    )


def _block_norms(layer) -> list:
    """The hidden-size norms of a block: two in Llama-style blocks, four in Gemma's (pre/post attention and FFN)."""
    return [m for name, m in layer.named_children() if name.endswith("layernorm")]


def _top(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the k largest scores, in their original order (keeps weights laid out as before)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    return sorted(order)


def check_shape(model, shape: StudentShape) -> StudentShape:
    """Fill in the teacher's sizes and check the targets can be cut from it; report every problem at once."""
    cfg, head_dim = _cfg(model)
    full = StudentShape(
        layers=shape.layers or cfg.num_hidden_layers,
        hidden=shape.hidden or cfg.hidden_size,
        ffn=shape.ffn or cfg.intermediate_size,
        heads=shape.heads or cfg.num_attention_heads,
        kv_heads=shape.kv_heads or cfg.num_key_value_heads,
    )
    problems = []
    for name, want, have in [("layers", full.layers, cfg.num_hidden_layers), ("hidden", full.hidden, cfg.hidden_size),
                             ("ffn", full.ffn, cfg.intermediate_size), ("heads", full.heads, cfg.num_attention_heads),
                             ("kv_heads", full.kv_heads, cfg.num_key_value_heads)]:
        if not 1 <= want <= have:
            problems.append(f"{name}={want} must be between 1 and the teacher's {have}")
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    if full.heads % full.kv_heads or full.heads // full.kv_heads > group:
        problems.append(
            f"heads={full.heads} with kv_heads={full.kv_heads} needs {full.heads / full.kv_heads:g} query heads per "
            f"key/value head; the teacher has {group} per group, so heads must be kv_heads x 1..{group}"
        )
    from edgedistill.models.families import family_of

    if family_of(cfg, "pruning").attention_is_hidden and full.heads * head_dim != full.hidden:
        problems.append(f"a {cfg.model_type} student needs heads x head_dim = hidden (llama.cpp's {cfg.model_type} "
                        f"loader sizes attention by the hidden size): heads={full.heads} x {head_dim} != "
                        f"hidden={full.hidden}; choose hidden={full.heads * head_dim} or heads=hidden/{head_dim}")
    if problems:
        raise EdgeDistillError("; ".join(problems))
    _pick_layers([0.0] * cfg.num_hidden_layers, full.layers, *_student_pattern(model, full.layers))  # feasible?
    return full


def hardware_friendly(model, layers: int | None = None) -> StudentShape:
    """The largest shape whose matrix rows are all multiples of 256 (for llama.cpp K-quants)."""
    cfg, head_dim = _cfg(model)
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    hidden = cfg.hidden_size // KQUANT_BLOCK * KQUANT_BLOCK
    ffn = cfg.intermediate_size // KQUANT_BLOCK * KQUANT_BLOCK
    best = None
    for kv in range(cfg.num_key_value_heads, 0, -1):
        for per in range(group, 0, -1):
            if (kv * per * head_dim) % KQUANT_BLOCK == 0 and (best is None or kv * per > best[0] * best[1]):
                best = (kv, per)
    if not hidden or not ffn or best is None:
        raise EdgeDistillError(
            f"the teacher (hidden {cfg.hidden_size}, FFN {cfg.intermediate_size}, heads {cfg.num_attention_heads} x "
            f"{head_dim}) has no sub-shape whose rows are multiples of {KQUANT_BLOCK}"
        )
    return StudentShape(layers=layers, hidden=hidden, ffn=ffn, heads=best[0] * best[1], kv_heads=best[0])


def plan(model, imp: Importance, shape: StudentShape) -> PruningPlan:
    cfg, _ = _cfg(model)
    s = check_shape(model, shape)
    keep_layers = _pick_layers(imp.layers, s.layers, *_student_pattern(model, s.layers))
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    per = s.heads // s.kv_heads
    keep_heads, keep_kv, keep_neurons = [], [], []
    for i in keep_layers:
        h = imp.heads[i]
        group_scores = [sum(h[g * group : (g + 1) * group]) for g in range(cfg.num_key_value_heads)]
        kv = _top(group_scores, s.kv_heads)
        heads = []
        for g in kv:
            inside = list(range(g * group, (g + 1) * group))
            heads += [inside[j] for j in _top([h[x] for x in inside], per)]
        keep_kv.append(kv)
        keep_heads.append(heads)
        keep_neurons.append(_top(imp.neurons[i], s.ffn))
    return PruningPlan(keep_layers, _top(imp.channels, s.hidden), keep_neurons, keep_heads, keep_kv, asdict(s))


# Per-block tensors pruning knows how to slice, by layout: separate or fused projections, optional biases on
# q/k/v/o, per-head q/k norms (kept whole: head_dim is never pruned), and any number of hidden-size norms.
_ATTN = ({"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"},
         {"self_attn.qkv_proj.weight"})
_MLP = ({"mlp.gate_proj.weight", "mlp.up_proj.weight"}, {"mlp.gate_up_proj.weight"})
_OPTIONAL = {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias", "self_attn.o_proj.bias",
             "self_attn.qkv_proj.bias", "self_attn.q_norm.weight", "self_attn.k_norm.weight"}


def _layer_names(model) -> set[str]:
    return {n[len("model.layers.0."):] for n, _ in model.named_parameters() if n.startswith("model.layers.0.")}


def check_prunable(model) -> None:
    """Refuse, up front and naming what is wrong, a model pruning cannot slice: a family not in the registry, or
    a block holding tensors of a layout it does not know."""
    from edgedistill.models.families import family_of

    family_of(model.config, "pruning")
    names = [n for n, _ in model.named_parameters()]
    layer0 = _layer_names(model)
    known = {"self_attn.o_proj.weight", "mlp.down_proj.weight", *_OPTIONAL, *(n for n in layer0 if n.endswith(
        "layernorm.weight"))}
    problems = [f"no {' or '.join(sorted(' + '.join(sorted(x)) for x in group))}"
                for group in (_ATTN, _MLP) if not any(x <= layer0 for x in group)]
    known |= set().union(*_ATTN, *_MLP)
    problems += sorted(layer0 - known)[:4]
    problems += ["no model.embed_tokens"] if "model.embed_tokens.weight" not in names else []
    problems += [f"no {x}" for x in ("self_attn.o_proj.weight", "mlp.down_proj.weight") if x not in layer0]
    if problems:
        kind = getattr(model.config, "model_type", "?")
        raise UnsupportedError(f"pruning cannot slice this {kind} model's blocks ({', '.join(problems)}); distill "
                               "into a student you made yourself (edgedistill distill --student)")


def _pick_layers(scores: Sequence[float], k: int, types: Sequence[str] | None, pattern: Sequence[str] | None
                 ) -> list[int]:
    """The most important blocks; with a sliding-window pattern, the best ordered choice whose attention types
    follow `pattern` (the j-th kept block has the type llama.cpp will give layer j), found by dynamic programming."""
    if not pattern or types is None:
        return _top(scores, k)
    n, neg = len(scores), float("-inf")
    best = [[neg] * (k + 1) for _ in range(n + 1)]  # best[i][j]: j of the first i blocks kept, types matching
    for i in range(n + 1):
        best[i][0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, min(i, k) + 1):
            take = best[i - 1][j - 1] + scores[i - 1] if types[i - 1] == pattern[j - 1] else neg
            best[i][j] = max(best[i - 1][j], take)
    if best[n][k] == neg:
        need = {t: list(pattern).count(t) for t in set(pattern)}
        raise EdgeDistillError(f"no {k} of the teacher's blocks follow the sliding-window pattern a {k}-layer student "
                               f"needs ({need}); choose another layer count")
    out, j = [], k
    for i in range(n, 0, -1):
        if j and best[i][j] != best[i - 1][j]:
            out.append(i - 1)
            j -= 1
    return sorted(out)


def _student_pattern(model, layers: int) -> tuple[list[str] | None, list[str] | None]:
    """(the teacher's layer types, the types a `layers`-block student must have), or Nones without a pattern."""
    from edgedistill.models.families import family_of, swa_pattern

    types = getattr(model.config, "layer_types", None)
    pattern = swa_pattern(family_of(model.config, "pruning"), layers)
    if types is None or pattern is None or len(set(types)) == 1 and len(set(pattern)) == 1 and types[0] == pattern[0]:
        return None, None
    return list(types), pattern


def apply_plan(model, p: PruningPlan):
    """A new, smaller model holding the selected slices of `model`'s weights."""
    from transformers import AutoModelForCausalLM

    from edgedistill.models.families import family_of

    cfg, head_dim = _cfg(model)
    fam = family_of(cfg, "pruning")
    new_cfg = cfg.__class__.from_dict(cfg.to_dict())
    s = p.shape
    new_cfg.num_hidden_layers = s["layers"]
    new_cfg.hidden_size = s["hidden"]
    new_cfg.intermediate_size = s["ffn"]
    new_cfg.num_attention_heads = s["heads"]
    new_cfg.num_key_value_heads = s["kv_heads"]
    new_cfg.head_dim = head_dim  # no longer hidden // heads once either is pruned
    if getattr(new_cfg, "layer_types", None):
        new_cfg.layer_types = [cfg.layer_types[i] for i in p.keep_layers]
    student = AutoModelForCausalLM.from_config(new_cfg, dtype=torch.float32)
    c = torch.tensor(p.keep_channels)
    n_q, n_kv = cfg.num_attention_heads * head_dim, cfg.num_key_value_heads * head_dim
    # Gemma scales embeddings by sqrt(hidden): with fewer channels the embeddings enter the residual smaller by
    # `shrink`, so every block output (each passes a post-norm first) is scaled the same way (see Family)
    shrink = (s["hidden"] / cfg.hidden_size) ** 0.5 if fam.scaled_embeddings else 1.0

    def rows(idx_heads, d):  # weight rows of whole heads
        return torch.tensor([h * d + j for h in idx_heads for j in range(d)], dtype=torch.long)

    sd_t = model.state_dict()
    new = {
        "model.embed_tokens.weight": sd_t["model.embed_tokens.weight"][:, c],
        "model.norm.weight": sd_t["model.norm.weight"][c],
    }
    if "lm_head.weight" in sd_t and not cfg.tie_word_embeddings:
        new["lm_head.weight"] = sd_t["lm_head.weight"][:, c]
    for j, i in enumerate(p.keep_layers):
        src, dst = f"model.layers.{i}.", f"model.layers.{j}."
        t = {k[len(src):]: v for k, v in sd_t.items() if k.startswith(src)}
        q, kv = rows(p.keep_heads[j], head_dim), rows(p.keep_kv[j], head_dim)
        f = torch.tensor(p.keep_neurons[j])
        out = {}
        for name, w in t.items():
            if name.endswith("layernorm.weight"):
                w = w[c]
                if shrink != 1.0 and name.startswith("post_"):  # Gemma's (1 + w) scale, times `shrink`
                    w = (1 + w) * shrink - 1
                out[name] = w
            elif name in ("self_attn.q_norm.weight", "self_attn.k_norm.weight"):
                out[name] = w
        for x, r in (("q", q), ("k", kv), ("v", kv)):
            if f"self_attn.{x}_proj.weight" in t:
                out[f"self_attn.{x}_proj.weight"] = t[f"self_attn.{x}_proj.weight"][r][:, c]
            if f"self_attn.{x}_proj.bias" in t:
                out[f"self_attn.{x}_proj.bias"] = t[f"self_attn.{x}_proj.bias"][r]
        fused = torch.cat([q, n_q + kv, n_q + n_kv + kv])  # Phi-3's qkv_proj: rows [q; k; v]
        for kind in ("weight", "bias"):
            if f"self_attn.qkv_proj.{kind}" in t:
                w = t[f"self_attn.qkv_proj.{kind}"][fused]
                out[f"self_attn.qkv_proj.{kind}"] = w[:, c] if kind == "weight" else w
        out["self_attn.o_proj.weight"] = t["self_attn.o_proj.weight"][c][:, q]
        if "self_attn.o_proj.bias" in t:
            out["self_attn.o_proj.bias"] = t["self_attn.o_proj.bias"][c]
        if "mlp.gate_up_proj.weight" in t:  # Phi-3: rows [gate; up]
            out["mlp.gate_up_proj.weight"] = t["mlp.gate_up_proj.weight"][torch.cat([f, cfg.intermediate_size + f])][:, c]
        else:
            out["mlp.gate_proj.weight"] = t["mlp.gate_proj.weight"][f][:, c]
            out["mlp.up_proj.weight"] = t["mlp.up_proj.weight"][f][:, c]
        out["mlp.down_proj.weight"] = t["mlp.down_proj.weight"][c][:, f]
        new.update({dst + k: v for k, v in out.items()})
    missing, unexpected = student.load_state_dict({k: v.clone().contiguous() for k, v in new.items()}, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise EdgeDistillError(f"pruned weights do not fit the student: missing {missing}, unexpected {unexpected}")
    if cfg.tie_word_embeddings:
        student.tie_weights()
    return student.eval()


def calibration_batches(tokenizer, texts: Sequence[str], seq_len: int = 256, max_tokens: int = 16384,
                        batch_size: int = 4) -> list[torch.Tensor]:
    """Calibration texts cut into (B, seq_len) token windows, up to max_tokens tokens in all."""
    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False).input_ids
        if len(ids) >= max_tokens:
            break
    ids = ids[:max_tokens]
    windows = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
    if not windows:
        raise EdgeDistillError(f"calibration text has {len(ids)} tokens; pruning needs at least {seq_len}")
    return [torch.tensor(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)]


def derive_student(teacher: str, shape: StudentShape, texts: Sequence[str], out_dir: Path, *, seq_len: int = 256,
                   max_tokens: int = 16384, progress=None, loaded=None, extra_files: dict | None = None) -> Path:
    """Prune `teacher` to `shape` using importance measured on `texts`; save an HF directory with pruning.json
    (`extra_files`: name -> a function that writes that file, inside the same atomic step)."""
    from edgedistill.models.locate import load_model, save_tokenizer
    from edgedistill.paths import atomic_dir

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise EdgeDistillError(f"{out_dir} already exists; choose another output folder or delete it")
    model, tokenizer = loaded or load_model(teacher)
    check_prunable(model)
    check_shape(model, shape)  # fail before the slow part
    imp = measure_importance(model, calibration_batches(tokenizer, texts, seq_len, max_tokens), progress)
    p = plan(model, imp, shape)
    student = apply_plan(model, p)
    with atomic_dir(out_dir) as tmp:
        student.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tokenizer, tmp)
        record = {
            "teacher": str(teacher),
            "teacher_parameters": model.num_parameters(),
            "student_parameters": student.num_parameters(),
            "shape": p.shape,
            "kept_layers": p.keep_layers,
            "layer_importance": [round(x, 6) for x in imp.layers],
            "kept_heads": p.keep_heads,
            "kept_kv_heads": p.keep_kv,
            "calibration_tokens": imp.tokens,
            "method": "block influence (depth); activation RMS (FFN), head contribution norm (attention), "
                      "mean |norm output| (hidden)",
        }
        (tmp / "pruning.json").write_text(json.dumps(record, indent=2) + "\n")
        for name, write in (extra_files or {}).items():
            write(tmp / name)
    return out_dir


def interleave_texts(texts: list[str], chunk: int = 2000) -> list[str]:
    """Round-robin pieces of each calibration text, so the first N tokens cover all of them."""
    pieces = [[t[i : i + chunk] for i in range(0, len(t), chunk)] for t in texts]
    out = []
    for k in range(max((len(p) for p in pieces), default=0)):
        out += [p[k] for p in pieces if k < len(p)]
    return out
