"""The real default teacher, end to end (marked real_teacher; runs in CI too, pulls once per machine)."""

import json

import pytest

from edgedistill.models import DEFAULT_TEACHER
from edgedistill.runinfo import available_cores
from tests.conftest import run_cli

pytestmark = pytest.mark.real_teacher

PROMPTS = [
    "What is the capital of France?",
    "Order #A-10293 shipped on 2026-03-04; 12345 units, 3.5 kg each.",
    "<|im_start|>user\nMachine M-204 alarm E17<|im_end|>\n",
    "  leading spaces, tabs\tand unicode: café, naïve, 東京, emoji 🙂",
    "def f(x):\n    return x**2  # square",
]


def test_pull_twice_then_info(real_teacher):
    proc = run_cli("models", "pull", DEFAULT_TEACHER)
    assert proc.returncode == 0, proc.stderr
    assert "already present" in proc.stdout
    proc = run_cli("models", "info", DEFAULT_TEACHER, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert (info["layers"], info["hidden_size"], info["attention_heads"], info["kv_heads"]) == (30, 576, 9, 3)
    assert info["vocab_size"] == 49152 and info["tied_embeddings"] and info["chat_template"]
    assert round(info["parameters"] / 1e6, 1) == 134.5
    text = run_cli("models", "info", DEFAULT_TEACHER).stdout
    assert "134.5M" in text and "576" in text


@pytest.fixture(scope="module")
def teacher(real_teacher):
    from edgedistill.models import load_model

    return load_model(str(real_teacher))


def test_answers_paris(teacher):
    from edgedistill.models.generate import answer

    reply = answer(None, "What is the capital of France?", max_new_tokens=20, loaded=teacher)
    assert "Paris" in reply, reply


def test_the_common_generate_idiom_runs_on_the_converted_teacher(real_teacher, teacher):
    """model.generate(**tokenizer(text, return_tensors="pt")): the tokenizer gives only what the model takes,
    from the files on disk too (a fresh AutoTokenizer over the converted folder)."""
    import torch
    from transformers import AutoTokenizer

    model, _ = teacher
    tok = AutoTokenizer.from_pretrained(real_teacher)
    enc = tok("The capital of France is", return_tensors="pt")
    assert set(enc) == {"input_ids", "attention_mask"}
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1]:])


def test_tokenizer_matches_llama_cpp(real_teacher, teacher):
    """Our rebuilt tokenizer must split text exactly as llama.cpp does with the original GGUF."""
    from llama_cpp import Llama

    gguf = next((real_teacher / "original").glob("*.gguf"))
    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    _, tok = teacher
    for text in PROMPTS:
        ours = tok(text, add_special_tokens=True).input_ids
        theirs = llm.tokenize(text.encode(), add_bos=False, special=True)
        assert ours == theirs, text
        assert tok.decode(ours) == text


def test_logits_match_llama_cpp(real_teacher, teacher):
    """The de-quantized float32 weights (with llama.cpp's Q/K permutation undone) predict what llama.cpp
    predicts from the Q4_1 file; llama.cpp quantizes activations too, so we ask for top-1 agreement."""
    import numpy as np
    import torch
    from llama_cpp import Llama

    model, tok = teacher
    text = "The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Berlin is"
    ids = tok(text).input_ids
    with torch.inference_mode():
        ours = model(torch.tensor([ids])).logits[0].numpy()
    gguf = next((real_teacher / "original").glob("*.gguf"))
    llm = Llama(model_path=str(gguf), n_ctx=128, logits_all=True, verbose=False, n_threads=available_cores())
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)])
    agree = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
    assert agree >= 0.9, agree


def test_truncated_teacher_gguf(real_teacher, tmp_path):
    gguf = next((real_teacher / "original").glob("*.gguf"))
    cut = tmp_path / "cut.gguf"
    with open(gguf, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(gguf.stat().st_size // 2))
    proc = run_cli("models", "info", str(cut))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "truncated" in proc.stderr


def test_gguf_file_info(real_teacher):
    gguf = next((real_teacher / "original").glob("*.gguf"))
    proc = run_cli("models", "info", str(gguf))
    assert proc.returncode == 0, proc.stderr
    assert "GGUF file" in proc.stdout and "Q4_1" in proc.stdout
