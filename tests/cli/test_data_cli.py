"""generate / eval / data split through the real CLI, on the tiny model."""

import json

import pytest
import yaml

from tests.conftest import run_cli


def _eval_dir(root):
    d = root / "support"
    d.mkdir(parents=True)
    items = [
        {"id": "e1", "task": "yes_no", "prompt": "Is 3 > 2? Answer yes or no.", "answer": "yes", "choices": ["yes", "no"]},
        {"id": "e2", "task": "arithmetic", "prompt": "Think step by step. 2+2? End with 'Answer: <x>'.", "answer": "4"},
        {"id": "e3", "task": "extraction", "prompt": "Order number in: 'my order NW-111222 is late'?", "answer": "NW-111222"},
    ]
    (d / "eval.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    return root


def test_generate_then_rerun(tiny_model_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Where is my order?"}\n{"id": "b", "prompt": "Alarm E17 on M-204"}\n')
    out = tmp_path / "gen.jsonl"
    args = ["generate", "--teacher-engine", "torch", "--teacher", str(tiny_model_dir), "--prompts", str(prompts), "--out", str(out),
            "--max-new-tokens", "6"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 2 new responses, 0 were already there" in proc.stdout
    proc = run_cli(*args)
    assert "wrote 0 new responses, 2 were already there" in proc.stdout


def test_generate_bad_prompt_file(tiny_model_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "ok"}\n{"id": "b", "messages": "oops"}\n')
    proc = run_cli("generate", "--teacher-engine", "torch", "--teacher", str(tiny_model_dir), "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {prompts}:2: 'messages' must be a non-empty list"
    assert not (tmp_path / "o.jsonl").exists()
    proc = run_cli("generate", "--teacher-engine", "torch", "--teacher", str(tiny_model_dir), "--prompts", str(prompts), "--out",
                   str(tmp_path / "o.jsonl"), "--skip-bad", "--max-new-tokens", "2")
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 malformed records" in proc.stderr


def test_eval_with_teacher_column(tiny_model_dir, tmp_path):
    data = _eval_dir(tmp_path / "data")
    out = tmp_path / "eval.json"
    proc = run_cli("eval", str(tiny_model_dir), "--compare", str(tiny_model_dir), "--data", str(data),
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert len(report["models"]) == 2
    student, teacher = report["models"]
    assert [r["id"] for r in student["items"]] == ["e1", "e2", "e3"]
    assert student["items"] == teacher["items"]  # same model, greedy: same answers and grades
    assert {(r["domain"], r["task"]) for r in student["by_domain_task"]} == {
        ("support", "yes_no"), ("support", "arithmetic"), ("support", "extraction")}


def test_eval_by_likelihood(tiny_model_dir, tmp_path):
    data = _eval_dir(tmp_path / "data")
    out = tmp_path / "eval.json"
    proc = run_cli("eval", str(tiny_model_dir), "--data", str(data), "--by-likelihood", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "choices by likelihood, chance 50.0%" in proc.stdout
    (row,) = json.loads(out.read_text())["models"]
    assert [r["id"] for r in row["items"]] == ["e1"] and set(row["items"][0]["scores"]) == {"yes", "no"}
    f = data / "support" / "eval.jsonl"
    f.write_text("".join(line + "\n" for line in f.read_text().splitlines() if '"choices"' not in line))
    proc = run_cli("eval", str(tiny_model_dir), "--data", str(data), "--by-likelihood")
    assert proc.returncode == 2 and "lists its choices" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_unknown_domain(tiny_model_dir, tmp_path):
    data = _eval_dir(tmp_path / "data")
    proc = run_cli("eval", str(tiny_model_dir), "--data", str(data), "--domain", "legal")
    assert proc.returncode == 2
    assert "no eval set for domain(s) legal" in proc.stderr and "available: support" in proc.stderr


def test_data_split(tmp_path):
    src = tmp_path / "prompts.jsonl"
    lines = [{"id": f"p{i}", "prompt": f"question {w} about the {w} machine and its {w} alarm"}
             for i, w in enumerate("red green blue cyan magenta yellow black white grey pink".split())]
    lines.append({"id": "dup", "prompt": lines[0]["prompt"].upper()})
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    proc = run_cli("data", "split", str(src), "--out", str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr
    assert "1 near-duplicate groups kept together" in proc.stdout
    where = {json.loads(ln)["id"]: s for s in ("train", "validation", "test")
             for ln in (tmp_path / "s" / f"{s}.jsonl").read_text().splitlines()}
    assert len(where) == 11 and where["p0"] == where["dup"]
    bad = run_cli("data", "split", str(src), "--out", str(tmp_path / "s"), "--fractions", "0.5,0.5")
    assert bad.returncode == 2 and "three non-negative numbers" in bad.stderr


def test_generate_a_split_of_every_domain(tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    for dom in ("factory", "support"):
        (data / dom / "prompts").mkdir(parents=True)
        for split in ("train", "validation", "test"):
            (data / dom / "prompts" / f"{split}.jsonl").write_text(
                "".join(json.dumps({"id": f"{dom}-{split}-{i}", "prompt": f"{dom} question {i}"}) + "\n" for i in range(2)))
    out = tmp_path / "gen.jsonl"
    proc = run_cli("generate", "--teacher-engine", "torch", "--teacher", str(tiny_model_dir), "--split", "train", "--data", str(data),
                   "--out", str(out), "--max-new-tokens", "3")
    assert proc.returncode == 0, proc.stderr
    ids = sorted(json.loads(ln)["id"] for ln in out.read_text().splitlines())
    assert ids == ["factory-train-0", "factory-train-1", "support-train-0", "support-train-1"]
    both = run_cli("generate", "--split", "train", "--prompts", str(data / "support/prompts/test.jsonl"), "--out", str(out))
    assert both.returncode == 2 and "either --prompts" in both.stderr


@pytest.mark.slow
def test_prune_cli(tiny_model_dir, tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("The press stopped on alarm E17 after the guard opened. " * 80)
    out = tmp_path / "student"
    proc = run_cli("prune", "--teacher", str(tiny_model_dir), "--layers", "1", "--ffn", "64", "--calibration", str(texts),
                   "--calibration-tokens", "256", "--teacher-width", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "layers 1, hidden 64, FFN 64" in proc.stdout
    assert json.loads((out / "pruning.json").read_text())["shape"]["layers"] == 1
    again = run_cli("prune", "--teacher", str(tiny_model_dir), "--layers", "1", "--calibration", str(texts), "--teacher-width", "--out", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr
    bad = run_cli("prune", "--teacher", str(tiny_model_dir), "--layers", "7", "--calibration", str(texts), "--teacher-width", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "layers=7 must be between 1 and the teacher's 2" in bad.stderr
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def student_and_generations(tiny_model_dir, tmp_path_factory):
    """A 1-layer student pruned from the tiny model, and 8 generation records."""
    root = tmp_path_factory.mktemp("distill-cli")
    texts = root / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("The press stopped on alarm E17 after the guard opened. " * 80)
    student = root / "student0"
    assert run_cli("prune", "--teacher", str(tiny_model_dir), "--layers", "1", "--calibration", str(texts), "--calibration-tokens", "256",
                   "--teacher-width", "--out", str(student)).returncode == 0
    gen = root / "gen.jsonl"
    gen.write_text("".join(json.dumps({"id": f"g{i}", "messages": [{"role": "user", "content": f"Status of order {i}?"}],
                                       "response": f"Order {i} ships Monday."}) + "\n" for i in range(8)))
    return student, gen


@pytest.mark.slow
def test_distill_cli(tiny_model_dir, student_and_generations, tmp_path):
    student, gen = student_and_generations
    out = tmp_path / "run"
    args = ["distill", "--teacher", str(tiny_model_dir), "--student", str(student), "--generations", str(gen),
            "--validation", str(gen), "--out", str(out), "--loss", "jsd", "--beta", "0.3", "--steps", "3",
            "--batch-size", "4", "--grad-accum", "1"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "held-out KL" in proc.stdout and "of logit distillation" in proc.stdout
    rec = json.loads((out / "student" / "distill.json").read_text())
    assert rec["steps"] == 3 and rec["precision"]["used"] in ("fp32", "bf16") and 0 <= rec["validation"]["top1_agreement"] <= 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) >= 1
    again = run_cli(*args)
    assert again.returncode == 2 and "already exists" in again.stderr
    bad = run_cli(*args[:-8], "--out", str(tmp_path / "r2"), "--loss", "forward_kl", "--beta", "0.5")
    assert bad.returncode == 2 and "forward_kl has no parameter 'beta'" in bad.stderr
    # the settings the run wrote, passed back with --config and only --out changed, reproduce the same run settings
    written = yaml.safe_load((out / "student" / "settings.yaml").read_text())
    assert written["loss"] == "jsd" and written["beta"] == 0.3 and written["steps"] == 3
    assert yaml.safe_load((out / "settings.yaml").read_text()) == written
    proc = run_cli("distill", "--config", str(out / "settings.yaml"), "--out", str(tmp_path / "r3"))
    assert proc.returncode == 0, proc.stderr
    second = yaml.safe_load((tmp_path / "r3" / "student" / "settings.yaml").read_text())
    assert {**second, "out": None} == {**written, "out": None}
    # a flag overrides the file, which overrides the defaults
    proc = run_cli("distill", "--config", str(out / "settings.yaml"), "--out", str(tmp_path / "r4"), "--steps", "1")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "r4" / "student" / "distill.json").read_text())["steps"] == 1
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("steps: 0\nlr: 2\nnot_a_setting: 1\n")
    proc = run_cli("distill", "--config", str(bad_cfg))
    assert proc.returncode == 2 and "unknown setting(s) not_a_setting" in proc.stderr and "Traceback" not in proc.stderr
    bad_cfg.write_text("steps: 0\nlr: 2\n")
    proc = run_cli("distill", "--config", str(bad_cfg))
    assert proc.returncode == 2 and "steps=0 must be at least 1" in proc.stderr and "lr=2.0 must be at most 1" in proc.stderr
    assert "student is required" in proc.stderr  # every problem at once


def test_distill_has_no_safety_flags():
    proc = run_cli("distill", "--help")
    assert proc.returncode == 0 and "--steps" in proc.stdout
    assert "--safety" not in proc.stdout and "hint" not in proc.stdout and "refusal" not in proc.stdout


@pytest.mark.slow
def test_cache_logits_then_distill_from_it(tiny_model_dir, student_and_generations, tmp_path):
    student, gen = student_and_generations
    proc = run_cli("cache-logits", "--teacher-engine", "torch", "--teacher", str(tiny_model_dir), "--generations", str(gen), "--out", str(tmp_path / "c"),
                   "--k", "8")
    assert proc.returncode == 0, proc.stderr
    assert "34 bytes/token" in proc.stdout  # 8 x (2 + 2) + 2 (the tail mass)
    proc = run_cli("distill", "--teacher", str(tiny_model_dir), "--student", str(student), "--generations", str(gen),
                   "--logit-cache", str(tmp_path / "c"), "--out", str(tmp_path / "run"), "--steps", "2",
                   "--batch-size", "4", "--grad-accum", "1")
    assert proc.returncode == 0, proc.stderr
    other = tmp_path / "other.jsonl"
    other.write_text(gen.read_text().replace("Monday", "Friday"))
    proc = run_cli("distill", "--teacher", str(tiny_model_dir), "--student", str(student), "--generations", str(other),
                   "--logit-cache", str(tmp_path / "c"), "--out", str(tmp_path / "run2"), "--steps", "2")
    assert proc.returncode == 2 and "computed on other training data" in proc.stderr


def test_prune_into_an_existing_folder_is_refused_first(tiny_model_dir, tmp_path):
    (tmp_path / "s").mkdir()
    proc = run_cli("prune", "--teacher", str(tiny_model_dir), "--layers", "1", "--teacher-width", "--out", str(tmp_path / "s"),
                   "--calibration", str(tmp_path / "missing.txt"))
    # the --calibration path is checked by click first; with a real one, --out is refused before any loading
    assert proc.returncode == 2
    (tmp_path / "c.txt").write_text("text " * 100)
    proc = run_cli("prune", "--teacher", "no-such-teacher", "--layers", "1", "--teacher-width", "--out", str(tmp_path / "s"),
                   "--calibration", str(tmp_path / "c.txt"))
    assert proc.returncode == 2 and "already exists" in proc.stderr and "Traceback" not in proc.stderr
