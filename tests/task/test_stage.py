"""Task distillation end to end on tiny models: a tiny teacher that labels messages, a tiny student that cannot,
through `task distill` (the teacher in process, and served behind llama.cpp's server) and `task eval`."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import built_once, run_cli

BILLING = ["my card was charged twice", "the invoice shows a wrong price", "please refund the payment",
           "why is the bill so high", "a double charge on my statement", "cancel the subscription fee",
           "the coupon did not lower the total", "tax on the receipt looks odd", "refund still not in my account",
           "charged for an item I returned", "update the card on file", "the price changed at checkout",
           "invoice number missing on the receipt", "payment failed but money left"]
SHIPPING = ["the parcel never arrived", "courier left the box outside", "when will my delivery come",
            "tracking has not moved in days", "the truck skipped my street", "order shipped to the old address",
            "box arrived crushed and wet", "delivery window keeps slipping", "the driver could not find us",
            "parcel stuck at the depot", "ship it to my office instead", "two boxes came, one is missing",
            "courier says delivered, nothing here", "change the delivery date please"]


def _messages(n: int, offset: int = 0) -> list[dict]:
    rows = []
    for i in range(offset, offset + n):
        label, texts = (("billing", BILLING), ("shipping", SHIPPING))[i % 2]
        rows.append({"text": texts[(i // 2) % len(texts)], "output": label})
    return rows


def _write_task(folder):
    folder.mkdir(parents=True, exist_ok=True)
    seeds = _messages(5)
    inputs = _messages(16, offset=5)
    test = _messages(6, offset=21)
    (folder / "inputs.jsonl").write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in inputs))
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    (folder / "task.yaml").write_text(yaml.safe_dump({
        "name": "routing", "instructions": "Route the message.", "input": "text",
        "output": {"kind": "label", "labels": ["billing", "shipping"]}, "seeds": seeds,
        "inputs": "inputs.jsonl", "test": "test.jsonl"}))
    return folder / "task.yaml", seeds + inputs + test


@pytest.fixture(scope="session")
def labeller(tmp_path_factory):
    """The task file, a tiny teacher fitted to label every message of it (with its F16 GGUF for the server), and a
    tiny student that never saw the task."""

    def build(root):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from edgedistill.formats.gguf import write_gguf
        from edgedistill.task.spec import load_task
        from tests import tiny

        task_file, rows = _write_task(root / "task")
        task = load_task(task_file)
        tiny.build_model_dir(root / "teacher", seed=0)
        tok = AutoTokenizer.from_pretrained(root / "teacher")
        model = AutoModelForCausalLM.from_pretrained(root / "teacher")
        fit = []
        for r in rows:
            prompt = tok.apply_chat_template(list(task.messages(r)), add_generation_prompt=True, tokenize=False)
            fit.append((tok(prompt, add_special_tokens=False).input_ids,
                        tok(r["output"] + "<|im_end|>", add_special_tokens=False).input_ids))
        tiny.fit_replies(model, fit, tok.pad_token_id, steps=120)
        model.save_pretrained(root / "teacher", safe_serialization=True)
        write_gguf(model, tok, root / "teacher-f16.gguf", dtype="f16")
        tiny.build_model_dir(root / "student", seed=1)

    root = built_once(tmp_path_factory, "labeller", build)
    return root / "task" / "task.yaml", root / "teacher", root / "teacher-f16.gguf", root / "student"


def _check(report: dict) -> None:
    rows = report["rows"]
    assert set(rows) == {"teacher", "student before, zero-shot", "student before, 3-shot", "student after"}
    assert rows["teacher"]["gold"]["accuracy"]["value"] == 1.0  # the teacher knows the task
    before, after = rows["student before, zero-shot"], rows["student after"]
    assert before["valid"]["value"] < 0.5  # a random student does not answer with a label
    assert after["valid"]["value"] == 1.0  # the student learned the answer's form from the teacher's labels
    assert after["teacher"]["accuracy"]["value"] > before["teacher"].get("accuracy", {"value": 0})["value"]
    assert after["gold"]["accuracy"]["value"] >= 0.5 and "macro_f1" in after["gold"]
    assert report["data"]["kept"] == 21 and report["data"]["dropped"] == 0


@pytest.mark.slow
def test_task_distill_with_a_local_teacher(labeller, tmp_path):
    task_file, teacher, _, student = labeller
    out = tmp_path / "run"
    args = ["task", "distill", "--task", str(task_file), "--teacher", str(teacher), "--student", str(student),
            "--out", str(out), "--steps", "80", "--lr", "5e-3", "--lora-rank", "0", "--batch-size", "8",
            "--grad-accum", "1", "--warmup-steps", "0"]
    r = run_cli(*args, "--variant", "gguf:q8_0")
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((out / "task.json").read_text())
    q8 = report["rows"].pop("student after, Q8_0")  # the exported file, answering through llama.cpp
    assert q8["valid"]["value"] == 1.0 and (out / "export" / "gguf-q8_0" / "manifest.json").is_file()
    _check(report)
    assert report["distill"]["pairing"]["kind"] == "logits"  # one tokenizer, a local teacher
    assert "student after: valid 100.0%" in r.stdout
    # a rerun reuses every answer and the student
    r2 = run_cli(*args)
    assert r2.returncode == 0 and "reusing" in r2.stderr
    assert json.loads((out / "task.json").read_text())["rows"] == report["rows"]
    assert run_cli(*args, "--variant", "onnx:int4").returncode == 2  # refused before any work
    # the student alone on the task, as `task eval` scores it
    r3 = run_cli("task", "eval", str(out / "distill" / "student"), "--task", str(task_file), "--out",
                 str(tmp_path / "eval.jsonl"))
    assert r3.returncode == 0 and "accuracy vs gold" in r3.stdout, r3.stderr[-2000:]


@pytest.mark.slow
def test_task_distill_with_a_served_teacher(labeller, tmp_path, serve):
    from edgedistill.task.stage import TaskSettings, task_distill

    task_file, _, gguf, student = labeller
    server = serve(gguf, "labeller")
    s = TaskSettings(task=task_file, teacher_url=server.url, teacher_model="labeller", student=str(student),
                     out=tmp_path / "run", steps=80, lr=5e-3, lora_rank=0, batch_size=8, grad_accum=1,
                     warmup_steps=0, teacher_extra_body='{"repeat_penalty": 1.0}')
    report = task_distill(s, echo=lambda m: None)
    _check(report)
    assert report["distill"]["pairing"]["kind"] == "sequence" and report["teacher"] == "labeller"
    assert report["teacher_calls"]["train"]["requests"] == 21


def test_answers_to_another_version_of_the_task_are_refused(tmp_path):
    from edgedistill.engines import EngineSpec
    from edgedistill.task.spec import load_task
    from edgedistill.task.stage import TaskError, answer

    task_file, _ = _write_task(tmp_path / "task")
    task = load_task(task_file)
    out = tmp_path / "answers.jsonl"
    rec = {"id": task.test[0]["id"], "messages": [{"role": "user", "content": "an older prompt"}], "response": "x"}
    out.write_text(json.dumps(rec) + "\n")
    with pytest.raises(TaskError, match="the task file changed"):
        answer(task, task.test, EngineSpec("llama.cpp", "unused"), out, 8)
