"""The pairing of teacher and student, decided from their tokenizers before any model loads, and the text-level
fidelity used where they differ."""

from __future__ import annotations

import pytest

from edgedistill.distill.pairing import decide
from tests.families import TINY


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("pairing")
    out = {}
    for name in ("qwen2", "qwen3", "gemma3", "llama"):
        TINY[name].build(root / name, layers=1)
        out[name] = AutoTokenizer.from_pretrained(root / name)
    return root, out


def test_one_tokenizer_with_padded_rows_is_the_same_tokenizer(toks):
    """Qwen2's embedding is padded 61 rows past the tokenizer Qwen3 shares: logit distillation; Gemma's
    SentencePiece against Llama's byte-level BPE: sequence-level, the counts named."""
    import json

    root, t = toks
    assert json.loads((root / "qwen2" / "config.json").read_text())["vocab_size"] == len(t["qwen2"]) + 61
    same = decide(t["qwen3"], t["qwen2"], teacher="q2", student="q3")
    assert same.logits and "share a tokenizer" in same.why
    other = decide(t["gemma3"], t["llama"], teacher="llama", student="gemma")
    assert other.kind == "sequence" and f"{len(t['llama'])} and {len(t['gemma3'])} tokens" in other.why
    assert decide(t["qwen3"], teacher="api", student="q3", served=True).kind == "sequence"
    assert decide(t["qwen3"], teacher="api", student="q3", served=True, cached=True).logits


def test_text_fidelity_measures():
    from edgedistill.data.text_fidelity import chrf, compare

    assert chrf("Lock out the press first.", "Lock out the press first.") == pytest.approx(100)
    assert chrf("Refunds take five days.", "Lock out the press first.") < 30
    ref = {"a": "Lock out the press first.", "b": "Refunds take five days.", "c": "Call the supervisor."}
    got = compare(ref, {"a": "Lock out the press first.", "b": "Refunds take 5 days.", "c": ""},
                  nll={"a": (2.0, 25), "b": (10.0, 20)}, graded=[True, False, True, True])
    assert got["prompts"] == 3 and 0 < got["chrf"]["value"] < 100
    lo, hi = got["chrf"]["ci"]
    assert lo <= got["chrf"]["value"] <= hi and lo < hi
    assert got["teacher_nll_per_byte"]["value"] == pytest.approx(12 / 45)  # a ratio of sums, not a mean of ratios
    assert got["answer_agreement"]["value"] == pytest.approx(0.75) and got["answer_agreement"]["items"] == 4
    with pytest.raises(ValueError, match="no prompt has both"):
        compare(ref, {"z": "x"})


def test_the_teachers_nll_per_byte_prefers_its_own_answer(tmp_path):
    """Scored by a local teacher: its own greedy answer costs it fewer nats per byte than a scrambled one."""
    from edgedistill.data.text_fidelity import greedy_answers, teacher_nll
    from edgedistill.models import load_model
    from tests import tiny

    model, tok = load_model(str(tiny.build_chatty_model_dir(tmp_path / "chatty", steps=100)))
    msgs = [{"role": "user", "content": "Question 1?"}]
    own = greedy_answers(model, tok, [("q", msgs)], 24)["q"]
    assert own
    scrambled = " ".join(reversed(own.split())) + " zq"
    got = teacher_nll(model, tok, [("own", msgs, own), ("other", msgs, scrambled), ("none", msgs, "")])
    assert set(got) == {"own", "other"} and got["own"][1] == len(own.encode())
    assert got["own"][0] / got["own"][1] < got["other"][0] / got["other"][1]
