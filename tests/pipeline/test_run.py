"""run: the whole trip on a tiny teacher under a test profile; stages reused when their inputs are unchanged."""

from __future__ import annotations

import pytest
import json

from edgedistill.pipeline import RunSettings, run_pipeline
from edgedistill.runtime import load as load_bundle
from edgedistill.settings import load
from tests import tiny

PROFILE = """\
name: tinybox
description: test box
cpu_arch: x86_64
threads: 2
memory_budget: 2GB
memory_bandwidth: 10GB/s
context_length: 1024
network: false
formats: [gguf:q8_0, onnx:int8]
latency:
  time_to_first_token: 30s
  min_decode_tokens_per_s: 0.5
quality_floor:
  max_mean_kl: 50
  min_top1_agreement: 0.0
  min_answer_agreement: 0.0
safety_floor:
  min_refusal_rate: 0.9
  max_over_refusal: 0.1
"""


def _no_local_path_in_shipped_files(out, teacher) -> None:
    """Every file a run makes to leave the machine (each bundle: the folders with a manifest.json, and the device
    kit) names no folder of this machine: not the home, the run folder, the cache or the teacher's folder."""
    import os
    from pathlib import Path

    shipped = {b.parent for b in out.rglob("manifest.json")} | {out / "bench" / "device-kit"}
    files = [f for d in shipped for f in d.rglob("*") if f.is_file()]
    assert len(shipped) >= 5 and any(f.suffix == ".gguf" for f in files) and any(f.suffix == ".onnx" for f in files)
    needles = {str(Path.home()), str(out), os.environ["EDGEDISTILL_HOME"], str(teacher)}
    found = [(str(f.relative_to(out)), n) for f in files for n in needles if n.encode() in f.read_bytes()]
    assert not found, found


@pytest.mark.slow
def test_run_chooses_a_variant_and_reuses_unchanged_stages(tmp_path):
    teacher = tiny.build_model_dir(tmp_path / "teacher", init_std=0.15, layers=3)
    profile = tmp_path / "tinybox.yaml"
    profile.write_text(PROFILE)
    out = tmp_path / "run"
    settings = RunSettings(target=str(profile), out=out, teacher=str(teacher), train_prompts=2, val_prompts=1, max_new_tokens=16, layers=2,
                           hw_friendly=False, steps=2, batch_size=2, grad_accum=1, repeats=1,
                           new_tokens=8, eval_every=60, fidelity_prompts=1)
    first = run_pipeline(settings, echo=lambda m: None)
    assert first["chosen"] is not None
    assert all(not s["reused"] for s in first["stages"].values())
    assert list(first["stages"]) == ["generate", "cache", "prune", "distill", "export-teacher", "export", "bench",
                                     "safety"]
    assert first["stages"]["cache"]["info"]["k"] == 64  # the student learnt from the teacher's cached top-64
    # a random tiny student refuses nothing: marked not deployable, with the margin, in run.json and the manifest
    assert first["safety"]["deployable"] is False and first["safety"]["checks"]["refusal_rate"]["margin"] < 0
    manifest = json.loads((out / "final" / first["chosen"]["bundle"].split("/")[-1] / "manifest.json").read_text())
    assert manifest["deployment"]["deployable"] is False and manifest["deployment"]["target"] == "tinybox"
    with load_bundle(first["chosen"]["bundle"]) as m:  # the final bundle is a complete, loadable bundle
        assert isinstance(m.generate("Hello", max_tokens=3), str)
    _no_local_path_in_shipped_files(out, teacher)
    report = json.loads((out / "bench" / "bench.json").read_text())
    # the teacher's f16 reference first, then the candidates: the student's and the teacher's own variants
    assert report["variants"][0]["reference"] and not any(r["comparison"] for r in report["variants"])
    cands = {(r["teacher_variant"], r["key"]) for r in report["variants"][1:]}
    assert cands == {(t, k) for t in (True, False) for k in ("gguf:q8_0", "onnx:int8")}
    assert report["variants"][1]["quality"]["in_domain"]["overall"]["units"] == 3  # one test prompt per domain
    assert first["verdict"] == report["verdict"] and first["verdict"][0].startswith("tinybox: chosen")
    # the profile's device kit beside the report: every candidate, the reference's top-k
    from edgedistill.bench.kit import open_kit

    kit, _ = open_kit(first["device_kit"])
    assert first["device_kit"] == str(out / "bench" / "device-kit") and kit["profile"] == "tinybox"
    assert {b["name"] for b in kit["bundles"]} == {r["name"] for r in report["variants"][1:]} and kit["top_k"] == 512
    # the floors here (KL 50, top-1 0) let every tiny variant pass, so that the trip reaches a choice; that the
    # quality floor takes part in the choice is shown on the same rows: a KL floor just under the chosen variant's
    # mean KL rules it out
    from edgedistill.bench import Row, check_budgets, choose
    from edgedistill.targets import load_target

    rows = [Row.from_dict(r) for r in report["variants"]]
    picked = next(r for r in rows if r.name == report["chosen"])
    kl = picked.quality["in_domain"]["overall"]["mean_kl"]
    assert kl < 50 and check_budgets(picked, load_target(profile))["in_domain_mean_kl"].passed
    profile.write_text(PROFILE.replace("max_mean_kl: 50", f"max_mean_kl: {kl * 0.999:.6g}"))
    tight = load_target(profile)
    for r in rows:
        graded = "answer_agreement" in r.budgets
        r.budgets = {} if r.reference else check_budgets(r, tight, graded_eval=graded)
    again_chosen = choose(rows, tight.objective)
    assert again_chosen is None or again_chosen.name != picked.name
    profile.write_text(PROFILE)
    assert json.loads((out / "run.json").read_text())["chosen"] == first["chosen"]

    again = run_pipeline(settings, echo=lambda m: None)
    assert all(s["reused"] for s in again["stages"].values())
    assert again["chosen"]["name"] == first["chosen"]["name"]

    # the run's settings.yaml says how it was made: loaded back, it is the same settings
    assert load(RunSettings, out / "settings.yaml") == settings
    changed = run_pipeline(settings.replace(steps=3), echo=lambda m: None)
    reused = {k: s["reused"] for k, s in changed["stages"].items()}
    assert reused == {"generate": True, "cache": True, "prune": True, "distill": False, "export-teacher": True, "export": False,
                      "bench": False, "safety": False}
    assert changed["student"]["steps"] == 3

    # another model put at the teacher's path: the run folder, made with the first one, is refused untouched
    import shutil

    import pytest

    from edgedistill.errors import EdgeDistillError

    shutil.rmtree(teacher)
    tiny.build_model_dir(teacher, init_std=0.15, layers=3, seed=1)
    stamp = (out / "distill" / "stage.json").read_text()
    with pytest.raises(EdgeDistillError, match=r"made with teacher .*fingerprint [0-9a-f]{16}.*fingerprint [0-9a-f]{16}"):
        run_pipeline(settings, echo=lambda m: None)
    assert (out / "distill" / "stage.json").read_text() == stamp


@pytest.mark.slow
def test_run_skips_a_variant_the_teachers_family_cannot_be_exported_to(tmp_path, monkeypatch):
    """A family the ONNX builder does not write: the profile's ONNX variant is skipped with its reason (echoed and
    in run.json), and the run goes on with the rest instead of aborting at export."""
    from edgedistill.formats import onnx

    monkeypatch.setattr(onnx, "SUPPORTED_ARCHS", tuple(a for a in onnx.SUPPORTED_ARCHS if a != "llama"))
    teacher = tiny.build_model_dir(tmp_path / "teacher", init_std=0.15, layers=3)
    profile = tmp_path / "tinybox.yaml"
    profile.write_text(PROFILE.split("safety_floor:")[0])
    said = []
    summary = run_pipeline(RunSettings(target=str(profile), out=tmp_path / "run", teacher=str(teacher), train_prompts=2,
                                       val_prompts=1, max_new_tokens=8, layers=2, hw_friendly=False, steps=1,
                                       batch_size=2, grad_accum=1, repeats=1, new_tokens=8, eval_every=0,
                                       fidelity_prompts=1), echo=said.append)
    assert list(summary["skipped_variants"]) == ["onnx:int8"]
    assert "ONNX export supports" in summary["skipped_variants"]["onnx:int8"]
    assert any(m.strip().startswith("skipping onnx:int8: ONNX export supports") for m in said)
    report = json.loads((tmp_path / "run" / "bench" / "bench.json").read_text())
    assert {r["key"] for r in report["variants"][1:]} == {"gguf:q8_0"}
    assert json.loads((tmp_path / "run" / "run.json").read_text())["skipped_variants"] == summary["skipped_variants"]


def _another(f, value, settings, files=None):
    """A valid value of RunSettings field `f` other than `value` (`files`: values for the fields that name files)."""
    import typing

    from edgedistill.settings import _base, _hints

    special = {"teacher_engine": "torch", "loss": "jsd", "beta": 0.3, "alpha": 0.2, "reference": "onnx:fp32",
               "teacher_model": "m", "tokenizer": str(settings.teacher), "teacher_extra_body": '{"x": 1}',
               "data_dir": None, "attention": "eager", "prompt_column": "question", "max_kit_size": "500MB",
               **(files or {})}
    if f.name in special:
        return special[f.name]
    choices = f.metadata.get("choices")
    if choices and not callable(choices):
        return next(c for c in choices if c != value)
    tp = _base(_hints(RunSettings)[f.name])
    if tp is bool:
        return not value
    if tp is int:
        return (value or 1) + 1
    if tp is float:
        return (value or 1.0) * 0.5
    raise AssertionError(f"no other value for {f.name} ({typing.get_type_hints(RunSettings)[f.name]})")


def test_every_run_setting_reruns_its_stage_and_those_after_it(tmp_path):
    """Stage keys are derived from each stage's resolved settings: every RunSettings field that can change what a
    stage makes changes that stage's key, and then exactly the stages that read it (pipeline.READS) change too."""
    import dataclasses

    from edgedistill.pipeline import READS, plan_run

    teacher = tiny.build_model_dir(tmp_path / "teacher", init_std=0.15, layers=3)
    profile = tmp_path / "tinybox.yaml"
    profile.write_text(PROFILE)
    data = tmp_path / "data"
    import shutil

    from edgedistill.data import default_data_dir

    shutil.copytree(default_data_dir(), data)
    base = RunSettings(target=str(profile), out=tmp_path / "run", teacher=str(teacher), train_prompts=2,
                       val_prompts=1, data_dir=data)
    keys = plan_run(base).keys
    student = tiny.build_model_dir(tmp_path / "student", init_std=0.15, layers=2)  # pretrained, the same tokenizer
    table = tmp_path / "prompts.csv"
    table.write_text("prompt,question\n" + "".join(f"Prompt {i}?,Question {i}?\n" for i in range(100)))
    logs = tmp_path / "logs.jsonl"
    logs.write_text("".join(json.dumps({"id": f"c{i}", "messages": [{"role": "user", "content": f"Q{i}?"},
                                                                      {"role": "assistant", "content": f"A{i}."}]})
                            + "\n" for i in range(100)))
    files = {"student": str(student), "prompts": [table], "conversations": [logs]}

    def after(stage: str) -> set[str]:
        later = {stage}
        for name, reads in READS.items():
            if later & set(reads):
                later |= after(name)
        return later

    # a field that is valid only beside others: those others set in both plans, so only the field differs
    served = {"teacher_engine": "openai", "teacher_url": "http://127.0.0.1:9/v1", "teacher_model": "m",
              "student": str(student)}
    companions = {"beta": {"loss": "jsd"}, "alpha": {"loss": "skew_kl"},
                  **{k: served for k in ("teacher_model", "teacher_api", "teacher_extra_body", "tokenizer",
                                         "sequence_level_fallback", "objective")},
                  **{k: {"prompts": [table]} for k in ("prompt_column", "held_out_share")}}
    untested = []
    for f in dataclasses.fields(RunSettings):
        if f.name in ("target", "teacher"):  # the profile and the teacher: checked below, and by _claim
            continue
        if f.name == "fsdp":  # refused without GPUs (tests/distill/test_launch.py); a str field like attention
            continue
        if not f.metadata.get("key", True):
            continue
        ref = dict(companions.get(f.name, {}))
        if f.name == "teacher_model":
            ref["teacher_model"] = "n"
        other = plan_run(base.replace(**{**ref, f.name: _another(f, getattr(base, f.name), base, files)})).keys
        keys_ref = plan_run(base.replace(**ref)).keys if ref else keys
        changed = {s for s in READS if keys_ref.get(s) != other.get(s)}
        if not changed:
            untested.append(f.name)
            continue
        first = [s for s in READS if s in changed and not (set(READS[s]) & changed)]
        present = set(keys_ref) | set(other)  # no cache stage with the openai engine or --live-teacher
        assert changed == set().union(*(after(s) for s in first)) & present, (f.name, changed)
    assert not untested, f"these settings reach no stage key: {untested}"
    # the data and the profile key what reads them
    (data / "support" / "prompts" / "train.jsonl").write_text(
        '{"id": "new", "prompt": "A new question?"}\n' + (data / "support" / "prompts" / "train.jsonl").read_text())
    assert plan_run(base).keys["generate"] != keys["generate"]
    profile.write_text(PROFILE.replace("min_decode_tokens_per_s: 0.5", "min_decode_tokens_per_s: 0.7"))
    moved = plan_run(base).keys
    assert {s for s in keys if moved[s] != keys[s]} == {"generate", "cache", "distill", "export", "bench"}


def test_a_run_folder_of_another_record_shape_reruns_every_stage(tmp_path, monkeypatch):
    """stage.json's shape is part of every key: after a change of what it records, an old run folder's stages are
    run again rather than read as records of another shape."""
    import edgedistill.pipeline as pipeline

    teacher = tiny.build_model_dir(tmp_path / "teacher", init_std=0.15, layers=3)
    profile = tmp_path / "tinybox.yaml"
    profile.write_text(PROFILE)
    base = RunSettings(target=str(profile), out=tmp_path / "run", teacher=str(teacher), train_prompts=2,
                       val_prompts=1)
    keys = pipeline.plan_run(base).keys
    monkeypatch.setattr(pipeline, "STAGE_RECORD", pipeline.STAGE_RECORD - 1)
    old = pipeline.plan_run(base).keys
    assert set(keys) == set(old) and all(keys[s] != old[s] for s in keys)
