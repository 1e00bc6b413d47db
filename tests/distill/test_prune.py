import json

import pytest
import torch

from edgedistill.distill.pruning import (
    StudentShape,
    apply_plan,
    calibration_batches,
    check_shape,
    derive_student,
    hardware_friendly,
    measure_importance,
    plan,
)
from edgedistill.errors import EdgeDistillError
from tests import tiny

TEXTS = ["Machine M-204 raised alarm E17 and the spindle stopped. " * 20, "Where is my order NW-123456? " * 30]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """4 blocks, 6 query heads in 3 key/value groups, so every kind of pruning has room."""
    from edgedistill.models import load_model

    d = tiny.build_model_dir(tmp_path_factory.mktemp("t") / "m", layers=4, hidden=96, heads=6, kv_heads=3,
                             intermediate=128, seed=1)
    return load_model(str(d))


def _batches(tok):
    return calibration_batches(tok, TEXTS, seq_len=32, max_tokens=512, batch_size=4)


def _logits(model, ids):
    with torch.inference_mode():
        return model(ids).logits


def test_identity_plan_reproduces_the_teacher(teacher):
    model, tok = teacher
    b = _batches(tok)
    student = apply_plan(model, plan(model, measure_importance(model, b), StudentShape()))
    assert torch.allclose(_logits(student, b[0]), _logits(model, b[0]), atol=1e-5)


def test_a_block_that_does_nothing_is_dropped_first(teacher):
    model, tok = teacher
    model = type(model)(model.config).eval()
    model.load_state_dict(teacher[0].state_dict())
    blk = model.model.layers[2]
    blk.self_attn.o_proj.weight.data.zero_()
    blk.mlp.down_proj.weight.data.zero_()  # block 2 now returns its input unchanged
    b = _batches(tok)
    imp = measure_importance(model, b)
    assert imp.layers[2] == pytest.approx(0.0, abs=1e-6) and min(imp.layers[:2] + imp.layers[3:]) > 1e-3
    p = plan(model, imp, StudentShape(layers=3))
    assert p.keep_layers == [0, 1, 3]
    assert torch.allclose(_logits(apply_plan(model, p), b[0]), _logits(model, b[0]), atol=1e-5)


def test_dead_neurons_and_a_silent_group_are_pruned_without_changing_outputs(teacher):
    model, tok = teacher
    model = type(model)(model.config).eval()
    model.load_state_dict(teacher[0].state_dict())
    dead = list(range(0, 128, 4))  # 32 neurons
    for blk in model.model.layers:
        blk.mlp.up_proj.weight.data[dead] = 0  # activation entering down_proj is 0 for these
        blk.self_attn.o_proj.weight.data[:, 2 * 2 * 16 : 3 * 2 * 16] = 0  # key/value group 2 (heads 4, 5) is mute
    b = _batches(tok)
    p = plan(model, measure_importance(model, b), StudentShape(ffn=96, heads=4, kv_heads=2))
    assert all(set(n).isdisjoint(dead) for n in p.keep_neurons)
    assert all(kv == [0, 1] and h == [0, 1, 2, 3] for kv, h in zip(p.keep_kv, p.keep_heads))
    student = apply_plan(model, p)
    assert student.config.intermediate_size == 96 and student.config.num_key_value_heads == 2
    assert torch.allclose(_logits(student, b[0]), _logits(model, b[0]), atol=1e-5)


def test_hidden_pruning_shapes_and_output(teacher):
    model, tok = teacher
    b = _batches(tok)
    p = plan(model, measure_importance(model, b), StudentShape(layers=2, hidden=64, ffn=64, heads=3, kv_heads=3))
    student = apply_plan(model, p)
    c = student.config
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads, c.head_dim) == (2, 64, 64, 3, 16)
    assert student.model.embed_tokens.weight.data_ptr() == student.lm_head.weight.data_ptr()  # still tied
    assert torch.isfinite(_logits(student, b[0])).all()
    assert student.num_parameters() < model.num_parameters()


def test_shape_checks(teacher):
    model, _ = teacher
    with pytest.raises(EdgeDistillError, match=r"layers=9 must be between 1 and the teacher's 4.*hidden=200"):
        check_shape(model, StudentShape(layers=9, hidden=200))
    with pytest.raises(EdgeDistillError, match="query heads per key/value head"):
        check_shape(model, StudentShape(heads=5, kv_heads=2))


def test_hardware_friendly_shape_for_the_real_teacher_sizes():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=576, intermediate_size=1536, num_hidden_layers=1,
                      num_attention_heads=9, num_key_value_heads=3)
    s = hardware_friendly(LlamaForCausalLM(cfg), layers=10)
    assert (s.layers, s.hidden, s.ffn, s.heads, s.kv_heads) == (10, 512, 1536, 4, 2)
    assert s.heads * 64 % 256 == 0


def test_derive_student_writes_a_loadable_directory(teacher, tmp_path):
    from edgedistill.models import load_model

    out = derive_student("tiny", StudentShape(layers=2, ffn=64), TEXTS, tmp_path / "student", seq_len=32,
                         max_tokens=256, loaded=teacher)
    rec = json.loads((out / "pruning.json").read_text())
    assert len(rec["kept_layers"]) == 2 and rec["student_parameters"] < rec["teacher_parameters"]
    model, tok = load_model(str(out))
    assert model.config.num_hidden_layers == 2 and tok.chat_template
    with pytest.raises(EdgeDistillError, match="already exists"):
        derive_student("tiny", StudentShape(layers=2), TEXTS, out, loaded=teacher)


def test_interleave_texts_round_robin():
    from edgedistill.distill.pruning import interleave_texts

    assert interleave_texts(["aaaa", "bb", "c"], chunk=2) == ["aa", "bb", "c", "aa"]
    assert interleave_texts([]) == []
