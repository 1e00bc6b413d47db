"""bench: tiny bundles through their runtimes under a profile; the memory cap, budgets, selection, report."""

from __future__ import annotations

import json

import pytest

from edgedistill.bench import OVER_MEMORY, BenchSettings, bench, check_budgets, choose, pareto
from edgedistill.export.pipeline import ExportSettings, export_model
from edgedistill.targets import load_target
from tests import tiny
from tests.conftest import run_cli

PROFILE = """\
name: {name}
description: test box
cpu_arch: x86_64
threads: 2
memory_budget: {memory}
memory_bandwidth: 10GB/s
context_length: 1024
network: false
formats: [gguf:q8_0, onnx:fp32]
latency:
  time_to_first_token: 30s
  min_decode_tokens_per_s: 0.5
quality_floor:
  max_mean_kl: 1.0
  min_top1_agreement: 0.3
  min_eval_share: 0.0
"""


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    model = tiny.build_model_dir(root / "m", init_std=0.15, layers=3)
    export_model(str(model), root / "b", ExportSettings(variants=["gguf:f16", "gguf:q8_0", "onnx:fp32"], chunks=1,
                                                         chunk_len=32))
    return root / "b"


def _profile(tmp_path, memory: str, name: str = "testbox"):
    p = tmp_path / f"{name}.yaml"
    p.write_text(PROFILE.format(name=name, memory=memory))
    return load_target(p)


FAST = BenchSettings(repeats=2, new_tokens=8, prompt_tokens=32, chunks=2, chunk_len=32, eval_every=60)


def test_report_schema_budgets_and_choice(bundles, tmp_path):
    target = _profile(tmp_path, "2GB")
    report = bench([bundles / "gguf-q8_0", bundles / "onnx-fp32"], target, tmp_path / "r", FAST,
                   teacher=bundles / "gguf-f16")
    on_disk = json.loads((tmp_path / "r" / "bench.json").read_text())
    assert on_disk["schema_version"] == 1 and on_disk["chosen"] == report["chosen"]
    assert {"command", "machine", "target", "threads", "variants", "quality_reference"} <= set(on_disk)
    ref, *variants = on_disk["variants"]
    assert ref["reference"] and ref["quality"]["mean_kl"] == 0.0 and ref["budgets"] == {}
    for v in variants:
        assert v["status"] == "ok"
        s = v["speed"]
        for key in ("load_s", "peak_rss_bytes", "ttft_s", "prefill_tokens_per_s", "decode_tokens_per_s",
                    "token_latency_p50_s", "token_latency_p95_s", "roofline_share"):
            assert s[key] > 0, key
        assert s["new_tokens"] == 8 and s["repeats"] == 2
        assert 0 <= v["quality"]["mean_kl"] < 1 and v["quality"]["against"] == "reference"
        assert v["quality"]["eval_items"] == on_disk["eval_items"] > 0
        assert set(v["budgets"]) == {"memory", "time_to_first_token", "decode_tokens_per_s", "mean_kl",
                                     "top1_agreement", "eval_share"}
    # onnx:fp32 of the f16 reference is closer than q8_0, so it has the better quality and is chosen
    assert report["chosen"].endswith("onnx:fp32")
    md = (tmp_path / "r" / "bench.md").read_text()
    assert "**chosen**" in md and "gguf:q8_0" in md
    assert (tmp_path / "r" / "quality_vs_speed.png").stat().st_size > 1000
    assert (tmp_path / "r" / "quality_vs_memory.png").stat().st_size > 1000


def test_memory_cap_stops_an_over_budget_variant(bundles, tmp_path):
    """40 MB is less than the interpreter and runtime need: the process is killed, not left to grow."""
    target = _profile(tmp_path, "40MB", "tiny-box")
    report = bench([bundles / "onnx-fp32"], target, tmp_path / "r", FAST)
    (v,) = report["variants"]
    assert v["status"] == OVER_MEMORY and "over the 40 MB budget" in v["message"]
    assert v["speed"]["peak_rss_bytes"] > 40e6 and "decode_tokens_per_s" not in v["speed"]
    assert v["budgets"]["memory"]["pass"] is False and report["chosen"] is None
    # the CLI: exit 1 (nothing meets the budgets), the table still written, no traceback
    proc = run_cli("bench", str(bundles / "onnx-fp32"), "--target", str(tmp_path / "tiny-box.yaml"), "--out",
                   str(tmp_path / "r2"), "--eval-every", "0", "--new-tokens", "8", "--chunks", "1", "--chunk-len", "32")
    assert proc.returncode == 1 and "over memory budget" in proc.stdout and "Traceback" not in proc.stderr


def test_bad_bench_input_is_one_line(bundles, tmp_path):
    proc = run_cli("bench", str(tmp_path), "--target", "laptop")
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "no bundle here" in proc.stderr
    proc = run_cli("bench", str(bundles / "gguf-q8_0"), "--target", "no-such-profile")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def _row(name, top1, kl, tok_s, ok=True, allowed=True, reference=False):
    return {"name": name, "allowed": allowed, "reference": reference,
            "quality": {"top1_agreement": top1, "mean_kl": kl}, "speed": {"decode_tokens_per_s": tok_s},
            "budgets": {} if reference else {"memory": {"pass": ok}, "mean_kl": {"pass": True}}}


def test_selection_prefers_quality_among_variants_meeting_every_budget():
    rows = [_row("ref", 1.0, 0.0, 10, reference=True), _row("best-but-too-big", 0.99, 0.01, 90, ok=False),
            _row("good", 0.95, 0.05, 40), _row("same-top1-lower-kl", 0.95, 0.03, 30),
            _row("not-in-profile", 0.98, 0.02, 80, allowed=False), _row("fast", 0.80, 0.3, 120)]
    assert choose(rows)["name"] == "same-top1-lower-kl"
    assert choose([_row("x", 0.9, 0.1, 10, ok=False)]) is None
    assert pareto([("a", 1, 5), ("b", 2, 4), ("c", 1, 4), ("d", 3, 1)]) == {"a", "b", "d"}


def test_budget_margins(tmp_path):
    target = _profile(tmp_path, "1GB")
    row = {"speed": {"peak_rss_bytes": 750e6, "ttft_s": 1.0, "decode_tokens_per_s": 0.25},
           "quality": {"mean_kl": 0.5, "top1_agreement": 0.6, "against": "reference"}}
    b = check_budgets(row, target, graded_eval=False)
    assert b["memory"]["pass"] and b["memory"]["margin_share"] == pytest.approx(0.25)
    assert not b["decode_tokens_per_s"]["pass"] and b["decode_tokens_per_s"]["margin_share"] == pytest.approx(-0.5)
    assert "eval_share" not in b
    assert check_budgets({"speed": None, "quality": None}, target)["eval_share"]["note"] == "not measured"
    # without a teacher reference, a bundle's export-time numbers (against its own source) do not meet the floor
    own = check_budgets({**row, "quality": {**row["quality"], "against": "source model (export-time validation)"}},
                        target, graded_eval=False)
    assert not own["mean_kl"]["pass"] and "--teacher" in own["mean_kl"]["note"]


def test_bandwidth_probe_gives_a_plausible_rate():
    from edgedistill.bench import measure_bandwidth

    assert 1e8 < measure_bandwidth(16 * 2**20, repeats=2) < 1e13  # between 0.1 GB/s and 10 TB/s


def test_bench_settings_are_checked_first_in_one_line(bundles, tmp_path):
    proc = run_cli("bench", str(bundles / "gguf-q8_0"), "--target", "laptop", "--bandwidth", "fast", "--repeats", "0")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "bandwidth='fast' must be a bandwidth like 15GB/s" in proc.stderr and "repeats=0" in proc.stderr
    with pytest.raises(Exception, match="bandwidth"):
        BenchSettings(bandwidth="15 GB")
    assert BenchSettings(bandwidth="15GB/s").bandwidth == "15GB/s"
