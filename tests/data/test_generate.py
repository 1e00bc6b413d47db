import json

import pytest

from edgedistill.data import DataError, Prompt
from edgedistill.data.generate import DecodeSettings, chat_batches, generate
from edgedistill.errors import EdgeDistillError

QUESTIONS = ["Where is my order?", "Machine M-204 raised alarm E17.", "Summarize the notes.",
             "Refund please, the parcel was damaged and the box was open when it arrived at my door.", "Hi"]


def _prompts():
    return [Prompt(id=f"p{i}", messages=({"role": "user", "content": q},), category="c", domain="support")
            for i, q in enumerate(QUESTIONS)]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from edgedistill.models import load_model

    return load_model(str(tiny_model_dir))


def test_batched_equals_one_by_one(tiny):
    """Left padding with an attention mask must not change greedy answers."""
    model, tok = tiny
    convs = [p.messages for p in _prompts()]
    one = {i: t for i, t, _, _ in chat_batches(model, tok, convs, DecodeSettings(max_new_tokens=12, answer_batch=1))}
    many = {i: t for i, t, _, _ in chat_batches(model, tok, convs, DecodeSettings(max_new_tokens=12, answer_batch=4))}
    assert one == many


def test_generate_is_resumable(tiny_model_dir, tiny, tmp_path):
    out = tmp_path / "gen.jsonl"
    s = DecodeSettings(max_new_tokens=8, answer_batch=2)
    r = generate(str(tiny_model_dir), _prompts()[:3], out, s, loaded=tiny)
    assert (r.written, r.already_done) == (3, 0)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert {x["id"] for x in recs} == {"p0", "p1", "p2"}
    assert all(x["teacher"] == str(tiny_model_dir) and x["settings"] == {"max_new_tokens": 8, "do_sample": False}
               for x in recs)
    assert all(x["messages"][0]["role"] == "user" and "response" in x for x in recs)

    # Interrupted mid-write: a torn last line is dropped and that prompt answered again.
    out.write_text(out.read_text() + '{"id": "p3", "resp')
    r = generate(str(tiny_model_dir), _prompts(), out, s, loaded=tiny)
    assert (r.written, r.already_done) == (2, 3)
    assert sorted(json.loads(line)["id"] for line in out.read_text().splitlines()) == ["p0", "p1", "p2", "p3", "p4"]

    r = generate(str(tiny_model_dir), _prompts(), out, s, loaded=tiny)
    assert (r.written, r.already_done) == (0, 5)


def test_other_settings_are_refused(tiny_model_dir, tiny, tmp_path):
    out = tmp_path / "gen.jsonl"
    generate(str(tiny_model_dir), _prompts()[:1], out, DecodeSettings(max_new_tokens=4), loaded=tiny)
    before = out.read_text()
    with pytest.raises(DataError, match="write to another --out or delete the file"):
        generate(str(tiny_model_dir), _prompts(), out, DecodeSettings(max_new_tokens=5), loaded=tiny)
    assert out.read_text() == before


def test_another_model_at_the_same_path_is_refused(tmp_path):
    """The teacher folder replaced by another model (same path, same name): the file is not extended."""
    import shutil

    from tests import tiny as tiny_models

    teacher = tiny_models.build_model_dir(tmp_path / "teacher", seed=0)
    out = tmp_path / "gen.jsonl"
    s = DecodeSettings(max_new_tokens=4)
    generate(str(teacher), _prompts()[:1], out, s)
    before = out.read_text()
    shutil.rmtree(teacher)
    tiny_models.build_model_dir(teacher, seed=1)
    with pytest.raises(DataError, match=r"fingerprint [0-9a-f]{16}, this teacher .* fingerprint [0-9a-f]{16}"):
        generate(str(teacher), _prompts(), out, s)
    assert out.read_text() == before


def test_sampling_is_seeded(tiny):
    model, tok = tiny
    convs = [p.messages for p in _prompts()[:2]]
    s = DecodeSettings(max_new_tokens=10, sample=True, temperature=1.5, seed=3)
    a = list(chat_batches(model, tok, convs, s))
    b = list(chat_batches(model, tok, convs, s))
    assert a == b


def test_prompt_longer_than_context_is_skipped(tiny_model_dir, tiny, tmp_path):
    long = Prompt(id="long", messages=({"role": "user", "content": "alarm " * 400},))
    r = generate(str(tiny_model_dir), [long, *_prompts()[:1]], tmp_path / "g.jsonl",
                 DecodeSettings(max_new_tokens=4), loaded=tiny)
    assert (r.written, r.skipped_too_long) == (1, 1)


def test_settings_are_validated():
    with pytest.raises(EdgeDistillError, match="temperature=0.*top_p=2"):
        DecodeSettings(temperature=0, top_p=2)


def test_empty_answers_are_counted_and_refused_as_training_data(tiny_model_dir, tmp_path):
    """A teacher that ends its turn at once writes empty answers: generate counts them, distill's loader refuses
    them in one line (count and first record) unless allow_empty."""
    import torch

    from edgedistill.distill.dataset import load_generations
    from edgedistill.models import load_model

    model, tok = load_model(str(tiny_model_dir))
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[tok.eos_token_id] = 10.0  # end of turn is the first token of every answer
    model.lm_head = head
    out = tmp_path / "gen.jsonl"
    r = generate(str(tiny_model_dir), _prompts()[:3], out, DecodeSettings(max_new_tokens=8), loaded=(model, tok))
    assert (r.written, r.empty) == (3, 3)
    with pytest.raises(DataError, match=r"3 of 3 teacher answers are empty .*gen.jsonl:1 \(id p0\).*--allow-empty"):
        load_generations([out])
    assert len(load_generations([out], allow_empty=True)) == 3
