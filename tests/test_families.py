"""The whole trip for a tiny model of every registered family: prune -> teacher data -> distill a few steps ->
GGUF F16 + Q8_0 and ONNX fp32 -> edgedistill.runtime, whose prompt tokens and greedy tokens equal transformers'."""

from __future__ import annotations

import json

import pytest
import torch

from edgedistill.models.families import FAMILIES
from tests.families import TINY

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
def test_the_whole_trip(name, tmp_path):
    from edgedistill import runtime
    from edgedistill.data.stage import GenerateSettings, generate_data
    from edgedistill.distill.stage import DistillSettings, PruneSettings, distill, prune
    from edgedistill.export.pipeline import ExportSettings, export_model
    from edgedistill.models import load_model
    from edgedistill.models.generate import chat_ids

    fam = TINY[name]
    teacher = fam.build(tmp_path / "teacher")
    layers = json.loads((teacher / "config.json").read_text())["num_hidden_layers"]
    (tmp_path / "cal.txt").write_text(TEXT)
    # every kind of pruning at once; 2 heads of 16 in 48 channels (head_dim != hidden / heads) where the family
    # allows it, else in 32
    hidden = 32 if FAMILIES[name].attention_is_hidden else 48
    prune(PruneSettings(teacher=str(teacher), out=tmp_path / "pruned", layers=layers - 1, hidden=hidden, ffn=96,
                        heads=2, kv_heads=1, calibration=tmp_path / "cal.txt", max_tokens=256))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "messages": [{"role": "user", "content": q}]}) + "\n"
                               for i, q in enumerate(QUESTIONS)))
    generate_data(GenerateSettings(teacher=str(teacher), prompts=[prompts], out=tmp_path / "gen.jsonl",
                                   max_new_tokens=12, batch_size=6))
    report = distill(DistillSettings(teacher=str(teacher), student=str(tmp_path / "pruned"), data=[tmp_path / "gen.jsonl"],
                                     validation=[tmp_path / "gen.jsonl"], out=tmp_path / "run", max_steps=3,
                                     batch_size=3, grad_accum=1, lr=1e-3, warmup_steps=0, max_length=96,
                                     save_steps=100))
    assert report["steps"] == 3
    student = tmp_path / "run" / "student"
    variants = ["gguf:f16", "gguf:q8_0"] + (["onnx:fp32"] if FAMILIES[name].onnx_refused is None else [])
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
            got = list(m.generate_ids(ids, runtime.GenerationConfig(max_tokens=12, temperature=0, ignore_eos=True)))
        n = 4 if "q8_0" in r.path.name else 12  # 8-bit weights may flip a near-tie later in a random model
        assert got[:n] == want[:n], (r.path.name, got, want)
