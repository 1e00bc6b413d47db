"""The frontier trip: a teacher that can only be called (llama.cpp's OpenAI-compatible server on 127.0.0.1 with a
tiny GGUF) teaches a tiny student of another family and tokenizer through `run`, with no local teacher weights:
every stage, the pairing decided first, text-level fidelity before and after, the server's calls counted, the
identity refusals, and logged conversations as training data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgedistill.errors import EdgeDistillError
from edgedistill.pipeline import RunSettings, run_pipeline
from tests.conftest import run_cli
from tests.families import TINY
from tests.pipeline.test_run import PROFILE

NO_PENALTY = '{"repeat_penalty": 1.0}'


@pytest.fixture(scope="module")
def pair(chatty, tmp_path_factory):
    """The teacher's GGUF (the engine tests' tiny chat model, a byte-level BPE tokenizer) and a Gemma 3 student
    (SentencePiece)."""
    root = tmp_path_factory.mktemp("served-run")
    teacher_dir, gguf, _ = chatty
    student = TINY["gemma3"].build(root / "student", layers=2)
    profile = root / "tinybox.yaml"
    profile.write_text(PROFILE.replace("formats: [gguf:q8_0, onnx:int8]", "formats: [gguf:q8_0]"))
    return teacher_dir, gguf, student, profile


def _settings(server, student, profile, out, **kw) -> RunSettings:
    return RunSettings(target=str(profile), out=out, teacher_url=server.url, teacher_model="chatty",
                       student=str(student), steps=2, batch_size=2, grad_accum=1, max_new_tokens=16, repeats=1,
                       new_tokens=8, eval_every=120, teacher_extra_body=NO_PENALTY, **kw)


@pytest.mark.slow
def test_a_served_teacher_teaches_a_student_of_another_tokenizer_through_run(pair, serve, tmp_path, monkeypatch):
    teacher_dir, gguf, student, profile = pair
    server = serve(gguf, "chatty")
    prompts = tmp_path / "mine.csv"
    prompts.write_text("question,topic\n" + "".join(f"Question {i}?,t{i % 3}\n" for i in range(30)))
    import edgedistill.models.locate as locate

    loaded = []
    real = locate.load_model
    monkeypatch.setattr(locate, "load_model", lambda spec, *a, **k: loaded.append(str(spec)) or real(spec, *a, **k))
    said = []
    out = tmp_path / "run"
    summary = run_pipeline(_settings(server, student, profile, out, prompts=[prompts], prompt_column="question",
                                     held_out_share=0.2), echo=said.append)
    # decided first, and said: the tokenizers differ, so the student learns the teacher's text
    assert summary["pairing"]["kind"] == "sequence" and said[0].strip().startswith("pairing: sequence-level")
    assert list(summary["stages"]) == ["generate", "reference", "distill", "export-before", "export", "bench", "safety"]
    assert str(student) in loaded and all(spec.startswith(str(out)) or spec == str(student) for spec in loaded), \
        loaded  # no teacher weights, anywhere
    # the teacher that was used, in the run's records; what the server was asked, counted
    assert json.loads((out / "teacher.json").read_text())["url"] == server.url
    calls = summary["teacher_calls"]
    gen = summary["stages"]["generate"]["info"]
    assert calls["requests"] == sum(v["prompts"] for v in gen.values()) + sum(
        v["prompts"] for v in summary["stages"]["reference"]["info"].values())
    assert calls["completion_tokens"] > 0 and calls["prompt_tokens"] > 0 and calls["reported_models"] == ["chatty"]
    # held out from the user's own file, never trained on
    train = {json.loads(x)["id"] for x in (out / "generate" / "teacher-train.jsonl").read_text().splitlines()}
    held = {json.loads(x)["id"] for x in (out / "reference" / "teacher-test.jsonl").read_text().splitlines()}
    assert train and held and not train & held
    # fidelity on the text, before and after distillation, with intervals
    v = summary["student"]["validation"]
    assert set(v["chrf"]) == {"value", "ci", "items"} and "chrf" in v["before"] and "teacher_nll_per_byte" not in v
    assert sum("likelihood of the student's answers is left out" in m for m in said) == 1  # chat API, no template
    report = json.loads((out / "bench" / "bench.json").read_text())
    assert report["fidelity"]["level"].startswith("text") and report["quality_reference"].startswith("chatty")
    row = next(r for r in report["variants"] if not r["comparison"])
    assert row["quality"]["text"]["chrf"]["items"] == len(held) and "in_domain_mean_kl" not in row["budgets"]
    assert "answer_agreement" in row["quality"]["graded"]
    # a second run reuses every stage, without a call to the server
    again = run_pipeline(_settings(server, student, profile, out, prompts=[prompts], prompt_column="question",
                                   held_out_share=0.2), echo=lambda m: None)
    assert all(s["reused"] for s in again["stages"].values())
    # the run folder belongs to this teacher: another served model is refused, naming both
    with pytest.raises(EdgeDistillError, match="made with teacher 'chatty'.*'other'"):
        run_pipeline(_settings(server, student, profile, out, prompts=[prompts], prompt_column="question",
                               held_out_share=0.2).replace(teacher_model="other"), echo=lambda m: None)
    # distill with a local teacher on the served teacher's answers: the silent mix is refused, naming both
    proc = run_cli("distill", "--teacher", str(teacher_dir), "--student", str(student), "--generations",
                   str(out / "generate" / "teacher-train.jsonl"), "--out", str(tmp_path / "mixed"))
    assert proc.returncode != 0 and "'chatty'" in proc.stderr and "mix two teachers" in proc.stderr
    assert not (tmp_path / "mixed" / "student").exists()


@pytest.mark.slow
def test_logged_conversations_are_training_data_as_they_stand(pair, serve, tmp_path):
    _, gguf, student, profile = pair
    server = serve(gguf, "chatty")
    logs = tmp_path / "logs.jsonl"
    logs.write_text("".join(json.dumps({"id": f"c{i}", "messages": [
        {"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."},
        {"role": "user", "content": "And then?"}, {"role": "assistant", "content": "Then we stop."}]}) + "\n"
        for i in range(30)))
    out = tmp_path / "run"
    summary = run_pipeline(_settings(server, student, profile, out, conversations=[logs], held_out_share=0.2),
                           echo=lambda m: None)
    gen = summary["stages"]["generate"]["info"]
    assert "train" not in gen and gen["validation"]["prompts"] >= 1  # the teacher answered only held-out prompts
    kept = [json.loads(x) for x in (out / "generate" / "conversations.jsonl").read_text().splitlines()]
    assert len(kept) == gen["conversations"] == 30 - gen["validation"]["prompts"] - len(
        (out / "reference" / "teacher-test.jsonl").read_text().splitlines())
    # every assistant turn of every kept conversation is a training sequence
    distill_log = json.loads((out / "distill" / "student" / "distill.json").read_text())
    assert distill_log["train_sequences"] == 2 * len(kept)
    assert distill_log["teacher"] == "chatty"


@pytest.mark.slow
def test_a_served_teacher_of_the_students_tokenizer_teaches_through_its_top_20(pair, serve, tmp_path):
    """--tokenizer names the served model's tokenizer; it is the student's, so the pairing is logit distillation
    from the server's top-20 log-probabilities, through the logit cache."""
    from tests import tiny

    teacher_dir, gguf, _, profile = pair
    server = serve(gguf, "chatty")
    student = tiny.build_model_dir(tmp_path / "student", init_std=0.15, layers=2)  # the chatty model's tokenizer
    summary = run_pipeline(_settings(server, student, profile, tmp_path / "run", tokenizer=str(teacher_dir),
                                     train_prompts=2, val_prompts=1, fidelity_prompts=1), echo=lambda m: None)
    assert summary["pairing"]["kind"] == "logits" and "top-k" in summary["pairing"]["why"]
    assert summary["stages"]["cache"]["info"]["k"] == 20
    assert json.loads((tmp_path / "run" / "distill" / "student" / "distill.json").read_text())["logit_cache"]


@pytest.mark.slow
def test_a_local_teacher_of_another_tokenizer_scores_the_students_answers(pair, tmp_path):
    """A local teacher and a pretrained student of another tokenizer: sequence-level, and the validation adds the
    teacher's NLL per byte of the student's answers; the bench compares with the teacher's answers (llama.cpp)."""
    teacher_dir, _, student, profile = pair
    summary = run_pipeline(RunSettings(target=str(profile), out=tmp_path / "run", teacher=str(teacher_dir),
                                       student=str(student), train_prompts=2, val_prompts=1, fidelity_prompts=1,
                                       steps=2, batch_size=2, grad_accum=1, max_new_tokens=16, repeats=1,
                                       new_tokens=8, eval_every=120, allow_empty=True), echo=lambda m: None)
    assert summary["pairing"]["kind"] == "sequence" and "tokenizers differ" in summary["pairing"]["why"]
    assert "export-teacher" not in summary["stages"] and "prune" not in summary["stages"]
    v = summary["student"]["validation"]
    assert v["teacher_nll_per_byte"]["value"] > 0 and "teacher_nll_per_byte" in v["before"]
    # the pretrained student as it came, in the profile's first format, benched beside the distilled one, never chosen
    rows = json.loads((Path(summary["bench"]).parent / "bench.json").read_text())["variants"]
    (before,) = [r for r in rows if r["comparison"] and not r.get("adapter")]
    (lora,) = [r for r in rows if r.get("adapter")]  # the base with the LoRA adapter distill trained (the default)
    after = [r for r in rows if not r["comparison"] and not r["reference"]]
    assert before["key"] == "gguf:q8_0" and before["source"] == student.name and after[0]["source"] == "student"
    assert lora["bundle"] == before["bundle"] and lora["status"] == "ok"
    assert before["quality"]["text"]["chrf"]["value"] >= 0 and summary["chosen"]["name"] != before["name"]
    # the device kit of a text-level bench carries the teacher's answers, not logits; run and merged, the rows are
    # the device's, compared with those answers on the text
    from edgedistill.bench.kit import merge_kit, open_kit, run_kit

    kit, _ = open_kit(summary["device_kit"])
    assert kit["top_k"] is None and kit["text_reference"]["records"] and kit["plan"]["answer_prompts"]
    run_kit(summary["device_kit"], tmp_path / "results.json")
    merged = merge_kit(summary["device_kit"], [tmp_path / "results.json"], tmp_path / "merged")
    rows = [r for r in merged["variants"] if not r["reference"] and not r.get("adapter")]
    assert [r["measured_on"] for r in merged["variants"] if r.get("adapter")] == ["build machine"]  # not in a kit
    assert rows and all(r["measured_on"] == "device" and r["quality"]["text"]["chrf"]["value"] >= 0 for r in rows)
    assert "| chrF | answers agree % |" in (tmp_path / "merged" / "bench.md").read_text()


@pytest.mark.slow
def test_a_base_model_teaches_through_the_completions_api_and_scores_the_students_answers(pair, serve, tmp_path):
    """--teacher-api completions (with --tokenizer naming the teacher's tokenizer, whose template renders the
    prompts): the server answers, and scores the student's answers before and after distillation and each
    bundle's in the bench; those calls are counted with the rest."""
    teacher_dir, gguf, student, profile = pair
    server = serve(gguf, "chatty")
    summary = run_pipeline(_settings(server, student, profile, tmp_path / "run", teacher_api="completions",
                                     tokenizer=str(teacher_dir), train_prompts=2, val_prompts=2, fidelity_prompts=2),
                           echo=lambda m: None)
    assert summary["pairing"]["kind"] == "sequence"
    v = summary["student"]["validation"]
    assert v["teacher_nll_per_byte"]["value"] > 0 and v["before"]["teacher_nll_per_byte"]["value"] > 0
    row = json.loads((tmp_path / "run" / "bench" / "bench.json").read_text())["variants"][0]
    assert row["quality"]["text"]["teacher_nll_per_byte"]["items"] >= 1
    stages = summary["stages"]
    scored = stages["distill"]["info"]["calls"]["requests"] + stages["bench"]["info"]["calls"]["requests"]
    assert scored >= 2 * v["prompts"] + row["quality"]["text"]["teacher_nll_per_byte"]["items"]
    asked = sum(x["prompts"] for name in ("generate", "reference") for x in stages[name]["info"].values())
    assert summary["teacher_calls"]["requests"] == asked + scored


@pytest.mark.slow
@pytest.mark.parametrize("served", [True, False], ids=["served", "local"])
def test_cross_tokenizer_distillation_through_run(pair, serve, tmp_path, served):
    """--objective cross: the teacher's top-k (a served teacher's top-20 strings, or a local teacher's top-64 scored
    by llama.cpp) projected onto the Gemma 3 student's tokenizer by the cache stage; distill learns from it."""
    teacher_dir, gguf, student, profile = pair
    common = dict(objective="cross", train_prompts=2, val_prompts=1, fidelity_prompts=1)
    if served:
        settings = _settings(serve(gguf, "chatty"), student, profile, tmp_path / "run", **common)
    else:
        settings = RunSettings(target=str(profile), out=tmp_path / "run", teacher=str(teacher_dir), student=str(student),
                               steps=2, batch_size=2, grad_accum=1, max_new_tokens=16, repeats=1, new_tokens=8,
                               eval_every=120, allow_empty=True, **common)
    summary = run_pipeline(settings, echo=lambda m: None)
    assert summary["pairing"]["kind"] == "cross" and "projected onto" in summary["pairing"]["why"]
    cache = summary["stages"]["cache"]["info"]
    assert cache["k"] == (20 if served else 64) and 0 < cache["projection"]["aligned_share"] < 1
    log = json.loads((tmp_path / "run" / "distill" / "student" / "distill.json").read_text())
    assert log["pairing"]["kind"] == "cross" and log["logit_cache"]
    assert "chrf" in summary["student"]["validation"]  # measured on the text: the tokenizers differ


@pytest.mark.slow
def test_ctrl_c_stops_run_at_once_while_a_served_teacher_is_slow(pair, serve, tmp_path):
    """`run` against a server that takes a minute an answer: Ctrl-C ends it in seconds (exit 130, one line), not
    after the requests in flight time out."""
    from tests.servers import FailingProxy, interrupt_once_asked

    _, gguf, student, profile = pair
    server = serve(gguf, "chatty")
    slow = FailingProxy(server.url, delay=60)
    try:
        code, err, stopped = interrupt_once_asked(["run", "--target", str(profile), "--out", str(tmp_path / "run"),
                                                   "--teacher-url", slow.url, "--teacher-model", "chatty",
                                                   "--student", str(student), "--steps", "2"], slow, 120)
        assert code == 130 and err.strip().splitlines()[-1] == "error: interrupted", err[-2000:]
        assert stopped < 5, f"took {stopped:.1f} s to stop"
    finally:
        slow.close()
