"""Properties of every registered divergence, and the normalisation of the combined objective."""

import math

import numpy as np
import pytest
import torch

from edgedistill.distill.losses import LossSettings, bins, get, losses, masked_mean, masked_sum, per_token_objective
from edgedistill.errors import EdgeDistillError

NAMES = sorted(losses())


def _logits(seed, shape=(2, 5, 11), scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def _slow(name, p, q, **kw):
    """Float64 loops over plain Python lists: the reference the tensor code must match."""
    def kl(a, b):
        return sum(x * (math.log(x) - math.log(y)) for x, y in zip(a, b) if x > 0)

    if name == "forward_kl":
        return kl(p, q)
    if name == "reverse_kl":
        return kl(q, p)
    if name == "tvd":
        return 0.5 * sum(abs(x - y) for x, y in zip(p, q))
    if name == "jsd":
        b = kw.get("beta", 0.5)
        m = [b * x + (1 - b) * y for x, y in zip(p, q)]
        return (b * kl(p, m) + (1 - b) * kl(q, m)) / (b * (1 - b))
    if name == "skew_kl":
        a = kw.get("alpha", 0.1)
        return kl(p, [a * x + (1 - a) * y for x, y in zip(p, q)])
    if name == "skew_reverse_kl":
        a = kw.get("alpha", 0.1)
        return kl(q, [a * y + (1 - a) * x for x, y in zip(p, q)])
    raise AssertionError(name)


def test_every_registered_loss_has_a_reference_here():
    for name in NAMES:
        p, q = [0.5, 0.5], [0.25, 0.75]
        assert _slow(name, p, q) >= 0


@pytest.mark.parametrize("name", NAMES)
def test_zero_for_identical_inputs(name):
    x = _logits(0)
    s, t = bins(x, x.clone())
    assert torch.allclose(get(name).fn(s, t), torch.zeros(2, 5), atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_matches_slow_reference(name):
    s_logits, t_logits = _logits(1), _logits(2)
    s, t = bins(s_logits, t_logits)
    fast = get(name).fn(s, t)
    q = torch.softmax(s_logits.double(), -1)
    p = torch.softmax(t_logits.double(), -1)
    for b in range(2):
        for i in range(5):
            ref = _slow(name, p[b, i].tolist(), q[b, i].tolist())
            assert fast[b, i].item() == pytest.approx(ref, rel=1e-4, abs=1e-6), (b, i)
    assert (fast >= -1e-6).all()


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_reference_at_several_betas(beta):
    s_logits, t_logits = _logits(3), _logits(4)
    s, t = bins(s_logits, t_logits)
    q = torch.softmax(s_logits.double(), -1)[0, 0].tolist()
    p = torch.softmax(t_logits.double(), -1)[0, 0].tolist()
    assert get("jsd").fn(s, t, beta=beta)[0, 0].item() == pytest.approx(_slow("jsd", p, q, beta=beta), rel=1e-4)


def test_jsd_limits_are_the_kls():
    s, t = bins(_logits(5), _logits(6))
    fwd, rev = get("forward_kl").fn(s, t), get("reverse_kl").fn(s, t)
    jsd = get("jsd").fn
    assert torch.equal(jsd(s, t, beta=0.0), fwd) and torch.equal(jsd(s, t, beta=1.0), rev)
    # ...and the family is continuous there (checked on milder logits, where 1e-6 is already "near").
    s = torch.log_softmax(_logits(5, scale=1.0).double(), -1)
    t = torch.log_softmax(_logits(6, scale=1.0).double(), -1)
    fwd, rev = get("forward_kl").fn(s, t), get("reverse_kl").fn(s, t)
    assert torch.allclose(jsd(s, t, beta=1e-6), fwd, rtol=1e-3, atol=1e-6)
    assert torch.allclose(jsd(s, t, beta=1 - 1e-6), rev, rtol=1e-3, atol=1e-6)


def test_skew_at_zero_is_plain_kl():
    s, t = bins(_logits(7), _logits(8))
    assert torch.allclose(get("skew_kl").fn(s, t, alpha=0.0), get("forward_kl").fn(s, t))
    assert torch.allclose(get("skew_reverse_kl").fn(s, t, alpha=0.0), get("reverse_kl").fn(s, t))


def test_padding_is_ignored():
    cfg = LossSettings(loss="jsd", beta=0.3, loss_temperature=2.0, kd_weight=0.7)
    s, t = _logits(9), _logits(10)
    targets = torch.randint(0, 11, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    base = masked_mean(per_token_objective(cfg, s, t, targets), mask)
    s2, t2, tg2 = s.clone(), t.clone(), targets.clone()
    s2[mask == 0] = 1e4 * torch.randn_like(s2[mask == 0])  # garbage where the mask is 0
    t2[mask == 0] = -3.0
    tg2[mask == 0] = -100
    assert torch.allclose(masked_mean(per_token_objective(cfg, s2, t2, tg2), mask), base)


def test_empty_mask_is_zero_with_a_graph():
    s = _logits(11).requires_grad_()
    loss = masked_mean(per_token_objective(LossSettings(kd_weight=1.0), s, _logits(12), None), torch.zeros(2, 5))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_normalised_over_the_whole_accumulation_step():
    """Two micro-batches with different token counts: summing each with the step's token count equals the
    loss of the full batch; averaging per-micro-batch means (the known bug) does not."""
    cfg = LossSettings(loss="forward_kl", kd_weight=1.0)
    s, t = _logits(13, (4, 6, 11)), _logits(14, (4, 6, 11))
    mask = torch.tensor([[1] * 6, [1] * 6, [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    full = masked_mean(per_token_objective(cfg, s, t, None), mask)
    n = mask.sum()
    parts = [masked_sum(per_token_objective(cfg, s[i:i + 2], t[i:i + 2], None), mask[i:i + 2]) / n for i in (0, 2)]
    assert torch.allclose(sum(parts), full)
    buggy = sum(masked_mean(per_token_objective(cfg, s[i:i + 2], t[i:i + 2], None), mask[i:i + 2]) for i in (0, 2)) / 2
    assert not torch.allclose(buggy, full)


def test_topk_bins_are_exact_when_k_covers_the_vocab():
    s, t = _logits(15), _logits(16)
    t_logp = torch.log_softmax(t, -1)
    top = t_logp.topk(11, -1)
    for name in NAMES:
        dense = get(name).fn(*bins(s, t))
        sparse = get(name).fn(*bins(s, (top.values, top.indices)))
        assert torch.allclose(dense, sparse, atol=1e-4), name


def test_topk_bins_sum_to_one_and_stay_finite():
    s, t = _logits(17, (2, 5, 50)), _logits(18, (2, 5, 50))
    top = torch.log_softmax(t, -1).topk(8, -1)
    sb, tb = bins(s, (top.values, top.indices))
    assert sb.shape == tb.shape == (2, 5, 9)
    assert torch.allclose(sb.exp().sum(-1), torch.ones(2, 5), atol=1e-5)
    assert torch.allclose(tb.exp().sum(-1), torch.ones(2, 5), atol=1e-5)
    for name in NAMES:
        assert torch.isfinite(get(name).fn(sb, tb)).all(), name


def test_cross_entropy_only():
    s = _logits(19)
    targets = torch.randint(0, 11, (2, 5))
    got = per_token_objective(LossSettings(kd_weight=0.0), s, None, targets)
    ref = torch.nn.functional.cross_entropy(s.reshape(-1, 11), targets.reshape(-1), reduction="none").reshape(2, 5)
    assert torch.allclose(got, ref, atol=1e-6)


def test_config_is_validated_all_at_once():
    with pytest.raises(EdgeDistillError, match=r"kd_weight=2.0 must be at most 1.*loss_temperature=0.0 must be at least 0.05.*beta=3"):
        LossSettings(loss="jsd", beta=3, loss_temperature=0, kd_weight=2)
    with pytest.raises(EdgeDistillError, match="has no parameter 'beta'"):
        LossSettings(loss="forward_kl", beta=0.5, kd_weight=1.0)
    with pytest.raises(EdgeDistillError, match="loss='l2' is not one of forward_kl"):
        LossSettings(loss="l2", kd_weight=1.0)


def test_bf16_inputs_are_computed_in_float32():
    s, t = _logits(20).bfloat16(), _logits(21).bfloat16()
    out = per_token_objective(LossSettings(loss="reverse_kl", kd_weight=1.0), s, t, None)
    assert out.dtype == torch.float32
    ref = per_token_objective(LossSettings(loss="reverse_kl", kd_weight=1.0), s.float(), t.float(), None)
    assert torch.allclose(out, ref)
    assert np.isfinite(out.numpy()).all()
