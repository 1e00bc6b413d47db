import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from edgedistill.distill.dataset import encode
from edgedistill.tensors import IGNORE, collate
from edgedistill.models.generate import chat_ids
from edgedistill.distill.settings import LossSettings
from edgedistill.distill.pruning import StudentShape, derive_student
from edgedistill.distill.train import TrainSettings, agreement_with_teacher, check_compatible, train
from edgedistill.errors import EdgeDistillError
from edgedistill.models import load_model
from tests import tiny
from tests.conftest import REPO

RECORDS = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"Where is order NW-{i}{i}{i}? It is late."}],
            "response": f"Order NW-{i}{i}{i} ships on Monday; tracking follows by email."} for i in range(12)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    t_dir = tiny.build_model_dir(root / "teacher", layers=4, hidden=64, heads=4, kv_heads=2, intermediate=128, seed=1,
                                 init_std=0.2)
    teacher = load_model(str(t_dir))
    s_dir = derive_student("t", StudentShape(layers=2), ["Machine M-204 raised alarm E17. " * 60], root / "student",
                           seq_len=32, max_tokens=256, loaded=teacher)
    return t_dir, s_dir


def test_encode_marks_only_response_tokens(pair):
    _, tok = load_model(str(pair[0]))
    enc = encode(tok, RECORDS[:2], max_length=200)
    ex = enc.examples[0]
    ids, labels = ex["input_ids"], ex["labels"]
    prompt_len = len(chat_ids(tok, RECORDS[0]["messages"]))
    assert all(x == IGNORE for x in labels[: prompt_len - 1]) and labels[-1] == IGNORE
    assert labels[prompt_len - 1 : -1] == ids[prompt_len:]  # each label is the next token of the response
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids[prompt_len:-1]) == RECORDS[0]["response"]
    short = encode(tok, RECORDS[:2], max_length=prompt_len + 3)
    assert short.truncated == 2 and all(len(e["input_ids"]) == prompt_len + 3 for e in short.examples)
    batch = collate(enc.examples, pad_id=tok.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape


def test_training_brings_the_student_closer(pair, tmp_path):
    teacher, student = load_model(str(pair[0])), load_model(str(pair[1]))
    ex = encode(teacher[1], RECORDS, 96).examples
    before = agreement_with_teacher(teacher[0], student[0], ex, pad_id=teacher[1].pad_token_id)
    model, _ = train(teacher, student, ex, tmp_path / "run", LossSettings(loss="forward_kl", kd_weight=1.0),
                     TrainSettings(steps=30, batch_size=4, grad_accum=1, lr=5e-3, warmup_steps=0,
                                 logging_steps=5, save_steps=100, precision="fp32", kd_chunk=0))
    after = agreement_with_teacher(teacher[0], model, ex, pad_id=teacher[1].pad_token_id)
    assert after["mean_kl"] < 0.5 * before["mean_kl"], (before, after)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [5, 10, 15, 20, 25, 30]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["loss"]["loss"] == "forward_kl"


def test_resume_matches_an_uninterrupted_run(pair, tmp_path):
    from transformers import TrainerCallback

    class Kill(TrainerCallback):  # stops right after the step-4 checkpoint, as a kill after saving would
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 4:
                control.should_training_stop = True

    cfg = TrainSettings(steps=8, batch_size=2, grad_accum=2, lr=3e-3, warmup_steps=2, save_steps=4, precision="fp32", kd_chunk=0)
    loss = LossSettings(loss="skew_kl", alpha=0.1, kd_weight=0.8)

    def fresh():
        teacher, student = load_model(str(pair[0])), load_model(str(pair[1]))
        return teacher, student, encode(teacher[1], RECORDS, 96).examples

    t, s, ex = fresh()
    straight, _ = train(t, s, ex, tmp_path / "a", loss, cfg)
    t, s, ex = fresh()
    train(t, s, ex, tmp_path / "b", loss, cfg, extra_callbacks=[Kill()], inputs={"teacher": "aaaa"})
    with pytest.raises(EdgeDistillError, match="pass --resume"):
        train(*fresh()[:2], ex, tmp_path / "b", loss, cfg)
    # Checkpoints continue only from the inputs they were made with: another teacher at the same path, other
    # data or other settings are refused with both values named.
    for inputs, kw, named in (({"teacher": "bbbb"}, {}, "teacher: checkpoints 'aaaa', now 'bbbb'"),
                              ({"teacher": "aaaa"}, {"examples": ex[:-1]}, "data: checkpoints"),
                              ({"teacher": "aaaa"}, {"cfg": dataclasses.replace(cfg, lr=1e-3)}, "train:")):
        with pytest.raises(EdgeDistillError, match=named):
            train(*fresh()[:2], kw.get("examples", ex), tmp_path / "b", loss, kw.get("cfg", cfg), resume=True,
                  inputs=inputs)
    t, s, ex = fresh()
    resumed, trainer = train(t, s, ex, tmp_path / "b", loss, cfg, resume=True, inputs={"teacher": "aaaa"})
    assert trainer.state.global_step == 8
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_on_policy_steps_run(pair, tmp_path):
    teacher, student = load_model(str(pair[0])), load_model(str(pair[1]))
    ex = encode(teacher[1], RECORDS[:4], 96).examples
    _, trainer = train(teacher, student, ex, tmp_path / "run", LossSettings(loss="reverse_kl", kd_weight=1.0),
                       TrainSettings(steps=3, batch_size=2, grad_accum=1, on_policy=1.0, on_policy_max_new_tokens=6,
                                   warmup_steps=0, save_steps=100, precision="fp32", kd_chunk=0))
    assert trainer.state.global_step == 3


def test_on_policy_samples_keep_each_prompt(pair, tmp_path):
    """Rows with prompts of different lengths are sampled in one left-padded batch; each keeps its own prompt."""
    teacher, student = load_model(str(pair[0])), load_model(str(pair[1]))
    records = [RECORDS[0], {"id": "long", "messages": [
        {"role": "user", "content": "A much longer question about order NW-777, which left the depot on Monday "
                                    "and has not arrived; what should I do next?"}],
        "response": "Check the tracking page."}]
    ex = encode(teacher[1], records, 160).examples
    _, trainer = train(teacher, student, ex, tmp_path / "run", LossSettings(loss="forward_kl", kd_weight=1.0),
                       TrainSettings(steps=1, batch_size=2, grad_accum=1, on_policy=1.0, on_policy_max_new_tokens=5,
                                   warmup_steps=0, save_steps=100, precision="fp32", kd_chunk=0))
    batch = collate(ex, trainer.pad_id)
    sampled = trainer._student_samples(trainer.model, batch)
    for row, e in enumerate(ex):
        start = e["labels"].index(next(x for x in e["labels"] if x != IGNORE)) + 1  # prompt length
        n = int(sampled["attention_mask"][row].sum())
        got = sampled["input_ids"][row, :n].tolist()
        assert got[:start] == e["input_ids"][:start]
        assert 0 < n - start <= 5
        labels = sampled["labels"][row, :n].tolist()
        assert labels[: start - 1] == [IGNORE] * (start - 1)
        assert labels[start - 1 : n - 1] == got[start:n]


def test_padded_vocabularies_of_one_tokenizer_are_compared_on_their_shared_rows(pair, tmp_path):
    """Qwen2.5-style: one tokenizer, embeddings padded to different sizes. Accepted, and the divergence is the one
    over the shared rows (the padded rows' logits play no part); a tokenizer with other tokens is refused."""
    from edgedistill.distill.losses import bins

    teacher = load_model(str(pair[0]))
    other = load_model(str(tiny.build_model_dir(tmp_path / "o", layers=1)))
    other[0].resize_token_embeddings(other[0].config.vocab_size + 8)
    check_compatible(teacher[0], teacher[1], other[0], other[1])  # no error
    v = teacher[0].config.vocab_size
    s, t = torch.randn(2, 3, v + 8), torch.randn(2, 3, v)
    got_s, got_t = bins(s, t)
    assert got_s.shape == got_t.shape == (2, 3, v)
    assert torch.allclose(got_s, torch.log_softmax(s[..., :v], -1)) and torch.allclose(got_t, torch.log_softmax(t, -1))
    ids = torch.tensor([[[0, v + 3]]])  # a cached top-k id on a row the student lacks: finite, never an index error
    assert torch.isfinite(bins(torch.randn(1, 1, v), (torch.log(torch.tensor([[[0.5, 0.01]]])), ids))[0]).all()
    from transformers import AutoTokenizer

    renamed = AutoTokenizer.from_pretrained(pair[0])
    renamed.add_tokens(["<|new|>"])
    with pytest.raises(EdgeDistillError, match=r"tokenizers differ .* distillation needs one tokenizer"):
        check_compatible(teacher[0], teacher[1], other[0], renamed)


def test_cross_entropy_alone_needs_no_teacher_model(pair, tmp_path):
    """kd_weight 0 and no on-policy steps: the teacher's tokenizer is enough, and the result is the same as with
    the teacher model loaded (its logits are never used). A divergence without teacher or cache is refused."""
    t_tok = load_model(str(pair[0]))[1]
    examples = encode(t_tok, RECORDS[:8], max_length=64).examples
    cfg = TrainSettings(steps=2, batch_size=4, grad_accum=1, lr=1e-3, warmup_steps=0, logging_steps=1, precision="fp32", kd_chunk=0)
    ce = LossSettings(loss="forward_kl", kd_weight=0.0)
    alone, _ = train((None, t_tok), load_model(str(pair[1])), examples, tmp_path / "a", ce, cfg)
    with_teacher, _ = train(load_model(str(pair[0])), load_model(str(pair[1])), examples, tmp_path / "b", ce, cfg)
    before = load_model(str(pair[1]))[0].state_dict()
    moved = False
    for name, w in alone.state_dict().items():
        torch.testing.assert_close(w, with_teacher.state_dict()[name])
        moved |= not torch.equal(w, before[name])
    assert moved
    with pytest.raises(EdgeDistillError, match="needs a teacher model or a teacher-logit cache"):
        train((None, t_tok), load_model(str(pair[1])), examples, tmp_path / "c", LossSettings(loss="forward_kl", kd_weight=1.0), cfg)


@pytest.mark.slow
def test_two_process_job_matches_one_process(pair, tmp_path):
    """The same job under torch.distributed (2 CPU processes, gloo) and in one process: same weights."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    job = str(REPO / "tests" / "distill" / "ddp_job.py")
    one = tmp_path / "one" / "w.safetensors"
    two = tmp_path / "two" / "w.safetensors"
    one.parent.mkdir()
    two.parent.mkdir()
    p1 = subprocess.run([sys.executable, job, str(pair[0]), str(pair[1]), str(one), "4"], env=env,
                        capture_output=True, text=True, timeout=600)
    assert p1.returncode == 0, p1.stderr[-3000:]
    p2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                         job, str(pair[0]), str(pair[1]), str(two), "2"], env=env, capture_output=True, text=True,
                        timeout=600)
    assert p2.returncode == 0, p2.stderr[-3000:]
    from safetensors.torch import load_file

    # Loss and gradient norm are scale-sensitive, so they catch a wrong token normalisation (Adam's updates,
    # being scale-free, would not); weights agree up to Adam amplifying float noise on near-zero gradients.
    logs = [[json.loads(x) for x in (d.parent / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
            for d in (one, two)]
    assert len(logs[0]) == len(logs[1]) == 3
    for x, y in zip(*logs):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)
    a, b = load_file(one), load_file(two)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-3), k


def test_distill_refuses_another_teachers_generations(tiny_model_dir, tmp_path):
    """Generations record the teacher that wrote them; distilling them with another --teacher (whose logits and
    validation KL would be mixed with the first one's text) is refused before any model loads, naming both."""
    from edgedistill.distill.stage import DistillSettings, distill

    gen = tmp_path / "gen.jsonl"
    gen.write_text(json.dumps({"id": "a", "messages": [{"role": "user", "content": "Hi"}], "response": "Hello.",
                               "teacher": "served-model", "teacher_fingerprint": "0123456789abcdef"}) + "\n")
    with pytest.raises(EdgeDistillError, match=r"--generations were written by teacher 'served-model' \(fingerprint "
                                               r"0123456789abcdef\), not by --teacher .*tiny-llama"):
        distill(DistillSettings(teacher=str(tiny_model_dir), student=str(tiny_model_dir), generations=[gen],
                                out=tmp_path / "run", steps=1))
    assert not (tmp_path / "run" / "student").exists()


def test_logged_conversations_are_teacher_data_as_they_are(tiny_model_dir, tmp_path):
    """A conversation with assistant turns (TRL's and the vendors' fine-tuning format) needs no teacher call: every
    assistant turn is a target with the conversation before it as context (or only the last), and distill trains
    on the file as it stands."""
    from edgedistill.data import DataError
    from edgedistill.distill.dataset import load_generations
    from edgedistill.distill.stage import DistillSettings, distill

    logs = tmp_path / "logs.jsonl"
    chat = [{"role": "system", "content": "You are the support desk."},
            {"role": "user", "content": "Where is my order NW-1234?"},
            {"role": "assistant", "content": "It left the warehouse on Monday."},
            {"role": "user", "content": "When will it arrive?"},
            {"role": "assistant", "content": "On Thursday, before noon."}]
    logs.write_text(json.dumps({"id": "c1", "messages": chat}) + "\n"
                    + json.dumps({"messages": chat[1:3]}) + "\n")
    recs = load_generations([logs])
    assert [r["id"] for r in recs] == ["c1#2", "c1#4", "logs.jsonl:2"]
    assert recs[1]["messages"] == chat[:4] and recs[1]["response"] == "On Thursday, before noon."
    assert recs[0]["messages"] == chat[:2] and recs[0]["response"] == "It left the warehouse on Monday."
    last = load_generations([logs], turns="last")
    assert [(r["id"], r["response"]) for r in last] == [("c1", chat[4]["content"]), ("logs.jsonl:2", chat[2]["content"])]
    # an assistant turn with no user turn before it, and a prompt with no answer, are refused with their line
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "assistant", "content": "Hello."}]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: the assistant turn at message 0: 'messages' must be a non-empty"):
        load_generations([bad])
    bad.write_text(json.dumps({"messages": chat[:2]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: no 'response' and no assistant turn .*edgedistill generate"):
        load_generations([bad])
    report = distill(DistillSettings(teacher=str(tiny_model_dir), student=str(tiny_model_dir), generations=[logs],
                                     validation=[logs], out=tmp_path / "run", steps=1, batch_size=2, grad_accum=1,
                                     max_length=512, precision="fp32"))
    assert report["train_sequences"] == 3 and report["validation"]["tokens"] > 0
    # a teacher named for logs' text: the two models are said, never a silent mix
    assert report["pairing"]["kind"] == "logits" and "two models" in report["pairing"]["why"]
    # no teacher named: the logs' text alone, no other model's probabilities (none loaded, none recorded)
    said = []
    alone = distill(DistillSettings(student=str(tiny_model_dir), generations=[logs], validation=[logs],
                                    out=tmp_path / "alone", steps=1, batch_size=2, grad_accum=1, max_length=512,
                                    precision="fp32"), echo=said.append)
    assert alone["teacher"] is None and alone["pairing"]["kind"] == "sequence"
    assert any("name no teacher" in line for line in said) and any("kd-weight 0.5 set to 0" in line for line in said)
    assert "mean_kl" not in alone["validation"] and alone["validation"]["before"]
