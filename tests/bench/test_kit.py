"""Device kits: made by bench, run by a runtime-only environment in another folder (the device), merged back."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess

import numpy as np
import pytest

from edgedistill.bench import bench, choose
from edgedistill.bench.kit import KitError, merge_kit, open_kit
from edgedistill.bench.rows import Row
from edgedistill.runtime.logits import log_softmax, sequence_stats, top_k_reference, top_k_stats
from tests.bench.test_bench import FAST, PROFILE
from tests.conftest import run_cli


def test_top_k_stats_match_the_full_reference_where_k_is_the_vocabulary_and_bound_it_below():
    """Against its own top-k the measure is the full one when k covers the vocabulary; with a smaller k the KL
    over k + 1 bins is at most the full KL and top-1 agreement and both NLLs are exact."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(30, 50)) * 3
    cand = ref + rng.normal(size=(30, 50))
    targets = rng.integers(0, 50, 30)
    full = sequence_stats(log_softmax(ref).astype(np.float32), cand, targets)
    whole = top_k_stats(top_k_reference(log_softmax(ref), targets, 50), cand, targets)
    assert whole["kl"] == pytest.approx(full["kl"], rel=1e-5)
    previous = 0.0
    for k in (1, 4, 16):
        part = top_k_stats(top_k_reference(log_softmax(ref), targets, k), cand, targets)
        assert previous - 1e-9 <= part["kl"] <= full["kl"] + 1e-9
        previous = part["kl"]
        assert part["agree"] == full["agree"] and part["n"] == full["n"] == 30
        assert part["nll"] == pytest.approx(full["nll"]) and part["nll_ref"] == pytest.approx(full["nll_ref"], rel=1e-6)


def _device_profile(tmp_path):
    """The device's profile: one thread where the build machine was benched with two."""
    p = tmp_path / "onecore.yaml"
    p.write_text(PROFILE.format(name="onecore", memory="2GB").replace("threads: 2", "threads: 1")
                 + "objective: fastest\n")
    from edgedistill.targets import load_target

    return load_target(p)


@pytest.mark.slow
def test_a_kit_runs_in_a_runtime_only_environment_and_the_choice_follows_the_device(tiny_bundles, tmp_path,
                                                                                    monkeypatch):
    from tests.conftest import USER_HOME

    # the llama-cpp-python wheel `make` built, in the user's cache (not compiled again here)
    if USER_HOME:
        monkeypatch.setenv("EDGEDISTILL_HOME", USER_HOME)
    else:
        monkeypatch.delenv("EDGEDISTILL_HOME")
    bundles = tiny_bundles[1]
    target = _device_profile(tmp_path)
    kit = tmp_path / "kit"
    build = bench([bundles / "gguf-q8_0", bundles / "onnx-fp32"], target, tmp_path / "build",
                  dataclasses.replace(FAST, threads=2, kit_top_k=8, kit_offline=True), teacher=bundles / "gguf-f16",
                  kit=kit)
    assert build["threads"] == 2 and "top 8" in build["fidelity"]["kit_reference_form"]
    data, kit_id = open_kit(kit)
    assert {b["name"] for b in data["bundles"]} == {v["name"] for v in build["variants"] if not v["reference"]}
    assert (kit / "reference.npz").is_file() and (kit / "profile.yaml").is_file() and "kit run" in (
        kit / "RUN.txt").read_text()

    # the device: another folder, the kit alone (its bundles copied in), a fresh runtime-only venv installed from
    # the kit's install/ folder as its RUN.txt says, with no checkout and no network (pip --no-index)
    run_txt = (kit / "RUN.txt").read_text()
    assert "--no-index --find-links install/wheels" in run_txt and "edgedistill[runtime]" not in run_txt
    assert "llama" not in (kit / "install" / "requirements.txt").read_text()  # its own build, in install/wheels
    device = tmp_path / "device"
    shutil.copytree(kit, device / "kit")
    monkeypatch.setenv("EDGEDISTILL_HOME", str(device / "home"))  # the device has no cache of this machine's
    from edgedistill import runtime_venv as rv

    runtime_venv = rv.make(device / "venv", install=device / "kit" / "install")
    done = subprocess.run([str(runtime_venv / "edgedistill"), "kit", "run", "kit", "--out", "results.json"],
                          cwd=device, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((device / "results.json").read_text())
    assert results["kit_id"] == kit_id and results["complete"] and results["threads"] == 1
    assert "onnxruntime" in results["runtimes"] and "llama-cpp-python" in results["runtimes"]
    assert results["machine"]["cpu"] and results["machine"]["ram_bytes"] > 0
    assert set(results["bundles"]) == {b["name"] for b in data["bundles"]}
    # constrained output in the runtime-only environment, on both backends: a label, and a tool call
    probe = ("import json, sys\nfrom edgedistill.runtime import load\n"
             "tools = [{'type': 'function', 'function': {'name': 'refund', 'parameters': {'type': 'object', "
             "'properties': {'reason': {'enum': ['late', 'damaged']}}, 'required': ['reason']}}}]\n"
             "ask = [{'role': 'user', 'content': 'Refund my order'}]\n"
             "for folder in sys.argv[1:]:\n"
             "    with load(folder) as m:\n"
             "        label = m.chat(ask, response_format={'type': 'choice', 'choices': ['billing', 'shipping']})\n"
             "        call = m.respond(ask, tools=tools, tool_choice='required', max_tokens=200).tool_calls[0]\n"
             "        print(json.dumps([label, call['function']['name'], json.loads(call['function']['arguments'])]))\n")
    folders = [f"kit/{b['folder']}" for b in data["bundles"]]
    shown = subprocess.run([str(runtime_venv / "python"), "-c", probe, *folders], cwd=device, capture_output=True,
                           text=True)
    assert shown.returncode == 0, shown.stderr[-2000:]
    answers = [json.loads(line) for line in shown.stdout.splitlines()]
    assert len(answers) == len(folders) and all(a[0] in ("billing", "shipping") and a[1] == "refund" and
                                                a[2]["reason"] in ("late", "damaged") for a in answers), answers

    # resumes: a bundle dropped from the results (as if stopped before it) is the only one measured again
    dropped = sorted(results["bundles"])[0]
    kept = {k: v for k, v in results["bundles"].items() if k != dropped}
    (device / "partial.json").write_text(json.dumps({**results, "bundles": kept, "complete": False}))
    again = subprocess.run([str(runtime_venv / "edgedistill"), "kit", "run", "kit", "--out", "partial.json"],
                           cwd=device, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = json.loads((device / "partial.json").read_text())
    assert resumed["complete"] and set(resumed["bundles"]) == set(results["bundles"])
    assert all(resumed["bundles"][k] == v for k, v in kept.items())
    # ... on the machine that began it only
    (device / "elsewhere.json").write_text(json.dumps({**resumed, "machine": {**resumed["machine"], "cpu": "other"}}))
    moved = subprocess.run([str(runtime_venv / "edgedistill"), "kit", "run", "kit", "--out", "elsewhere.json"],
                           cwd=device, capture_output=True, text=True)
    assert moved.returncode == 2 and "another machine" in moved.stderr

    merged = merge_kit(kit, [device / "results.json"], tmp_path / "merged")
    assert merged["threads"] == 1 and merged["build_threads"] == 2 and merged["kit"]["id"] == kit_id
    rows = [Row.from_dict(v) for v in merged["variants"]]
    for r in rows:
        if r.reference:
            continue
        raw = results["bundles"][r.name]["speed"]["result"]
        assert r.measured_on == "device" and r.build["speed"]["decode_tokens_per_s"] > 0
        assert r.speed["decode_tokens_per_s"] == raw["decode_tokens_per_s"]  # the device's figure, not the build's
        assert r.speed["decode_tokens_per_s"] != r.build["speed"]["decode_tokens_per_s"]
        # the same fidelity measure on both machines (the reference's top-8): the same kernels, nearly equal; below
        # the full KL of the build machine's own report
        dev, bld = r.quality["in_domain"]["overall"], r.build["quality"]["top_k"]["in_domain"]["overall"]
        assert bld["mean_kl"] <= r.build["quality"]["in_domain"]["overall"]["mean_kl"] + 1e-9
        assert dev["positions"] == bld["positions"] > 0
        assert dev["mean_kl"] == pytest.approx(bld["mean_kl"], abs=0.02)
        assert abs(dev["top1_agreement"] - bld["top1_agreement"]) <= 0.05
        assert r.runtime and (r.llama_bench is None or "note" in r.llama_bench)  # llama-bench is not on the device
    # the choice is the profile's objective on the device's figures
    expected = choose(rows, "fastest")
    assert merged["chosen"] == (expected.name if expected else None)
    md = (tmp_path / "merged" / "bench.md").read_text()
    assert "build machine" in md and "device" in md and merged["machine"]["cpu"] in md

    # integrity: results of another kit, and a changed kit, are refused in one line
    other = {**results, "kit_id": "0" * 64}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(KitError, match="another kit"):
        merge_kit(kit, [tmp_path / "other.json"], tmp_path / "m2")
    with open(device / "kit" / "reference.npz", "ab") as f:
        f.write(b"\0")
    bad = subprocess.run([str(runtime_venv / "edgedistill"), "kit", "run", "kit", "--out", "r2.json"], cwd=device,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "reference.npz" in bad.stderr and "Traceback" not in bad.stderr
    assert not (device / "r2.json").exists()


@pytest.mark.slow
def test_a_kit_is_refused_in_one_line_when_it_would_not_fit_or_exists(tiny_bundles, tmp_path):
    bundles = tiny_bundles[1]
    target = _device_profile(tmp_path)
    out = run_cli("bench", str(bundles / "gguf-q8_0"), "--target", str(target.source), "--out",
                  str(tmp_path / "r"), "--kit", str(tmp_path / "kit"), "--max-kit-size", "1kB")
    assert out.returncode == 2 and "--max-kit-size" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "kit").exists() and not (tmp_path / "r").exists()
    (tmp_path / "kit").mkdir()
    out = run_cli("bench", str(bundles / "gguf-q8_0"), "--target", str(target.source), "--out",
                  str(tmp_path / "r"), "--kit", str(tmp_path / "kit"))
    assert out.returncode == 2 and "exists" in out.stderr
    from edgedistill.bench.kit import size_problem  # what run checks first, to leave the kit out, not fail

    assert "over --max-kit-size 1kB" in size_problem([bundles / "gguf-q8_0"], "1kB")
    assert size_problem([bundles / "gguf-q8_0"], "2GB") is None
    out = run_cli("kit", "merge", str(tmp_path), str(tmp_path / "onecore.yaml"))
    assert out.returncode == 2 and "not a device kit" in out.stderr
