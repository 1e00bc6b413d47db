"""LoRA for pretrained students: distill trains peft adapters by default on a pretrained student and in full on a
pruned one; the student folder holds the merged weights and the adapter alone; export writes the adapter as a GGUF
LoRA that llama.cpp applies over the base model's GGUF, and the runtime loads it over the base bundle it belongs to."""

import json

import numpy as np
import pytest
import torch

from edgedistill.distill.settings import DEFAULT_LORA_RANK
from edgedistill.distill.stage import DistillSettings, distill
from tests import tiny

RECORDS = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"Where is order NW-{i}{i}{i}? It is late."}],
            "response": f"Order NW-{i}{i}{i} ships on Monday; tracking follows by email."} for i in range(12)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(teacher folder, pretrained student folder, generations file): two tiny llama models of one tokenizer."""
    root = tmp_path_factory.mktemp("lora")
    teacher = tiny.build_model_dir(root / "teacher", layers=3, seed=1, init_std=0.2)
    student = tiny.build_model_dir(root / "student", layers=2, seed=2, init_std=0.1)
    gen = root / "gen.jsonl"
    gen.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return teacher, student, gen


@pytest.fixture(scope="module")
def distilled(models, tmp_path_factory):
    teacher, student, gen = models
    out = tmp_path_factory.mktemp("run") / "run"
    report = distill(DistillSettings(teacher=str(teacher), student=str(student), generations=[gen], validation=[gen],
                                     out=out, steps=12, batch_size=4, grad_accum=1, lr=5e-3, warmup_steps=0, kd_weight=1.0,
                                     precision="fp32", max_length=96))
    return report, out / "student"


def test_a_pretrained_student_trains_lora_and_keeps_the_adapter_and_the_merged_weights(models, distilled):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, student, _ = models
    report, folder = distilled
    assert report["lora"] == {"rank": DEFAULT_LORA_RANK, "alpha": 2.0 * DEFAULT_LORA_RANK}
    assert report["gradient_checkpointing"] is True  # on by default with LoRA
    assert 0 < report["trainable_parameters"] < 0.5 * report["parameters"]
    assert report["peak_rss_mb"] > 0
    v = report["validation"]
    assert v["mean_kl"] < v["before"]["mean_kl"], v  # the adapter moved the student towards the teacher
    config = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(student) and config["r"] == DEFAULT_LORA_RANK
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert not (folder / "adapter" / "README.md").exists()
    # the merged folder is the base with the adapter applied: the same logits as peft's base + adapter
    ids = torch.tensor([[5, 17, 33, 40, 2, 9]])
    merged = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert report["parameters"] == merged.num_parameters()  # the student as it ships, adapter merged
    base = AutoModelForCausalLM.from_pretrained(student).eval()
    with torch.no_grad():
        plain = base(ids).logits
        over = PeftModel.from_pretrained(base, folder / "adapter").eval()(ids).logits
        m = merged(ids).logits
    assert torch.allclose(m, over, atol=1e-4) and not torch.allclose(m, plain, atol=1e-2)


def test_a_pruned_student_trains_in_full_and_rank_zero_asks_for_full(models, tmp_path):
    teacher, student, gen = models
    (tmp_path / "pruned").mkdir()
    import shutil

    pruned = tmp_path / "pruned" / "s"
    shutil.copytree(student, pruned)
    (pruned / "pruning.json").write_text(json.dumps({"teacher": str(teacher)}))
    common = dict(teacher=str(teacher), generations=[gen], steps=1, batch_size=2, grad_accum=1, precision="fp32",
                  max_length=96)
    r = distill(DistillSettings(student=str(pruned), out=tmp_path / "a", **common))
    assert r["lora"] is None and r["trainable_parameters"] == r["parameters"]
    assert r["gradient_checkpointing"] is False  # off by default in full fine-tuning
    assert not (tmp_path / "a" / "student" / "adapter").exists()
    r = distill(DistillSettings(student=str(student), out=tmp_path / "b", lora_rank=0, **common))
    assert r["lora"] is None and r["trainable_parameters"] == r["parameters"]
    r = distill(DistillSettings(student=str(pruned), out=tmp_path / "c", lora_rank=4, lora_alpha=4,
                                gradient_checkpointing=False, **common))
    assert r["lora"] == {"rank": 4, "alpha": 4.0} and r["gradient_checkpointing"] is False  # as asked


@pytest.fixture(scope="module")
def exported(models, distilled, tmp_path_factory):
    """The distilled student's export (gguf:f16, gguf:q8_0, and the adapter alone: gguf-lora:f16) and the base
    student's gguf:f16 bundle (the model the adapter was trained on)."""
    from edgedistill.export.pipeline import ExportSettings, export_model

    _, student, _ = models
    root = tmp_path_factory.mktemp("exported")
    res = export_model(str(distilled[1]), root / "student", ExportSettings(
        variants=["gguf:f16", "gguf:q8_0", "gguf-lora:f16"], chunks=1, chunk_len=32))
    (base,) = export_model(str(student), root / "base", ExportSettings(variants=["gguf:f16"], chunks=1, chunk_len=32))
    return res, base.path


@pytest.mark.slow
def test_the_adapter_exports_as_a_gguf_lora_that_the_runtime_applies_over_its_base(models, exported, tmp_path):
    """Export of the distilled folder: the merged model as usual and the adapter alone (gguf-lora:f16, validated over
    the base's F16 in llama.cpp against the merged model); the base exported on its own. Base + adapter in the
    runtime gives the merged file's logits, not the base's; the adapter alone, or over another model, is refused."""
    from edgedistill.export.pipeline import ExportSettings, export_model
    from edgedistill.runtime import BundleError, load
    from edgedistill.runtime.gguf import GGUFLogits

    teacher, _, _ = models
    res, base = exported
    assert all(r.passed for r in res), [(r.key, r.error, r.metrics) for r in res]
    folder = res[0].path.parent
    adapter = folder / "gguf-lora-f16"
    manifest = json.loads((adapter / "manifest.json").read_text())
    assert manifest["format"] == "gguf-lora" and manifest["quantization"]["adapter"]["rank"] == DEFAULT_LORA_RANK
    assert manifest["model_bytes"] < 0.5 * json.loads((folder / "gguf-f16" / "manifest.json")
                                                      .read_text())["model_bytes"]

    ids = [5, 17, 33, 40, 2, 9, 11, 60]
    merged = GGUFLogits(folder / "gguf-f16" / "model.gguf", n_ctx=64)
    plain = GGUFLogits(base / "model.gguf", n_ctx=64)
    over = GGUFLogits(base / "model.gguf", n_ctx=64, adapter=adapter / "adapter.gguf")
    try:
        (m,), (p,), (o,) = merged.logits([ids]), plain.logits([ids]), over.logits([ids])
    finally:
        for r in (merged, plain, over):
            r.close()
    assert np.abs(o - m).max() < 0.05 < np.abs(p - m).max()

    with load(base, adapter=adapter) as model:
        with load(folder / "gguf-f16") as whole:
            prompt = [{"role": "user", "content": "Where is order NW-333? It is late."}]
            assert model.chat(prompt, max_tokens=12) == whole.chat(prompt, max_tokens=12)
    with pytest.raises(BundleError, match="is a LoRA adapter, not a model"):
        load(adapter)
    # serve: the base with the adapter, under the adapter's name, answers as the merged model does
    from tests.serve.test_serve import client, server

    with load(folder / "gguf-f16") as whole:
        want = whole.chat(prompt, max_tokens=8)
    with server(base, "--adapter", str(adapter), "--api-key-env", "EDGE_KEY", env={"EDGE_KEY": "k"}) as (url, _, _):
        c = client(url, "k")
        assert [m.id for m in c.models.list().data] == ["gguf-lora-f16"]
        got = c.chat.completions.create(model="gguf-lora-f16", messages=prompt, max_tokens=8, temperature=0)
        assert got.choices[0].message.content == want
    (other,) = export_model(str(teacher), tmp_path / "other", ExportSettings(variants=["gguf:f16"], chunks=1,
                                                                             chunk_len=32))
    with pytest.raises(BundleError, match="was trained on .*another model"):
        load(other.path, adapter=adapter)


@pytest.mark.slow
def test_the_bench_measures_the_base_with_the_adapter_beside_the_merged_file(exported, tmp_path):
    """bench with a (base, adapter) comparison: the row is the base with the adapter applied, its size both files
    (the adapter's apart), its fidelity to the merged student's F16 that of the merged model (the base's own is
    far off), llama-bench left out in a line (it applies no adapter), and the row left out of the device kit."""
    from edgedistill.bench import bench
    from edgedistill.bench.settings import BenchSettings
    from tests.bench.test_bench import _profile

    res, base = exported
    merged, q8, adapter = (r.path for r in res)
    settings = BenchSettings(repeats=1, new_tokens=8, prompt_tokens=32, chunks=2, chunk_len=32, eval_every=0,
                             fidelity_prompts=1, fidelity_new_tokens=12)
    report = bench([q8], _profile(tmp_path, "2GB"), tmp_path / "r", settings, teacher=merged,
                   comparison=[base, (base, adapter)], kit=tmp_path / "kit")
    rows = {r["name"]: r for r in report["variants"]}
    over = next(r for r in rows.values() if r.get("adapter"))
    plain = next(r for r in rows.values() if r["comparison"] and not r.get("adapter"))
    adapter_file = adapter / "adapter.gguf"
    assert over["adapter_bytes"] == adapter_file.stat().st_size
    assert over["model_bytes"] == plain["model_bytes"] + over["adapter_bytes"] and "+ adapter" in over["name"]
    assert over["status"] == "ok" and over["speed"]["decode_tokens_per_s"] > 0
    assert "applies no LoRA adapter" in over["llama_bench"]["note"]
    kl = lambda r: r["quality"]["general"]["mean_kl"]  # noqa: E731
    assert kl(over) < 0.01 < kl(plain), (kl(over), kl(plain))
    assert "the adapter" in (tmp_path / "r" / "bench.md").read_text()
    kit = json.loads((tmp_path / "kit" / "kit.json").read_text())
    assert {b["name"] for b in kit["bundles"]} == {n for n, r in rows.items() if not r["reference"]} - {over["name"]}
