"""The chunked objective (losses.chunked) equals the full-logits one, value and gradients, in float64; its head
reproduces each family's logits; training with it gives the losses of training without it."""

import json

import pytest
import torch

from edgedistill.distill.dataset import encode
from edgedistill.distill.losses import LossSettings, chunked, losses, per_token_objective
from edgedistill.distill.train import TrainSettings, kd_objective, train
from edgedistill.errors import EdgeDistillError
from edgedistill.models import load_model
from edgedistill.tensors import collate
from tests import tiny

RECORDS = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"Order NW-{i}{i}{i}: where is it?"}],
            "response": f"Order NW-{i}{i}{i} left the depot on day {i}; it arrives in {i + 2} days."} for i in range(6)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("chunked")
    t = load_model(str(tiny.build_model_dir(root / "t", layers=2, hidden=64, seed=1, init_std=0.2)))
    s = load_model(str(tiny.build_model_dir(root / "s", layers=1, hidden=64, seed=2, init_std=0.2)))
    data = encode(t[1], RECORDS, 64)
    return root, t, s, data


def _both(student, teacher, batch, cfg, form, chunk):
    """[(total, grads)] of one batch through kd_objective, with full logits and then in chunks."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    topk = None
    if form == "topk":
        with torch.no_grad():
            topk = torch.log_softmax(teacher(input_ids=ids, attention_mask=mask).logits, -1).topk(7, -1)
        topk, teacher = (topk.values, topk.indices), None
    results = []
    for c in (0, chunk):
        student.zero_grad()
        total, _ = kd_objective(student, ids, mask, labels, cfg, teacher=teacher if form == "live" else None,
                                topk=topk, chunk=c)
        total.backward()
        results.append((total.detach(), {n: p.grad.clone() for n, p in student.named_parameters()}))
    return results


@pytest.mark.parametrize("name", sorted(losses()))
@pytest.mark.parametrize("form", ["live", "topk"])
def test_chunked_equals_full_in_float64(pair, name, form):
    _, t, s, data = pair
    teacher, student = t[0].double().eval(), s[0].double().train()
    batch = collate(data.examples[:4], t[1].pad_token_id)
    for kd_weight in (1.0, 0.5):
        cfg = LossSettings(loss=name, kd_weight=kd_weight, loss_temperature=1.5 if kd_weight < 1 else 1.0)
        (a, ga), (b, gb) = _both(student, teacher, batch, cfg, form, chunk=5)
        assert float(b) == pytest.approx(float(a), rel=1e-6)
        for n in ga:
            assert torch.allclose(ga[n], gb[n], rtol=1e-6, atol=1e-9), (name, form, n)
    teacher.float(), student.float()


def test_chunked_cross_entropy_alone_and_an_empty_mask(pair):
    _, t, s, data = pair
    student = s[0].double()
    batch = collate(data.examples[:3], t[1].pad_token_id)
    (a, ga), (b, gb) = _both(student, None, batch, LossSettings(kd_weight=0.0), None, chunk=64)
    assert float(b) == pytest.approx(float(a), rel=1e-6)
    head, cap = chunked.head_of(student)
    hidden, _ = chunked.final_hidden(student, head, input_ids=batch["input_ids"])
    none = torch.zeros_like(batch["labels"], dtype=torch.bool)
    zero = chunked.chunked_objective(LossSettings(kd_weight=0.0), per_token_objective, head, cap, hidden, None,
                                     batch["labels"], none, 8)
    assert float(zero.detach()) == 0.0 and zero.requires_grad
    student.float()


def test_the_head_gives_every_familys_logits(tmp_path):
    """final_hidden + the head (and Gemma's soft-cap) reproduce the model's own logits for each family."""
    from tests.families import TINY

    for name, fam in TINY.items():
        model, tok = load_model(str(fam.build(tmp_path / name)))
        cfg = model.config.get_text_config()
        if name == "gemma2":
            assert getattr(cfg, "final_logit_softcapping", None), "the gemma2 case must exercise the soft-cap"
        ids = torch.tensor([tok("Where is my order NW-1234? It left on Monday.")["input_ids"]])
        with torch.no_grad():
            want = model(input_ids=ids).logits
            head, cap = chunked.head_of(model)
            hidden, out = chunked.final_hidden(model, head, input_ids=ids)
            got = chunked.logits_from_hidden(head, cap, hidden)
        assert out.logits.shape[1] == 1, name
        assert torch.allclose(got, want, atol=1e-5), name


def test_training_with_chunks_matches_training_without(pair):
    root, t, s, data = pair
    cfg = dict(steps=3, batch_size=3, grad_accum=2, lr=3e-3, warmup_steps=0, logging_steps=1,
               save_steps=100, max_length=64)
    logs = []
    for chunk in (0, 7):
        out = root / f"run-{chunk}"
        train((t[0].float(), t[1]), load_model(str(root / "s")), data.examples, out, LossSettings(kd_weight=0.5),
              TrainSettings(**cfg, kd_chunk=chunk, precision="fp32"))
        logs.append([json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x])
    assert len(logs[0]) == 3
    for a, b in zip(*logs):
        assert a == pytest.approx(b, rel=1e-4)


def test_a_chunk_longer_than_the_sequence_is_refused():
    with pytest.raises(EdgeDistillError, match=r"--kd-chunk 5000 exceeds a micro-batch.s 4 x 512 positions"):
        TrainSettings(kd_chunk=5000, precision="fp32")
