"""The whole trip for a tiny model of every registered family: prune -> teacher data -> distill a few steps ->
GGUF F16 + Q8_0 and ONNX fp32 -> edgedistill.runtime, whose prompt tokens and greedy tokens equal transformers'."""

from __future__ import annotations

import json

import pytest
import torch

from edgedistill.models.families import FAMILIES
from tests.families import TINY

pytestmark = pytest.mark.slow  # end-to-end trips over shared tiny bundles: make test, not the quick loop

TEXT = ("Where is my order? The parcel was due on Monday. Machine M-204 raised alarm E17: spindle temperature high. "
        "Please summarize the shift handover notes for line 3. Refund requests are processed within 5 business "
        "days. Lock out and tag out the press before maintenance. ") * 12
QUESTIONS = ["Where is my order?", "What does alarm E17 mean?", "Summarize the handover.", "When is my refund due?",
             "How do I lock out the press?", "Is the parcel late?"]


def test_every_registered_family_has_a_tiny_model():
    assert sorted(TINY) == sorted(FAMILIES)


def _torch_greedy(model, ids: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_lora_adapter_of_every_family_exports_and_runs_over_its_base_in_llama_cpp(name, tmp_path):
    """LoRA on the projections the family's entry names (its own names: Phi-3's fused ones), written by llama.cpp's
    LoRA converter and applied over the base's F16 GGUF, matches the merged model in torch (export validation)."""
    from edgedistill.export.pipeline import ExportSettings, export_model
    from tests import tiny

    base = TINY[name].build(tmp_path / "base")
    student = tiny.with_lora_adapter(base, tmp_path / "student")
    config = json.loads((student / "adapter" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(FAMILIES[name].lora_targets)
    (r,) = export_model(str(student), tmp_path / "b", ExportSettings(variants=["gguf-lora:f16"], chunks=1,
                                                                     chunk_len=32))
    assert r.passed, (r.error, r.metrics)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_whole_trip(name, tmp_path):
    from edgedistill import runtime
    from edgedistill.data.stage import GenerateSettings, generate_data
    from edgedistill.distill.stage import DistillSettings, PruneSettings, distill, prune
    from edgedistill.export.pipeline import ExportSettings, export_model
    from edgedistill.models import load_model
    from edgedistill.models.generate import chat_ids
    from edgedistill.quantize import unsupported_reason

    fam = TINY[name]
    teacher = fam.build(tmp_path / "teacher")
    layers = json.loads((teacher / "config.json").read_text())["num_hidden_layers"]
    (tmp_path / "cal.txt").write_text(TEXT)
    # every kind of pruning at once; 2 heads of 16 in 48 channels (head_dim != hidden / heads) where the family
    # allows it, else in 32
    hidden = 32 if FAMILIES[name].attention_is_hidden else 48
    prune(PruneSettings(teacher=str(teacher), out=tmp_path / "pruned", layers=layers - 1, hidden=hidden, ffn=96,
                        heads=2, kv_heads=1, calibration=tmp_path / "cal.txt", calibration_tokens=256, hw_friendly=False))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "messages": [{"role": "user", "content": q}]}) + "\n"
                               for i, q in enumerate(QUESTIONS)))
    generate_data(GenerateSettings(teacher=str(teacher), prompts=[prompts], out=tmp_path / "gen.jsonl",
                                   max_new_tokens=12, answer_batch=6, teacher_engine="torch"))
    report = distill(DistillSettings(teacher=str(teacher), student=str(tmp_path / "pruned"), generations=[tmp_path / "gen.jsonl"],
                                     validation=[tmp_path / "gen.jsonl"], out=tmp_path / "run", steps=3,
                                     batch_size=3, grad_accum=1, lr=1e-3, warmup_steps=0, max_length=96,
                                     save_steps=100, kd_weight=1.0, allow_empty=True))
    # kd 1.0: the recipe whose greedy tokens have no near-tie at the start in any family's student (the f16 check
    # below compares 12 tokens exactly); allow_empty: a random tiny teacher may end its turn at once (the llama one
    # does, for every prompt), and the trip is what this test is about
    assert report["steps"] == 3
    student = tmp_path / "run" / "student"
    variants = [v for v in ("gguf:f16", "gguf:q8_0", "onnx:fp32") if unsupported_reason(v, student) is None]  # all, today
    results = export_model(str(student), tmp_path / "bundles", ExportSettings(variants=variants, chunks=1,
                                                                              chunk_len=32))
    assert [r.path is not None for r in results] == [True] * len(variants), [r.error for r in results]

    model, tok = load_model(str(student))
    msgs = [{"role": "user", "content": "Where is my order? It was due on Monday."}]
    ids = chat_ids(tok, msgs)
    want = _torch_greedy(model, ids, 12)
    for r in results:
        with runtime.load(r.path) as m:
            assert m.encode(m.render_chat(msgs)) == ids, r.path.name  # the bundle reads the prompt as training did
            got = list(m.generate_ids(ids, runtime.SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)))
        n = 4 if "q8_0" in r.path.name else 12  # 8-bit weights may flip a near-tie later in a random model
        assert got[:n] == want[:n], (r.path.name, got, want)


@pytest.mark.parametrize("engine", ["torch", "llama.cpp"])
def test_teacher_data_ends_at_the_end_of_turn_not_at_eos(engine, tmp_path):
    """A Llama-3-style teacher closes its turn with <|eot_id|>, not eos (<|end_of_text|>), and, left to run,
    invents the user's next turn. Every engine stops at the end of turn, the answers hold no invented turn, and
    the training examples end where the teacher's turn ends."""
    from edgedistill.data.stage import GenerateSettings, generate_data
    from edgedistill.distill.dataset import encode
    from edgedistill.models import load_model
    from tests.families import build_chatty

    teacher, replies = build_chatty("llama", tmp_path / "teacher")
    tok = load_model(str(teacher))[1]
    assert tok.eos_token == "<|end_of_text|>"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "messages": [{"role": "user", "content": q}]}) + "\n"
                               for i, q in enumerate(replies)))
    generate_data(GenerateSettings(teacher=str(teacher), prompts=[prompts], out=tmp_path / "gen.jsonl",
                                   max_new_tokens=60, answer_batch=4, teacher_engine=engine))
    records = [json.loads(x) for x in (tmp_path / "gen.jsonl").read_text().splitlines()]
    assert [r["finish_reason"] for r in records] == ["stop"] * len(replies)
    assert [r["response"] for r in records] == list(replies.values())  # no "Invented question?"
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert all(e["input_ids"][-1] == eot for e in encode(tok, records, 128).examples)


def test_every_bundle_stops_at_the_end_of_turn(tmp_path):
    from edgedistill import runtime
    from edgedistill.export.pipeline import ExportSettings, export_model
    from tests.families import build_chatty

    teacher, replies = build_chatty("llama", tmp_path / "teacher")
    results = export_model(str(teacher), tmp_path / "bundles",
                           ExportSettings(variants=["gguf:f16", "onnx:fp32"], chunks=1, chunk_len=32))
    q, want = next(iter(replies.items()))
    for r in results:
        with runtime.load(r.path) as m:
            assert m.chat([{"role": "user", "content": q}], max_tokens=60, temperature=0) == want, r.path.name


def test_a_base_model_without_a_chat_template_makes_the_trip_with_plain_prompts(tmp_path):
    from edgedistill import runtime
    from edgedistill.data.stage import GenerateSettings, generate_data
    from edgedistill.distill.dataset import encode
    from edgedistill.export.pipeline import ExportSettings, export_model
    from edgedistill.models import load_model
    from edgedistill.models.generate import chat_ids

    base = TINY["llama"].build(tmp_path / "base")
    (base / "chat_template.jinja").unlink(missing_ok=True)
    conf = json.loads((base / "tokenizer_config.json").read_text())
    conf.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(conf))
    tok = load_model(str(base))[1]
    assert not tok.chat_template
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "messages": [{"role": "user", "content": "The capital of France"}]}) + "\n")
    generate_data(GenerateSettings(teacher=str(base), prompts=[prompts], out=tmp_path / "gen.jsonl", max_new_tokens=8, teacher_engine="torch"))
    records = [json.loads(x) for x in (tmp_path / "gen.jsonl").read_text().splitlines()]
    msgs = records[0]["messages"]
    ex = encode(tok, records, 64).examples[0]
    assert tok.decode(ex["input_ids"]).startswith("The capital of France\n")  # a completion prompt, no roles
    assert ex["input_ids"][-1] == tok.eos_token_id
    (result,) = export_model(str(base), tmp_path / "bundles", ExportSettings(variants=["gguf:f16"], chunks=1,
                                                                             chunk_len=32))
    with runtime.load(result.path) as m:
        assert m.encode(m.render_chat(msgs)) == chat_ids(tok, msgs)


def _one_line_exit_2(proc, out, *words):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert not out.exists()


def test_what_a_family_cannot_do_is_refused_in_one_line_before_any_work(tmp_path):
    from transformers import OPTConfig, OPTForCausalLM

    from tests import tiny
    from tests.conftest import run_cli

    tok = tiny.build_tokenizer()
    OPTForCausalLM(OPTConfig(num_hidden_layers=1, hidden_size=32, ffn_dim=64, num_attention_heads=2,
                             word_embed_proj_dim=32, vocab_size=len(tok))).save_pretrained(tmp_path / "opt")
    tok.save_pretrained(tmp_path / "opt")
    out = tmp_path / "student"
    _one_line_exit_2(run_cli("prune", "--teacher", str(tmp_path / "opt"), "--layers", "1", "--teacher-width", "--out", str(out)), out,
                     "pruning does not support 'opt' models", "llama", "phi3")
    phi3 = TINY["phi3"].build(tmp_path / "phi3")  # llama.cpp's phi3 loader: heads x head_dim must be the hidden size
    _one_line_exit_2(run_cli("prune", "--teacher", str(phi3), "--hidden", "48", "--heads", "2", "--kv-heads", "1",
                             "--teacher-width", "--out", str(out)), out, "heads x head_dim = hidden", "hidden=32")
    gemma = TINY["gemma3"].build(tmp_path / "gemma3")
    for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        (gemma / f).unlink()
    bundles = tmp_path / "bundles"
    _one_line_exit_2(run_cli("export", str(gemma), "--variant", "gguf:q8_0", "--out", str(bundles)), bundles,
                     "tokenizer")
