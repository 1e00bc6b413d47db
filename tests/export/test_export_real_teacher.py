"""The default teacher through the exporters: F16 GGUF and fp32 ONNX reproduce its greedy generation token for
token, and a 4-bit K-quant of it lands near llama.cpp's own figures for this model."""

from __future__ import annotations

import json

import pytest

from edgedistill.export.pipeline import ExportSettings, export_model

pytestmark = pytest.mark.real_teacher


def test_teacher_exports_reproduce_torch(real_teacher, tmp_path):
    res = export_model(str(real_teacher), tmp_path, ExportSettings(variants=["gguf:f16", "onnx:fp32", "gguf:q4_k_m"],
                                                                 chunks=2, chunk_len=256))
    by = {r.key: r for r in res}
    for key in ("gguf:f16", "onnx:fp32"):
        assert by[key].passed, by[key].error
        assert by[key].metrics["greedy_match"] is True
        assert by[key].metrics["mean_kl"] < 1e-3
    q = json.loads((tmp_path / "gguf-q4_k_m" / "manifest.json").read_text())
    # 576-wide rows are not a multiple of 256: most tensors fall back to other types, and the manifest says so
    assert q["quantization"]["fallback_share"] > 0.5
    assert 5.5 < q["quantization"]["tensor_bits_per_weight"] < 7
    assert q["validation"]["mean_kl"] < 0.15

    import llama_cpp

    llm = llama_cpp.Llama(str(tmp_path / "gguf-f16" / "model.gguf"), n_ctx=512, verbose=False)
    reply = llm.create_chat_completion([{"role": "user", "content": "What is the capital of France?"}],
                                       max_tokens=24, temperature=0.0)
    llm.close()
    # the chat template travels in the GGUF: llama-cpp-python formats the turn itself and stops at <|im_end|>
    assert "Paris" in reply["choices"][0]["message"]["content"]
    assert reply["choices"][0]["finish_reason"] == "stop"
