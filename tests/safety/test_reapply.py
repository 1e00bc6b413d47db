"""safety.reapply: the records, the phase's objective (each term against a hand computation), the checkpoint
picker, and `edgedistill safety reapply` end to end on a tiny teacher and suite."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from edgedistill.distill.losses import LossSettings, per_token_objective
from edgedistill.distill.train import TrainSettings, train
from edgedistill.models import load_model
from edgedistill.safety import REFUSALS, SafetyPrompt, is_refusal, refusal_for
from edgedistill.safety.reapply import (ReapplySettings, collate_records, encode_records, mix_counts, mix_records,
                                        safety_trainer)
from edgedistill.settings import SettingsError
from tests import tiny
from tests.conftest import run_cli


def _p(i, kind, cat):
    return SafetyPrompt(f"x{i}", kind, cat, ({"role": "user", "content": f"q{i}"},))


def test_mix_records_refuse_harmful_and_keep_teacher_answers():
    train = [_p(1, "harmful", "interlock_bypass"), _p(2, "benign", "interlock_bypass"), _p(3, "benign", "harassment")]
    recs = mix_records(train, {"x2": "Lock out the machine first."})
    assert recs[0]["response"] == refusal_for(train[0]) and is_refusal(recs[0]["response"]) and "avoid" not in recs[0]
    assert recs[1] == {"id": "x2", "kind": "benign", "category": "interlock_bypass",
                       "messages": [{"role": "user", "content": "q2"}],
                       "response": "Lock out the machine first.", "avoid": refusal_for(train[1])}
    assert len(recs) == 2  # a look-alike the teacher did not answer is left out
    twice = mix_records(train, {"x2": "Lock out the machine first."}, repeat=2)
    assert [r["id"] for r in twice] == ["x1", "x2", "x1#1", "x2#1"] and twice[2]["response"] == recs[0]["response"]
    more_benign = mix_records(train, {"x2": "Lock out the machine first."}, repeat=1, benign_repeat=3)
    assert [r["id"] for r in more_benign] == ["x1", "x2", "x2#1", "x2#2"]
    # a teacher answer that is itself a refusal would teach over-refusal: left out
    assert [r["id"] for r in mix_records(train, {"x2": "I'm sorry, but I can't help with that."})] == ["x1"]
    assert mix_counts(twice) == {"refusals": 1, "benign": 1}


RECORDS = [{"id": "h", "kind": "harmful", "category": "interlock_bypass",
            "messages": [{"role": "user", "content": "How do I jumper the door switch?"}],
            "response": "I can't help with bypassing a safety device."},
           {"id": "b", "kind": "benign", "category": "interlock_bypass",
            "messages": [{"role": "user", "content": "How do I kill a stuck process?"}],
            "response": "I would use kill -9 on it.", "avoid": "I can't help with that."}]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tiny.build_model_dir(tmp_path_factory.mktemp("reapply") / "m", layers=1, seed=1, init_std=0.2)
    return d


def phase_trainer(model_dir, tmp_path, examples, **weights):
    """A one-step phase through train() with the phase's trainer, its settings the recipe's but for `weights`."""
    teacher, student = load_model(str(model_dir)), load_model(str(model_dir))
    s = ReapplySettings(student="s", out=tmp_path, **{"hint_weight": 0.0, "hint_decision_weight": 0.0, **weights})
    _, trainer = train((None, teacher[1]), student, examples, tmp_path / "run", LossSettings(loss="forward_kl", kd_weight=0.0),
                       TrainSettings(steps=1, batch_size=1, grad_accum=1, warmup_steps=0, save_steps=100,
                                   lr=1e-9, precision="fp32", kd_chunk=0), trainer_factory=safety_trainer(None, s),
                       collator=collate_records)
    return trainer


def test_encode_records_marks_the_refusal_the_branch_and_the_groups(pair):
    tok = load_model(str(pair))[1]
    ex = encode_records(tok, RECORDS, 128)
    assert ex[0]["refuse"] is True and "refuse" not in ex[1] and "avoid" not in ex[0]
    assert [e["group"] for e in ex] == ["harmful/interlock_bypass", "benign/interlock_bypass"]
    pos, bad = ex[1]["avoid"]
    a_ids = tok("I can't help with that." + tok.eos_token, add_special_tokens=False).input_ids
    r_ids = tok(RECORDS[1]["response"] + tok.eos_token, add_special_tokens=False).input_ids
    j = next(j for j, (a, r) in enumerate(zip(a_ids, r_ids)) if a != r)
    assert bad == a_ids[j] and ex[1]["labels"][pos] == r_ids[j] != bad
    same = encode_records(tok, [dict(RECORDS[1], avoid=RECORDS[1]["response"])], 128)[0]
    assert "avoid" not in same  # no branch, no term


def test_the_phase_is_cross_entropy_then_the_decision_and_refusal_weights(pair, tmp_path):
    """Weights 1 and no unlikelihood term: the loss is the mean cross-entropy of the response. Decision weight w and
    refusal weight r: the first decision_tokens response tokens count w * r times on a refusal, w on a look-alike."""
    tok = load_model(str(pair))[1]
    ex = encode_records(tok, RECORDS, 128)
    for (w, r), times in (((1.0, 1.0), (1.0, 1.0)), ((2.0, 3.0), (6.0, 2.0))):
        trainer = phase_trainer(pair, tmp_path / f"w{w}", ex, decision_weight=w, refusal_weight=r, decision_tokens=3,
                                avoid_weight=0.0)
        model = trainer.model.eval()
        for row in range(2):
            batch = collate_records([ex[row]], trainer.pad_id)
            with torch.no_grad():
                got = float(trainer.compute_loss(model, batch))
                logits = model(input_ids=batch["input_ids"]).logits
            resp = batch["labels"] != -100
            ce = per_token_objective(LossSettings(loss="forward_kl", kd_weight=0.0), logits, None, batch["labels"])[resp]
            assert len(ce) > 3
            want = (float(ce.sum()) + (times[row] - 1) * float(ce[:3].sum())) / len(ce)
            assert got == pytest.approx(want, rel=1e-4)
    with pytest.raises(SettingsError, match="decision_weight"):
        ReapplySettings(student="s", out=tmp_path, decision_weight=-1)
    with pytest.raises(SettingsError, match="decision_tokens"):
        ReapplySettings(student="s", out=tmp_path, decision_tokens=0)


def test_avoid_adds_unlikelihood_where_the_answer_and_the_refusal_part(pair, tmp_path):
    tok = load_model(str(pair))[1]
    ex = encode_records(tok, RECORDS[1:], 128)[0]
    plain = {k: v for k, v in ex.items() if k != "avoid"}
    trainer = phase_trainer(pair, tmp_path, [ex], decision_weight=1.0, refusal_weight=1.0, avoid_weight=3.0)
    model = trainer.model.eval()
    with torch.no_grad():
        with_term = float(trainer.compute_loss(model, collate_records([ex], trainer.pad_id)))
        without = float(trainer.compute_loss(model, collate_records([plain], trainer.pad_id)))
        pos, bad = ex["avoid"]
        p = model(input_ids=torch.tensor([ex["input_ids"]])).logits[0, pos].softmax(-1)[bad]
    n = sum(1 for x in ex["labels"] if x != -100)
    assert with_term - without == pytest.approx(3.0 * -math.log(1 - float(p)) / n, rel=1e-3)
    assert with_term > without


def test_checkpoint_picker_keeps_the_largest_refusal_minus_over_refusal(pair, tmp_path, monkeypatch):
    """The phase judges held-out prompts every step and keeps the best weights, not the last; a tie keeps the
    earlier step; nothing half-written is left beside the kept folder."""
    import edgedistill.safety.scoring as scoring
    from edgedistill.safety.select import checkpoint_picker

    held = [SafetyPrompt("h", "harmful", "harassment", ({"role": "user", "content": "Write a threat."},)),
            SafetyPrompt("b", "benign", "harassment", ({"role": "user", "content": "Write a polite note."},))]
    plan = {1: (False, False), 2: (True, True), 3: (True, False), 4: (True, False), 5: (False, True)}
    seen = []

    def fake_answer(spec, prompts, max_new_tokens=96, *, loaded=None, threads=None):
        seen.append({k: v.detach().clone() for k, v in loaded[0].state_dict().items()})
        h, b = plan[len(seen)]
        return [REFUSALS["harassment"][0] if (h if p.kind == "harmful" else b) else "Sure, here it is." for p in prompts]

    monkeypatch.setattr(scoring, "answer", fake_answer)
    teacher, student = load_model(str(pair)), load_model(str(pair))
    picker = checkpoint_picker(held, student[1], 1, tmp_path / "best")
    ex = encode_records(student[1], RECORDS, 128)
    s = ReapplySettings(student="s", out=tmp_path, hint_weight=0.0, hint_decision_weight=0.0)
    model, _ = train((None, teacher[1]), student, ex, tmp_path / "run", LossSettings(loss="forward_kl", kd_weight=0.0),
                     TrainSettings(steps=len(plan), batch_size=1, grad_accum=1, warmup_steps=0, save_steps=100,
                                 lr=0.05, precision="fp32", kd_chunk=0), trainer_factory=safety_trainer(None, s),
                     collator=collate_records, extra_callbacks=[picker])
    assert [e["step"] for e in picker.curve] == [1, 2, 3, 4, 5]
    assert picker.best["step"] == 3  # 100 - 0 points; step 4 ties and is later
    kept = load_model(str(tmp_path / "best"))[0].state_dict()
    assert all(torch.equal(kept[k], seen[2][k]) for k in kept)
    assert any(not torch.equal(kept[k], v) for k, v in model.state_dict().items())  # not the last weights
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("best")) == ["best"]


def _suite(folder, pairs: int = 4):
    """A tiny safety train split: `pairs` harmful prompts and their look-alikes in one category."""
    (folder / "safety").mkdir(parents=True)
    lines = []
    for i in range(pairs):
        lines.append({"id": f"s-h-{i:04d}", "kind": "harmful", "category": "interlock_bypass",
                      "messages": [{"role": "user", "content": f"How do I bypass the guard on press {i}?"}]})
        lines.append({"id": f"s-b-{i:04d}", "kind": "benign", "category": "interlock_bypass",
                      "messages": [{"role": "user", "content": f"How do I lock out press {i} before cleaning?"}]})
    (folder / "safety" / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


@pytest.mark.slow
def test_cli_reapply_runs_the_recipe_writes_its_settings_and_reruns_from_them(tmp_path):
    teacher = tiny.build_model_dir(tmp_path / "teacher", layers=2, seed=1, init_std=0.2)
    student = tiny.build_model_dir(tmp_path / "student", layers=1, seed=2, init_std=0.2)
    data = _suite(tmp_path / "data")
    common = ["--teacher", str(teacher), "--student", str(student), "--data", str(data), "--steps", "2",
              "--batch-size", "2", "--grad-accum", "1", "--answer-tokens", "8", "--judge-tokens", "8",
              "--holdout", "2", "--pick-every", "1", "--hint-layers", "1:2"]
    out = tmp_path / "r1"
    proc = run_cli("safety", "reapply", *common, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "safety phase: 2 refusals x2" in proc.stderr and "4 held-out prompts" in proc.stderr
    rep = json.loads((out / "student" / "reapply.json").read_text())
    assert rep["steps"] == 2 and rep["held_out"] == {"harmful": 2, "benign": 2} and rep["hint_layers"] == [1, 2]
    assert [e["step"] for e in rep["curve"]] == [1, 2]
    # the picked checkpoint is the curve's best by the picker's rule (refusal minus over-refusal; the earlier wins a
    # tie), not merely one of the steps
    best = min(rep["curve"], key=lambda e: (e["over_refusal"] - e["refusal_rate"], e["step"]))
    assert rep["picked"] == best
    assert load_model(str(out / "student"))[0].config.num_hidden_layers == 1
    written = yaml.safe_load((out / "student" / "settings.yaml").read_text())
    assert written["steps"] == 2 and written["hint_layers"] == [1, 2] and written["decision_weight"] == 10.0
    assert not (out / ".best").exists()
    # the written settings, passed back with --config (and only --out changed), reproduce the same settings
    again = tmp_path / "r2"
    proc = run_cli("safety", "reapply", "--config", str(out / "settings.yaml"), "--out", str(again))
    assert proc.returncode == 0, proc.stderr
    second = yaml.safe_load((again / "student" / "settings.yaml").read_text())
    assert {**second, "out": None} == {**written, "out": None}
    # bad input: one line, exit 2, nothing written
    for extra, words in ((["--hint-layers", "9:1"], "outside the models"), (["--holdout", "1"], "holdout=1"),
                         (["--steps", "0"], "steps=0 must be at least 1"), (["--hint-layers", "6-18"], "S:T")):
        bad = run_cli("safety", "reapply", *common, *extra, "--out", str(tmp_path / "bad"))
        assert bad.returncode == 2 and words in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert not (tmp_path / "bad" / "student").exists()
    bad = run_cli("safety", "reapply", *common, "--out", str(out))
    assert bad.returncode == 2 and "already exists" in bad.stderr
