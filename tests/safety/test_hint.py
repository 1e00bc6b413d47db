"""safety.hint: the hidden-state hint of the safety phase (student features pulled towards the teacher's)."""

from __future__ import annotations

import pytest
import torch

from edgedistill.distill.dataset import encode
from edgedistill.tensors import IGNORE, collate
from edgedistill.safety.hint import (decision_basis, default_layers, fit_hint_map, hidden_after, last_prompt_index,
                                    prompt_mask)
from edgedistill.safety.reapply import ReapplySettings, collate_records, encode_records, safety_trainer
from edgedistill.distill.settings import LossSettings
from edgedistill.distill.train import TrainSettings, train
from edgedistill.errors import EdgeDistillError
from edgedistill.models import load_model
from tests import tiny

RECORDS = [{"id": f"s{i}", "messages": [{"role": "user", "content": f"Can I bypass the guard on press {i}{i}?"}],
            "response": "I can't help with bypassing a safety device."} for i in range(16)]

# two kinds of prompt, as reapply.mix_records writes them (encode_records keeps kind and category as the group)
KINDS = [{"id": f"k{i}", "kind": "harmful" if i % 2 else "benign", "category": "interlock_bypass",
          "messages": [{"role": "user", "content": (f"Can I bypass the guard on press {i}?" if i % 2
                                                    else f"How do I lock out press {i} before cleaning?")}],
          "response": "I can't help with bypassing a safety device." if i % 2 else "Isolate, lock, tag, test."}
         for i in range(24)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hint")
    t_dir = tiny.build_model_dir(root / "teacher", layers=4, hidden=64, seed=1, init_std=0.2)
    s_dir = tiny.build_model_dir(root / "student", layers=2, hidden=32, heads=2, kv_heads=1, intermediate=64, seed=2,
                                 init_std=0.2)
    return t_dir, s_dir


def hint_error(hint, teacher, student, examples, pad):
    """Mean squared error per prompt token over the examples, as the training term measures it."""
    b = collate(examples, pad)
    where = prompt_mask(b["labels"], b["attention_mask"])
    s = hidden_after(student, hint.student_layer, b["input_ids"], b["attention_mask"])
    t = hidden_after(teacher, hint.teacher_layer, b["input_ids"], b["attention_mask"])
    return float(hint.loss(s, t, where)) / int(where.sum())


def test_prompt_mask_covers_the_prompt_through_its_last_token_and_nothing_else():
    labels = torch.tensor([[IGNORE, IGNORE, 7, 8, IGNORE, IGNORE], [IGNORE, IGNORE, IGNORE, IGNORE, 5, IGNORE]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    # row 0: label 7 sits at position 2 (the last prompt token predicts the first response token)
    assert prompt_mask(labels, mask).tolist() == [[True, True, True, False, False, False],
                                                  [True, True, True, True, True, False]]


def test_hidden_after_equals_the_full_pass_without_running_the_blocks_above(models):
    model, tok = load_model(str(models[0]))
    b = collate(encode(tok, RECORDS[:3], 200).examples, tok.pad_token_id)
    full = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True).hidden_states
    for block in (1, 3):
        assert torch.allclose(hidden_after(model, block, b["input_ids"], b["attention_mask"]), full[block], atol=1e-5)
    calls = []
    handle = model.model.layers[3].register_forward_hook(lambda *a: calls.append(1))
    hidden_after(model, 2, b["input_ids"], b["attention_mask"])
    handle.remove()
    assert calls == []


def test_the_map_of_a_model_onto_itself_leaves_no_error_and_a_different_student_does(models):
    teacher, tok = load_model(str(models[0]))
    student, _ = load_model(str(models[1]))
    ex = encode(tok, RECORDS, 200).examples
    itself = fit_hint_map(teacher, teacher, ex, tok.pad_token_id, (2, 2))
    assert hint_error(itself, teacher, teacher, ex, tok.pad_token_id) < 0.01
    other = fit_hint_map(teacher, student, ex, tok.pad_token_id, (1, 2))
    assert hint_error(other, teacher, student, ex, tok.pad_token_id) > 0.05
    assert default_layers(10, 30) == (6, 18)
    with pytest.raises(EdgeDistillError, match="outside the models"):
        fit_hint_map(teacher, student, ex, tok.pad_token_id, (3, 2))


def without_and_with(models, tmp_path, examples, measure, field, decision=False):
    """{weight: (measure before training, after)} for students trained 30 phase steps with the term `field` of
    ReapplySettings at 0 and at 20 (the other hint off), measured through the map fitted on the untrained student."""
    teacher, tok = load_model(str(models[0]))
    pad = tok.pad_token_id
    errors = {}
    for weight in (0.0, 20.0):
        student = load_model(str(models[1]))
        start = fit_hint_map(teacher, student[0], examples, pad, (1, 3), decision=decision)
        before = measure(start, teacher, student[0], examples, pad)  # train() updates the student in place
        s = ReapplySettings(student="s", out=tmp_path, avoid_weight=0.0, decision_weight=1.0, refusal_weight=1.0,
                            **{"hint_weight": 0.0, "hint_decision_weight": 0.0, field: weight})
        hint = fit_hint_map(teacher, student[0], examples, pad, (1, 3), decision=decision) if weight else None
        model, trainer = train((teacher, tok), student, examples, tmp_path / f"run{weight}",
                               LossSettings(loss="forward_kl", kd_weight=0.0),
                               TrainSettings(steps=30, batch_size=8, grad_accum=1, lr=3e-3, warmup_steps=0,
                                           save_steps=100, precision="fp32", kd_chunk=0), trainer_factory=safety_trainer(hint, s),
                               collator=collate_records)
        assert (trainer.hint is not None) == (weight > 0)
        errors[weight] = (before, measure(start, teacher, model, examples, pad))
    return errors


def test_training_with_the_hint_moves_the_student_features_towards_the_teacher(models, tmp_path):
    tok = load_model(str(models[0]))[1]
    errors = without_and_with(models, tmp_path, encode(tok, RECORDS, 200).examples, hint_error, "hint_weight")
    (before, plain), (_, hinted) = errors[0.0], errors[20.0]
    assert hinted < 0.7 * before and hinted < plain, errors


def test_the_hint_weights_are_checked(tmp_path):
    for field in ("hint_weight", "hint_decision_weight"):
        with pytest.raises(EdgeDistillError, match=field):
            ReapplySettings(student="s", out=tmp_path, **{field: -1})
    with pytest.raises(EdgeDistillError, match="block numbers start at 1"):
        ReapplySettings(student="s", out=tmp_path, hint_layers=(0, 3))


def decision_error(hint, teacher, student, examples, pad):
    """Mean squared error along the decision basis at the last prompt token, per record."""
    b = collate(examples, pad)
    last = last_prompt_index(b["labels"], b["attention_mask"])
    s = hidden_after(student, hint.student_layer, b["input_ids"], b["attention_mask"])
    t = hidden_after(teacher, hint.teacher_layer, b["input_ids"], b["attention_mask"])
    return float(hint.decision_loss(s, t, torch.ones(len(last), dtype=torch.bool), last)) / len(last)


def test_decision_basis_finds_the_direction_that_separates_the_groups_with_unit_spread_within_them():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 12, generator=g)
    x[200:, 5] += 3.0  # the groups differ along channel 5 alone
    basis = decision_basis(x, ["a"] * 200 + ["b"] * 200)
    assert basis.shape == (12, 1)  # two groups: one direction
    assert int(basis[:, 0].abs().argmax()) == 5
    proj = x @ basis[:, 0]
    spread = torch.cat([proj[:200] - proj[:200].mean(), proj[200:] - proj[200:].mean()]).pow(2).mean()
    assert 0.5 < float(spread) < 1.5  # shrinkage keeps it near, not at, 1
    assert abs(float(proj[200:].mean() - proj[:200].mean())) > 2
    with pytest.raises(EdgeDistillError, match="two kinds"):
        decision_basis(x, ["a"] * 400)


def test_last_prompt_index_is_the_last_token_of_the_prompt_mask():
    labels = torch.tensor([[IGNORE, IGNORE, 7, 8, IGNORE, IGNORE], [IGNORE, IGNORE, IGNORE, IGNORE, 5, IGNORE]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    assert last_prompt_index(labels, mask).tolist() == [2, 4]


def test_training_with_the_decision_hint_moves_the_student_along_the_teachers_decision_directions(models, tmp_path):
    teacher, tok = load_model(str(models[0]))
    pad = tok.pad_token_id
    ex = encode_records(tok, KINDS, 200)
    assert {e["group"] for e in ex} == {"harmful/interlock_bypass", "benign/interlock_bypass"}
    assert fit_hint_map(teacher, teacher, ex, pad, (1, 3), decision=True).basis.shape == (64, 1)  # two groups
    errors = without_and_with(models, tmp_path, ex, decision_error, "hint_decision_weight", decision=True)
    (before, plain), (_, hinted) = errors[0.0], errors[20.0]
    assert hinted < 0.5 * before and hinted < plain, errors
    with pytest.raises(EdgeDistillError, match="kind"):  # records without a kind have no groups to separate
        fit_hint_map(teacher, teacher, encode(tok, RECORDS, 200).examples, pad, (1, 3), decision=True)
