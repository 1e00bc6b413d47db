"""Launchers: the shipped accelerate configs load, a launch that does not fit the machine is refused in one line,
FSDP's settings reach transformers, and 2 CPU processes (torchrun, gloo) training from a sharded, memory-mapped
cache with the chunked loss match 1 process, and a 2-process job resumes from its checkpoint."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgedistill.distill import train as tr
from edgedistill.errors import EdgeDistillError
from tests import tiny

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "examples" / "accelerate").glob("*.yaml"))


def test_the_shipped_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    assert {c.name for c in CONFIGS} >= {"one-gpu.yaml", "ddp-8gpu.yaml", "fsdp-8gpu.yaml", "fsdp-2node.yaml"}
    for path in CONFIGS:
        cfg = load_config_from_file(str(path))
        assert cfg.num_processes % cfg.num_machines == 0, path.name
        if cfg.distributed_type.value == "FSDP":
            assert cfg.fsdp_config["fsdp_version"] == 2, path.name


def test_a_launch_that_does_not_fit_is_refused(monkeypatch):
    tr.check_launch({})  # one process: nothing to check
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(EdgeDistillError, match="started 8 processes on this node but it has 2 GPU"):
        tr.check_launch({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "8"})
    tr.check_launch({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"})  # 2 nodes x 2 GPUs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EdgeDistillError, match="asks for FSDP but this machine has no GPU"):
        tr.check_launch({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true"})
    tr.check_launch({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})  # DDP on CPU processes is fine


def test_fsdp_is_refused_on_cpu_and_reaches_transformers_where_asked(tmp_path, monkeypatch):
    from transformers import TrainingArguments

    from edgedistill.models import load_model

    with pytest.raises(EdgeDistillError, match="--fsdp needs GPUs"):
        tr.TrainSettings(fsdp="full_shard auto_wrap", precision="fp32", kd_chunk=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = tr.TrainSettings(fsdp="full_shard auto_wrap", precision="fp32", kd_chunk=0)
    student, _ = load_model(str(tiny.build_model_dir(tmp_path / "s", layers=1)))
    extra = tr._fsdp_args(cfg, student)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to=[], **extra)
    assert args.fsdp_plugin_args["fsdp_version"] == 2
    assert args.fsdp_plugin_args["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer"
    assert args.fsdp_plugin_args["reshard_after_forward"] is True


@pytest.mark.slow
def test_two_processes_from_a_sharded_cache_with_chunks_match_one(tmp_path):
    from edgedistill.distill import logit_cache
    from edgedistill.distill.dataset import encode
    from edgedistill.engines.local import score_rows
    from edgedistill.models import load_model
    from tests.distill.ddp_job import records

    t_dir = tiny.build_model_dir(tmp_path / "t", layers=2, hidden=64, seed=1, init_std=0.2)
    s_dir = tiny.build_model_dir(tmp_path / "s", layers=1, hidden=64, seed=2, init_std=0.2)
    teacher = load_model(str(t_dir))
    data = encode(teacher[1], records(), 96)
    meta = logit_cache.build(score_rows(teacher[0], teacher[1], data.examples, 16), "tiny", "fp", data,
                             tmp_path / "cache", k=16, vocab=teacher[0].config.vocab_size, shard_tokens=40)
    assert len(meta["shards"]) >= 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    job = str(REPO / "tests" / "distill" / "ddp_job.py")
    runs = {}
    for name, launcher, per_device in (("one", [], "4"),
                                       ("two", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
                                        "2")):
        out = tmp_path / name / "w.safetensors"
        out.parent.mkdir()
        p = subprocess.run([sys.executable, *launcher, job, str(t_dir), str(s_dir), str(out), per_device,
                            str(tmp_path / "cache"), "8"], env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        runs[name] = (json.loads(out.with_name("job.json").read_text()),
                      [json.loads(x) for x in (out.parent / "run" / "metrics.jsonl").read_text().splitlines()
                       if '"loss"' in x])
    assert runs["one"][0] == {"world_size": 1, "fsdp": False, "chunked": True}
    assert runs["two"][0] == {"world_size": 2, "fsdp": False, "chunked": True}
    assert len(runs["one"][1]) == len(runs["two"][1]) == 3
    for x, y in zip(runs["one"][1], runs["two"][1]):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)


@pytest.mark.slow
def test_a_two_process_run_resumes_from_its_checkpoint_under_the_same_launcher(tmp_path):
    """A 2-process torchrun job checkpointed every step, cut after step 2 (its last checkpoint removed), and resumed
    under the same launcher ends with the weights of the uninterrupted job: optimizer, schedule and data order come
    back from the checkpoint on every rank."""
    from safetensors.torch import load_file

    t_dir = tiny.build_model_dir(tmp_path / "t", layers=2, hidden=64, seed=1, init_std=0.2)
    s_dir = tiny.build_model_dir(tmp_path / "s", layers=1, hidden=64, seed=2, init_std=0.2)
    job = str(REPO / "tests" / "distill" / "ddp_job.py")
    out = tmp_path / "job" / "w.safetensors"
    out.parent.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "JOB_SAVE_STEPS": "1"}

    def launch(**extra):
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            job, str(t_dir), str(s_dir), str(out), "2"], env={**env, **extra}, capture_output=True,
                           text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        return load_file(str(out))

    whole = launch()
    ckpt = tmp_path / "job" / "run" / "checkpoints"
    assert {"checkpoint-2", "checkpoint-3"} <= {p.name for p in ckpt.glob("checkpoint-*")}
    shutil.rmtree(ckpt / "checkpoint-3")
    out.unlink()
    resumed = launch(JOB_RESUME="1")
    changed = load_file(str(s_dir / "model.safetensors"))
    assert any(not torch.equal(changed[k], whole[k]) for k in whole if k in changed)  # training moved the weights
    for k in whole:
        torch.testing.assert_close(resumed[k], whole[k], rtol=1e-5, atol=1e-6)
