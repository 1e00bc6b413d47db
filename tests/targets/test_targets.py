"""Every shipped profile loads; units parse; a bad file fails with every broken key named."""

from __future__ import annotations

import pytest

from edgedistill.targets import (TargetError, load_target, parse_bandwidth, parse_bytes, parse_seconds, parse_target,
                                 shipped)
from tests.conftest import run_cli

SHIPPED = sorted(shipped())


def test_the_issue_profiles_ship():
    assert {"laptop", "phone", "factory-box", "industrial-pc"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads(name):
    t = load_target(name)
    assert t.name == name  # the file name is the name users type
    assert t.threads >= 1 and t.memory_budget_bytes > 0 and t.memory_bandwidth_bytes_per_s > 0
    assert t.formats and t.latency.time_to_first_token_s > 0
    assert 0 < t.quality_floor.min_top1_agreement <= 1


def test_shipped_values_are_what_the_files_say():
    fb = load_target("factory-box")
    assert (fb.cpu_arch, fb.threads, fb.memory_budget_bytes, fb.network) == ("aarch64", 4, 1_000_000_000, False)
    assert fb.latency.time_to_first_token_s == 2.0
    assert fb.roofline_tokens_per_s(100e6) == pytest.approx(80.0)


@pytest.mark.parametrize("text,value", [("1.5GB", 1_500_000_000), ("512MiB", 512 * 2**20), ("1 gb", 10**9),
                                        (2048, 2048), ("100kb", 100_000)])
def test_sizes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text,value", [("200ms", 0.2), ("1.5s", 1.5), ("2", 2.0), (0.5, 0.5), ("1m", 60.0)])
def test_durations(text, value):
    assert parse_seconds(text) == pytest.approx(value)


def test_bandwidth():
    assert parse_bandwidth("15GB/s") == 15e9
    with pytest.raises(ValueError, match="bandwidth"):
        parse_bandwidth("15GB")


@pytest.mark.parametrize("bad", ["1.5 parsecs", "-1GB", "", "GB", True])
def test_bad_sizes(bad):
    with pytest.raises(ValueError):
        parse_bytes(bad, "memory_budget")


def _write(tmp_path, text: str):
    p = tmp_path / "mine.yaml"
    p.write_text(text)
    return p


GOOD = """name: mine
cpu_arch: arm64
threads: 4
memory_budget: 1GB
memory_bandwidth: 8GB/s
context_length: 2048
formats: [gguf:q4_k_m]
latency: {time_to_first_token: 1s, min_decode_tokens_per_s: 5}
quality_floor: {max_mean_kl: 1, min_top1_agreement: 0.5, min_answer_agreement: 0.4}
"""


def test_a_users_own_file_works_by_path(tmp_path):
    t = load_target(str(_write(tmp_path, GOOD)))
    assert t.cpu_arch == "aarch64" and t.safety_floor is None and t.network is True


def test_every_problem_is_reported_with_its_key_and_file(tmp_path):
    text = GOOD.replace("threads: 4", "threads: four").replace("1GB", "lots").replace("gguf:q4_k_m", "gguf:q3") \
        + "colour: blue\nlatency_extra: 1\n"
    text = text.replace("min_top1_agreement: 0.5", "min_top1_agreement: 1.5")
    p = _write(tmp_path, text)
    with pytest.raises(TargetError) as e:
        parse_target(p)
    msg = str(e.value)
    for part in (str(p), "threads", "memory_budget", "formats", "q3", "colour", "latency_extra",
                 "quality_floor.min_top1_agreement"):
        assert part in msg, part


def test_missing_keys_and_section_keys(tmp_path):
    p = _write(tmp_path, GOOD.replace("context_length: 2048\n", "").replace("min_answer_agreement: 0.4", "eval: 0.4"))
    with pytest.raises(TargetError) as e:
        parse_target(p)
    assert "missing key 'context_length'" in str(e.value)
    assert "quality_floor.min_answer_agreement: missing" in str(e.value)
    assert "quality_floor.eval: unknown key" in str(e.value)


def test_objective_general_floor_and_the_renamed_eval_share(tmp_path):
    t = load_target(str(_write(tmp_path, GOOD)))
    assert t.objective == "fastest" and t.quality_floor.general_max_mean_kl is None
    text = GOOD.replace("min_answer_agreement: 0.4}", "min_answer_agreement: 0.4, general_max_mean_kl: 2}")
    t = load_target(str(_write(tmp_path, text + "objective: closest\n")))
    assert t.objective == "closest" and t.quality_floor.general_max_mean_kl == 2
    with pytest.raises(TargetError, match="objective: 'cheapest' is not one of fastest, closest"):
        parse_target(_write(tmp_path, GOOD + "objective: cheapest\n"))
    with pytest.raises(TargetError, match="min_eval_share: replaced by min_answer_agreement"):
        parse_target(_write(tmp_path, GOOD.replace("min_answer_agreement", "min_eval_share")))


def test_unknown_name_and_broken_yaml(tmp_path):
    with pytest.raises(TargetError, match="laptop"):
        load_target("toaster")
    with pytest.raises(TargetError, match="YAML"):
        parse_target(_write(tmp_path, "name: [unclosed"))


def test_cli(tmp_path):
    proc = run_cli("targets", "list")
    assert proc.returncode == 0 and "factory-box" in proc.stdout
    proc = run_cli("targets", "show", "laptop", "--json")
    assert proc.returncode == 0 and '"threads": 8' in proc.stdout
    bad = _write(tmp_path, GOOD.replace("threads: 4", "threads: 0"))
    proc = run_cli("targets", "validate", "targets/laptop.yaml", str(bad))
    assert proc.returncode == 2
    assert "ok      targets/laptop.yaml" in proc.stdout and "threads" in proc.stderr
