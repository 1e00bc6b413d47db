"""The offline runtime: loads tiny bundles in both backends, refuses tampered or foreign bundles, imports neither
torch nor transformers, and never opens a socket."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from edgedistill.errors import IntegrityError
from edgedistill.runtime import BundleError, SamplingParams, LoadedModel, load
from edgedistill.runtime.text import Sampler, StopText

pytestmark = pytest.mark.slow  # end-to-end trips over shared tiny bundles: make test, not the quick loop


@pytest.fixture
def bundles(tiny_bundles):
    return tiny_bundles


@pytest.mark.parametrize("fmt", ["gguf-f16", "onnx-fp32"])
def test_both_backends_match_torch_greedy(bundles, fmt):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, out = bundles
    tok = AutoTokenizer.from_pretrained(model_dir)
    ref = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    msgs = [{"role": "user", "content": "Where is my order?"}]
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.inference_mode():
        want = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)[0, ids.shape[1]:]
    want_text = tok.decode(want, skip_special_tokens=True)
    with load(out / fmt) as m:
        assert m.render_chat(msgs) == prompt
        assert m.chat(msgs, max_tokens=12) == want_text
        assert "".join(m.chat_stream(msgs, max_tokens=12)) == want_text
        # sampling is reproducible with a seed
        a = m.generate("Refund requests", max_tokens=8, temperature=0.9, top_p=0.9, seed=3)
        assert a == m.generate("Refund requests", max_tokens=8, temperature=0.9, top_p=0.9, seed=3)


def test_changed_or_missing_file_is_refused(bundles, tmp_path):
    _, out = bundles
    b = tmp_path / "b"
    shutil.copytree(out / "onnx-fp32", b)
    cfg = b / "tokenizer_config.json"
    cfg.write_text(cfg.read_text() + " ")
    with pytest.raises(IntegrityError, match="tokenizer_config.json"):
        load(b)
    shutil.rmtree(b)
    shutil.copytree(out / "onnx-fp32", b)
    (b / "tokenizer.json").unlink()
    with pytest.raises(IntegrityError, match="tokenizer.json is missing"):
        load(b)


def test_newer_manifest_unknown_format_and_no_bundle(bundles, tmp_path):
    _, out = bundles
    b = tmp_path / "b"
    shutil.copytree(out / "gguf-f16", b)
    man = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps({**man, "manifest_version": 99}))
    with pytest.raises(BundleError, match="newer"):
        load(b)
    (b / "manifest.json").write_text(json.dumps({**man, "format": "tflite"}))
    with pytest.raises(BundleError, match="tflite"):
        load(b)
    with pytest.raises(BundleError, match="no bundle"):
        load(tmp_path / "nothing")
    (b / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json"):
        load(b)


def test_manifest_paths_stay_inside_the_bundle(bundles, tmp_path):
    """A manifest (checksums and all) naming a file outside its folder, or a link leading out, is refused by the
    runtime and by bench before anything is opened."""
    from edgedistill.bench import bench
    from edgedistill.targets import load_target

    _, out = bundles
    b, other = tmp_path / "b", tmp_path / "other"
    shutil.copytree(out / "gguf-f16", b)
    man = json.loads((b / "manifest.json").read_text())
    other.mkdir()
    shutil.copy(b / man["model_file"], other / "model.gguf")
    for name in ("../other/model.gguf", str(other / "model.gguf")):
        files = {k: v for k, v in man["files"].items() if k != man["model_file"]}
        files[name] = man["files"][man["model_file"]]
        (b / "manifest.json").write_text(json.dumps({**man, "model_file": name, "files": files}))
        with pytest.raises(BundleError, match="outside the bundle"):
            load(b)
        with pytest.raises(BundleError, match="outside the bundle"):
            bench([b], load_target("laptop"), tmp_path / "report")
    (b / "manifest.json").write_text(json.dumps(man))
    shutil.move(b / "tokenizer.json", other / "tokenizer.json")
    (b / "tokenizer.json").symlink_to(other / "tokenizer.json")  # same bytes: the checksum alone would pass
    with pytest.raises(BundleError, match="outside the bundle folder"):
        load(b)
    assert not (tmp_path / "report").exists() or not any((tmp_path / "report").iterdir())


def test_other_architecture_warns(bundles, tmp_path, caplog):
    _, out = bundles
    b = tmp_path / "b"
    shutil.copytree(out / "gguf-f16", b)
    man = json.loads((b / "manifest.json").read_text())
    other = "aarch64" if man["built_on_arch"] != "aarch64" else "x86_64"
    (b / "manifest.json").write_text(json.dumps({**man, "built_on_arch": other}))
    with caplog.at_level("WARNING"):
        load(b).close()
    assert "built on" in caplog.text


def test_runtime_imports_no_torch_and_opens_no_socket(bundles):
    """In a fresh interpreter: sockets are disabled before import; both bundles load and generate the same greedy text
    as here."""
    _, out = bundles
    want = {}
    for b in ("gguf-f16", "onnx-fp32"):
        with load(out / b) as m:
            want[b] = m.generate("Hello", max_tokens=4)
    assert all(want.values()), want  # a tiny model with init_std 0.15 says something in 4 tokens
    code = f"""
import socket, sys
def _no(*a, **k):
    raise RuntimeError("network used")
socket.socket.connect = _no
socket.create_connection = _no
socket.getaddrinfo = _no
from edgedistill.runtime import load
for b in ("gguf-f16", "onnx-fp32"):
    with load({str(out)!r} + "/" + b) as m:
        got = m.generate("Hello", max_tokens=4)
        assert got == {want!r}[b], (b, got)
bad = [m for m in ("torch", "transformers", "optimum") if m in sys.modules]
assert not bad, bad
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


def test_stop_strings_are_never_shown():
    s = StopText(["###"])
    out = "".join(s.feed(p) for p in ["Hello #", "#", "# world"]) + s.flush()
    assert out == "Hello " and s.done
    s = StopText(["END"])
    assert "".join(s.feed(p) for p in ["a E", "N", "x"]) + s.flush() == "a ENx"


class _ByteModel(LoadedModel):
    """Tokens are UTF-8 bytes, so characters span several tokens; spm=True drops a leading space like a
    sentencepiece decoder does for a slice that starts a word. Counts how many tokens decode() is asked for."""

    def __init__(self, text, spm=False):
        self.ids, self.spm, self.decoded = list(text.encode()), spm, 0

    def encode(self, text):
        return []

    def decode(self, ids):
        self.decoded += len(ids)
        text = bytes(ids).decode("utf-8", errors="replace")
        return text[1:] if self.spm and text.startswith(" ") else text

    def generate_ids(self, prompt_ids, cfg):
        yield from self.ids[: cfg.max_tokens]


@pytest.mark.parametrize("spm", [False, True])
def test_stream_pieces_join_to_the_text_and_decode_a_window(spm):
    text = "Grüße, Welt ✓ — naïve café " * 20
    m = _ByteModel(text, spm)
    pieces = list(m.stream("", max_tokens=10_000))
    want = text[1:] if spm and text.startswith(" ") else text
    assert "".join(pieces) == want
    assert not any("\ufffd" in p for p in pieces)
    assert m.decoded < 20 * len(m.ids)  # a window per token, not the whole output again (that would be ~n^2/2)
    cut = _ByteModel("ab ✓")  # ends inside the 3-byte check mark
    assert "".join(cut.stream("", max_tokens=5)) == "ab \ufffd"


def test_sampler():
    import numpy as np

    logits = np.array([0.0, 5.0, 4.9, -3.0])
    assert Sampler(0.0, 1.0, None)(logits) == 1
    draws = {Sampler(1.0, 0.9, seed)(logits) for seed in range(30)}
    assert draws <= {1, 2} and len(draws) == 2  # top-p 0.9 keeps the two near-equal tokens only
    with pytest.raises(Exception):
        SamplingParams(max_tokens=0)


@pytest.mark.parametrize("fmt", ["gguf-f16", "onnx-fp32"])
def test_timed_generation_yields_exactly_the_tokens_asked_for(bundles, fmt):
    from edgedistill.runtime.measure import percentile, summarize, time_generation

    _, out = bundles
    with load(out / fmt) as m:
        ids = m.encode(m.render_chat([{"role": "user", "content": "Hi"}]))
        first = next(iter(m.generate_ids(ids, SamplingParams(max_tokens=1))))
        m.eos_ids = {first}  # make the greedy first token the end-of-turn: generation stops at once unless ignored
        assert list(m.generate_ids(ids, SamplingParams(max_tokens=24))) == []
        assert len(list(m.generate_ids(ids, SamplingParams(max_tokens=24, ignore_eos=True)))) == 24
        runs = [time_generation(m, ids, 10) for _ in range(3)]
    assert all(r.new_tokens == 10 and len(r.token_latencies_s) == 9 for r in runs)
    s = summarize(runs)
    assert s["decode_tokens_per_s"] > 0 and s["ttft_s"] > 0 and s["prompt_tokens"] == len(ids)
    assert s["token_latency_p50_s"] <= s["token_latency_p95_s"]
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and percentile([5.0], 95) == 5.0
    # every timed run computed the whole prompt, the same prompt three times over included
    assert [r.prompt_tokens_computed for r in runs] == [len(ids)] * 3 and s["prompt_tokens_computed"] == len(ids)


def test_a_timed_run_served_from_the_prompt_cache_fails_the_measurement(bundles, monkeypatch):
    """llama.cpp keeps the last prompt computed and reuses its longest matching prefix: without the reset before
    each timed run, the same prompt again costs nothing and the time to first token would flatter the file."""
    from edgedistill.runtime.gguf import GGUFModel
    from edgedistill.runtime.measure import time_generation

    _, out = bundles
    with load(out / "gguf-f16") as m:
        ids = m.encode("The line stopped at station four because the guard was open, so the operator")
        assert time_generation(m, ids, 4).prompt_tokens_computed == len(ids)
        monkeypatch.setattr(GGUFModel, "reset", lambda self: None)  # as before the fix
        with pytest.raises(RuntimeError, match=f"computed 1 of its {len(ids)} prompt tokens"):
            time_generation(m, ids, 4)
        assert m.prompt_tokens_computed() < len(ids)


def test_support_desk_example_runs_without_torch(bundles):
    """examples/support_desk.py answers in a fresh interpreter where importing torch or transformers fails."""
    from tests.conftest import REPO

    _, out = bundles
    code = f"""
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "optimum"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, _Block())
sys.argv = ["support_desk.py", {str(out / "onnx-fp32")!r}, "--ask", "Where is my order?", "--ask", "Thanks",
            "--max-tokens", "6"]
import runpy

runpy.run_path({str(REPO / "examples" / "support_desk.py")!r}, run_name="__main__")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("> ") == 2 and "Where is my order?" in proc.stdout
    bad = subprocess.run([sys.executable, str(REPO / "examples" / "support_desk.py"), str(out / "nothing")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr


def test_the_earlier_name_of_sampling_params_still_works_with_a_warning():
    import edgedistill.runtime as rt

    with pytest.warns(DeprecationWarning, match="use SamplingParams"):
        old = rt.GenerationConfig
    assert old is rt.SamplingParams and old(max_tokens=3).max_tokens == 3
    with pytest.raises(AttributeError):
        rt.NoSuchThing
