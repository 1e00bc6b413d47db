"""--precision, --gradient-checkpointing and --kd-chunk: what each device accepts, refused in one line before any
work, and the training paths each one takes."""

import json

import pytest
import torch

from edgedistill.distill import train as tr
from edgedistill.distill.dataset import encode
from edgedistill.distill.settings import LossSettings
from edgedistill.errors import EdgeDistillError
from edgedistill.models import load_model
from tests import tiny

RECORDS = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"Alarm E{i} on line {i}?"}],
            "response": f"Stop line {i}, check the guard, then clear alarm E{i}."} for i in range(6)]


def test_what_each_device_accepts(monkeypatch):
    assert tr.resolve_precision("fp32", "cpu")[0] == "fp32"
    with pytest.raises(EdgeDistillError, match="fp16 needs a CUDA GPU"):
        tr.resolve_precision("fp16", "cpu")
    monkeypatch.setattr(tr, "_cpu_has_native_bf16", lambda: False)
    with pytest.raises(EdgeDistillError, match="this CPU has no native bf16"):
        tr.resolve_precision("bf16", "cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert tr.resolve_precision("auto", "cuda")[0] == "fp32"
    assert tr.resolve_precision("fp16", "cuda")[0] == "fp16"
    with pytest.raises(EdgeDistillError, match="this GPU has no bf16"):
        tr.resolve_precision("bf16", "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert tr.resolve_precision("auto", "cuda")[0] == "bf16"


@pytest.mark.parametrize("native, speedup, chosen, why", [
    (True, 12.9, "bf16", "measured 12.9x fp32's speed"),  # AMX: the probe reads 6x to 12x
    (True, 1.3, "fp32", "measured 1.30x fp32's speed"),  # AVX512-BF16 without AMX: not worth the rounding
    (False, 0.01, "fp32", "no native bf16"),  # AMD EPYC (AVX2): bf16 is emulated in software
])
def test_auto_on_a_cpu_takes_bf16_only_where_the_probe_measures_it_faster(monkeypatch, native, speedup, chosen, why):
    monkeypatch.setattr(tr, "_cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(tr, "cpu_bf16_speedup", lambda: speedup)
    got, reason = tr.resolve_precision("auto", "cpu")
    assert got == chosen and why in reason


def test_the_probe_measures_this_cpu():
    """The probe's ratio is a real measurement: about 13x where the CPU has AMX, well under 2x where bf16 is
    emulated (AVX512-BF16 alone may land either side: no claim there)."""
    ratio = tr.cpu_bf16_speedup()
    assert ratio > 0
    flags = open("/proc/cpuinfo").read()
    if "amx_tile" in flags:
        assert ratio >= tr.BF16_MIN_SPEEDUP, f"bf16/fp32 speed ratio {ratio:.2f} on a CPU with AMX"
    elif "avx512_bf16" not in flags:  # bf16 emulated in software
        assert ratio < tr.BF16_MIN_SPEEDUP, f"bf16/fp32 speed ratio {ratio:.2f} on a CPU without native bf16"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    t_dir = tiny.build_model_dir(root / "t", layers=2, hidden=64, seed=1, init_std=0.2)
    s_dir = tiny.build_model_dir(root / "s", layers=1, hidden=64, seed=2, init_std=0.2)
    gen = root / "gen.jsonl"
    gen.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return root, t_dir, s_dir, gen


@pytest.mark.parametrize("flags, message", [
    ({"precision": "fp16"}, "fp16 needs a CUDA GPU"),
    ({"kd_chunk": 999, "max_length": 64, "batch_size": 2}, r"--kd-chunk 999 exceeds a micro-batch's 2 x 64"),
])
def test_bad_settings_stop_before_any_work(setup, tmp_path, flags, message):
    """Each refused in one line before a model loads, nothing written; the default chunk fits any batch."""
    from edgedistill.distill.stage import DistillSettings, distill

    _, t_dir, s_dir, gen = setup
    with pytest.raises(EdgeDistillError, match=message):
        distill(DistillSettings(teacher=str(t_dir), student=str(s_dir), generations=[gen], out=tmp_path / "run",
                                steps=1, **flags))
    assert not (tmp_path / "run").exists()
    assert DistillSettings(student="s", generations=[gen], out=tmp_path, batch_size=1, max_length=64).chunk == 64


def _losses(setup, out, **cfg):
    root, t_dir, s_dir, _ = setup
    teacher = load_model(str(t_dir))
    data = encode(teacher[1], RECORDS, 64)
    base = dict(steps=3, batch_size=3, grad_accum=1, lr=3e-3, warmup_steps=0, logging_steps=1,
                save_steps=100, max_length=64, precision="fp32", kd_chunk=0)
    student, trainer = tr.train(teacher, load_model(str(s_dir)), data.examples, out, LossSettings(kd_weight=0.5),
                                tr.TrainSettings(**{**base, **cfg}))
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x], trainer


def test_gradient_checkpointing_gives_the_same_losses(setup, tmp_path):
    plain, _ = _losses(setup, tmp_path / "plain")
    ckpt, trainer = _losses(setup, tmp_path / "ckpt", gradient_checkpointing=True)
    assert trainer.model.is_gradient_checkpointing
    assert ckpt == pytest.approx(plain, rel=1e-5)


def test_the_bf16_path_runs_the_teacher_in_bf16(setup, tmp_path, monkeypatch):
    """On a CPU with native bf16 the path is allowed; here it is forced to run (emulated, slowly, on a tiny
    model) to prove the autocast and the teacher's dtype, with losses near fp32's."""
    monkeypatch.setattr(tr, "_cpu_has_native_bf16", lambda: True)
    assert tr.resolve_precision("bf16", "cpu")[0] == "bf16"
    plain, _ = _losses(setup, tmp_path / "fp32")
    half, trainer = _losses(setup, tmp_path / "bf16", precision="bf16", kd_chunk=16)
    assert trainer.args.bf16 and trainer.teacher.dtype == torch.bfloat16
    assert next(trainer.model.parameters()).dtype == torch.float32  # master weights stay float32
    assert half == pytest.approx(plain, rel=0.05)
