"""Every registered scheme round-trips on a tiny model and loads in its runtime; bad inputs fail cleanly."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgedistill.errors import EdgeDistillError, InvalidModelError, UnsupportedError
from edgedistill.export.bundle import MANIFEST, sha256
from edgedistill.export.pipeline import ExportSettings, export_model
from edgedistill.quantize import schemes
from tests import tiny
from tests.conftest import built_once, run_cli

ALL_SCHEMES = sorted(schemes())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export run of the tiny model with every registered scheme (once per session: the test workers share it):
    (model folder, bundles folder, {variant: its result's passed and error})."""
    def build(root: Path) -> None:
        base = tiny.build_model_dir(root / "tiny-base")
        model = tiny.with_lora_adapter(base, root / "tiny-llama")  # a LoRA student: gguf-lora exports its adapter
        results = export_model(str(model), root / "bundles", ExportSettings(variants=ALL_SCHEMES, chunks=2,
                                                                            chunk_len=64))
        (root / "results.json").write_text(json.dumps({r.key: {"passed": r.passed, "error": r.error} for r in results}))

    root = built_once(tmp_path_factory, "export-every-scheme", build)
    results = {k: SimpleNamespace(**v) for k, v in json.loads((root / "results.json").read_text()).items()}
    return root / "tiny-llama", root / "bundles", results


@pytest.mark.slow
@pytest.mark.parametrize("key", ALL_SCHEMES)
def test_scheme_round_trips_and_loads_in_its_runtime(exported, key):
    _, out, results = exported
    r = results[key]
    assert r.passed, r.error
    bundle = out / key.replace(":", "-")
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert (manifest["format"], manifest["scheme"]) == tuple(key.split(":"))
    assert manifest["validation"]["passed"] and not manifest["validation"]["forced"]
    assert manifest["validation"]["positions"] == 128
    # the bundle ships to other machines: it names its model and the adapter's base, never a folder of this one
    assert manifest["source"]["model"] == "tiny-llama"
    for f in bundle.rglob("*"):  # no file of it (model metadata, tokenizer, settings) names a folder of this machine
        assert not f.is_file() or str(out.parent).encode() not in f.read_bytes(), f.name
    for name, meta in manifest["files"].items():  # every file listed with its real size and hash
        assert (bundle / name).stat().st_size == meta["bytes"]
        assert sha256(bundle / name) == meta["sha256"]
    assert {"tokenizer.json", manifest["model_file"]} <= set(manifest["files"])
    assert manifest["bits_per_weight"] == pytest.approx(8 * manifest["model_bytes"] / manifest["parameters"])
    model_file = bundle / manifest["model_file"]
    ids = [1, 5, 9, 17, 33]
    if manifest["format"] in ("gguf", "gguf-lora"):
        import llama_cpp

        over = {}
        if manifest["format"] == "gguf-lora":  # an adapter runs over its base model's GGUF
            from edgedistill.formats.gguf import convert

            over = {"lora_path": str(model_file)}
            assert manifest["quantization"]["adapter"]["base"] == "tiny-base"  # a name, not this machine's folder
            model_file = convert(out.parent / "tiny-base", bundle.parent / "base.gguf")
        llm = llama_cpp.Llama(str(model_file), n_ctx=64, logits_all=True, verbose=False, **over)
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)])
        llm.close()
        assert "tensor_types" in manifest["quantization"]
    elif manifest["format"] == "onnx":
        import onnxruntime as ort

        # the file loads in plain onnxruntime too (an empty past: one pass over the prompt)
        sess = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
        cfg = json.loads((bundle / "genai_config.json").read_text())["model"]["decoder"]
        feeds = {"input_ids": np.array([ids]), "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
        for i in sess.get_inputs():
            if i.name.startswith("past_key_values."):
                feeds[i.name] = np.zeros((1, i.shape[1], 0, cfg["head_size"]), dtype=np.float32)
        logits = sess.run(["logits"], feeds)[0][0]
        assert "genai_config.json" in manifest["files"]
    else:
        import torch

        from edgedistill.quantize.bnb import load_quantized

        with torch.inference_mode():
            logits = load_quantized(bundle)(torch.tensor([ids])).logits[0].numpy()
    assert logits.shape[0] == len(ids) and np.isfinite(logits).all()


def test_each_format_is_one_registered_object_with_schemes_and_a_runner(exported, tmp_path):
    """Every scheme belongs to a registered Format and every Format has schemes; the formats the offline runtime
    loads are exactly its backends; each format's validation runner reads its bundle, and for the offline ones
    the runtime's own open_logits gives the same logits (the bench worker's path)."""
    from edgedistill.quantize import bundle_name, formats
    from edgedistill.runtime.bundle import BACKENDS
    from edgedistill.runtime.logits import open_logits

    fmts = formats()
    assert set(fmts) == {s.format for s in schemes().values()}
    assert {name for name, f in fmts.items() if f.offline} == set(BACKENDS)
    from edgedistill.quantize import BuildContext

    model, out, _ = exported
    ids = [1, 5, 9, 17]
    for name, fmt in fmts.items():
        bundle = out / bundle_name(next(k for k in ALL_SCHEMES if k.startswith(name + ":")))
        main = bundle / json.loads((bundle / MANIFEST).read_text())["model_file"]
        ctx = BuildContext(model=None, tokenizer=None, model_dir=model, out_dir=Path(), work_dir=tmp_path)
        runner = fmt.runner(main, n_ctx=64, threads=1, ctx=ctx)  # the adapter's runner takes its base from ctx
        logits = runner.logits([ids])[0]
        runner.close()
        assert logits.shape[0] == len(ids) and np.isfinite(logits).all(), name
        if fmt.offline:
            same = open_logits(bundle, n_ctx=64, threads=1)
            assert np.allclose(same.logits([ids])[0], logits, atol=1e-5), name
            same.close()


def test_registered_schemes_cover_the_issue():
    for key in ("gguf:f16", "gguf:q8_0", "gguf:q4_0", "gguf:q4_k_m", "gguf:q5_k_m", "onnx:fp32", "onnx:int8",
                "onnx:int4", "torch:bnb_int8", "torch:bnb_nf4"):
        assert key in ALL_SCHEMES


@pytest.mark.parametrize("key", ["onnx:int8", "onnx:int4"])
def test_weight_only_onnx_computes_in_int8(exported, key):
    """Every MatMulNBits node carries accuracy_level 4 (int8 compute): float compute decodes many times slower."""
    import onnx

    _, out, _ = exported
    graph = onnx.load(str(out / key.replace(":", "-") / "model.onnx"), load_external_data=False).graph
    levels = [next((onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == "accuracy_level"), None)
              for n in graph.node if n.op_type == "MatMulNBits"]
    assert levels and set(levels) == {4}


@pytest.mark.slow
def test_exact_formats_reproduce_greedy_generation_of_a_peaked_model(tmp_path):
    """With larger weights the tiny model has confident, teacher-like outputs, so greedy decoding is a sharp test
    of the GGUF tensor layout (Q/K permutation, norms) and of the ONNX KV cache."""
    model = tiny.build_model_dir(tmp_path / "peaked", init_std=0.15, layers=3)
    res = export_model(str(model), tmp_path / "b", ExportSettings(variants=["gguf:f16", "onnx:fp32"], chunks=2,
                                                                   chunk_len=64))
    for r in res:
        assert r.passed, r.error
        assert r.metrics["greedy_match"] is True
        assert r.metrics["top1_agreement"] > 0.97


def test_importance_matrix_from_llama_imatrix_goes_into_the_bundle_and_changes_the_weights(tmp_path, exported):
    """--imatrix: llama.cpp's llama-imatrix over the train prompts, applied by llama-quantize; the bundle holds the
    matrix, the manifest says how it was made, and the 4-bit weights differ from those made without it."""
    import gguf

    model, plain_out, _ = exported
    out = tmp_path / "b"
    r = export_model(str(model), out, ExportSettings(variants=["gguf:q4_0"], chunks=2, chunk_len=64, imatrix=True,
                                                     imatrix_chunks=2))[0]
    assert r.passed, r.error
    manifest = json.loads((out / "gguf-q4_0" / MANIFEST).read_text())
    assert manifest["quantization"]["imatrix"]["chunks"] == 2 and "imatrix.gguf" in manifest["files"]
    assert manifest["quantization"]["options"] == {"imatrix": True, "imatrix_chunks": 2}
    matrix = gguf.GGUFReader(str(out / "gguf-q4_0" / "imatrix.gguf"))
    assert any(t.name.endswith(".in_sum2") for t in matrix.tensors)  # llama.cpp's imatrix layout, per weight
    with_m = {t.name: bytes(t.data) for t in gguf.GGUFReader(str(out / "gguf-q4_0" / "model.gguf")).tensors}
    without = {t.name: bytes(t.data) for t in gguf.GGUFReader(str(plain_out / "gguf-q4_0" / "model.gguf")).tensors}
    assert with_m.keys() == without.keys()
    assert with_m["blk.0.ffn_down.weight"] != without["blk.0.ffn_down.weight"]


@pytest.mark.slow
@pytest.mark.parametrize("key", ["gguf:q4_0", "onnx:int4"])
def test_a_variant_over_its_tolerance_is_not_written_unless_forced(tmp_path, monkeypatch, key):
    from edgedistill import quantize

    quantize.schemes()
    strict = dataclasses.replace(quantize._SCHEMES[key], max_kl=-1.0)
    monkeypatch.setitem(quantize._SCHEMES, key, strict)
    model = tiny.build_model_dir(tmp_path / "m")
    out = tmp_path / "b"
    r = export_model(str(model), out, ExportSettings(variants=[key], chunks=1, chunk_len=32))[0]
    assert not r.passed and r.path is None and "mean KL" in r.error
    assert not out.exists()  # no bundle, no temporary folders, not even the --out folder it made
    r = export_model(str(model), out, ExportSettings(variants=[key], chunks=1, chunk_len=32, force=True))[0]
    manifest = json.loads((out / key.replace(":", "-") / MANIFEST).read_text())
    assert manifest["validation"]["forced"] and not manifest["validation"]["passed"]


# --- bad input: one line, exit 2, nothing left behind ------------------------------------------------------------

def _assert_clean_failure(proc, out: Path, *words):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for w in words:
        assert w in lines[0]
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith("keep")]


@pytest.mark.slow
def test_unsupported_architecture(tmp_path):
    from transformers import OPTConfig, OPTForCausalLM

    tok = tiny.build_tokenizer()
    m = OPTForCausalLM(OPTConfig(num_hidden_layers=1, hidden_size=32, ffn_dim=64, num_attention_heads=2,
                                 word_embed_proj_dim=32, vocab_size=len(tok), max_position_embeddings=64))
    m.save_pretrained(tmp_path / "opt")
    tok.save_pretrained(tmp_path / "opt")
    out = tmp_path / "out"
    _assert_clean_failure(run_cli("export", str(tmp_path / "opt"), "--out", str(out), "--variant", "gguf:q8_0"),
                          out, "OPTForCausalLM", "converter")


def test_missing_tokenizer(tmp_path, tiny_model_dir):
    src = tmp_path / "no-tok"
    src.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / f, src / f)
    out = tmp_path / "out"
    _assert_clean_failure(run_cli("export", str(src), "--out", str(out)), out, "no tokenizer")


def test_truncated_weights(tmp_path, tiny_model_dir):
    src = tmp_path / "cut"
    shutil.copytree(tiny_model_dir, src)
    w = src / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    out = tmp_path / "out"
    _assert_clean_failure(run_cli("export", str(src), "--out", str(out)), out, "cut")


def test_unwritable_output(tmp_path, tiny_model_dir):
    out = tmp_path / "a-file"
    out.write_text("not a folder")
    proc = run_cli("export", str(tiny_model_dir), "--out", str(out))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "error: " in proc.stderr
    assert out.read_text() == "not a folder"


@pytest.mark.parametrize("variant,words", [("gguf:int4", ["gguf", "q4_k_m"]), ("onnx:q4_k_m", ["onnx", "int4"]),
                                           ("tflite:int8", ["tflite", "gguf"]), ("gguf", ["FORMAT:SCHEME"])])
def test_scheme_the_format_does_not_support(tmp_path, tiny_model_dir, variant, words):
    out = tmp_path / "out"
    _assert_clean_failure(run_cli("export", str(tiny_model_dir), "--out", str(out), "--variant", variant), out, *words)


def test_existing_bundle_is_not_overwritten(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    (out / "gguf-q8_0").mkdir(parents=True)
    (out / "gguf-q8_0" / "keep").write_text("x")
    proc = run_cli("export", str(tiny_model_dir), "--out", str(out), "--variant", "gguf:q8_0")
    assert proc.returncode == 2 and "exists already" in proc.stderr
    assert (out / "gguf-q8_0" / "keep").read_text() == "x"


def test_library_errors_are_typed(tmp_path, tiny_model_dir):
    with pytest.raises(UnsupportedError):
        export_model(str(tiny_model_dir), tmp_path, ExportSettings(variants=["gguf:nope"]))
    with pytest.raises(EdgeDistillError):
        ExportSettings(variants=["gguf:q8_0"], chunks=0)
    with pytest.raises(InvalidModelError):
        export_model(str(tmp_path), tmp_path / "o", ExportSettings())


@pytest.mark.slow
def test_cli_exports_and_prints_the_table(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    proc = run_cli("export", str(tiny_model_dir), "--out", str(out), "--variant", "gguf:q8_0", "--variant",
                   "onnx:int4", "--head-bits", "4", "--chunks", "1", "--chunk-len", "32")
    assert proc.returncode == 0, proc.stderr
    assert "gguf:q8_0" in proc.stdout and "onnx:int4" in proc.stdout and "ok" in proc.stdout
    manifest = json.loads((out / "onnx-int4" / MANIFEST).read_text())
    assert manifest["quantization"]["options"]["head_bits"] == 4


@pytest.mark.parametrize("key", ["gguf:f16", "onnx:fp32", "onnx:int4"])
def test_bundle_tokenizer_behaves_like_the_source_in_transformers(exported, key):
    """The tokenizer files of a bundle give what the source's give (inputs, special tokens, chat template), and
    the common `model.generate(**tokenizer(text, return_tensors="pt"))` runs where transformers reads the model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, out, _ = exported
    bundle = out / key.replace(":", "-")
    src, tok = AutoTokenizer.from_pretrained(model_dir), AutoTokenizer.from_pretrained(bundle)
    enc = tok("Where is my order?", return_tensors="pt")
    assert set(enc) == {"input_ids", "attention_mask"}
    assert enc["input_ids"].tolist() == src("Where is my order?", return_tensors="pt")["input_ids"].tolist()
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(tok, attr) == getattr(src, attr), attr
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        src.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if key.startswith("gguf"):  # transformers reads GGUF files (de-quantized to float)
        manifest = json.loads((bundle / MANIFEST).read_text())
        model = AutoModelForCausalLM.from_pretrained(bundle, gguf_file=manifest["model_file"]).eval()
        with torch.inference_mode():
            out_ids = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        assert out_ids.shape[1] == enc["input_ids"].shape[1] + 4


@pytest.mark.slow
def test_gguf_files_carry_name_size_and_provenance(tmp_path, tiny_model_dir):
    """general.name and general.size_label in every GGUF written; a distilled student also names its base model,
    its teacher and how it was made (llama.cpp's provenance keys)."""
    import gguf

    from edgedistill.formats.gguf import convert

    # a run's records name folders of this machine: the teacher pulled into the cache, the student prune cut
    teacher = tmp_path / "home" / "user" / ".cache" / "models" / "smollm2-135m-instruct-x"
    teacher.mkdir(parents=True)
    (teacher / "edgedistill.json").write_text(json.dumps({"registry_name": "smollm2-135m-instruct"}))
    pruned = tmp_path / "runs" / "prune" / "student"
    pruned.mkdir(parents=True)
    (pruned / "pruning.json").write_text(json.dumps({"teacher": str(teacher)}))
    student = tmp_path / "student"
    shutil.copytree(tiny_model_dir, student)
    (student / "distill.json").write_text(json.dumps({"teacher": str(teacher), "student_init": str(pruned)}))

    def fields(path: Path) -> dict:
        r = gguf.GGUFReader(path)
        return {k: f.contents() for k, f in r.fields.items() if k.startswith("general.")}

    plain = fields(convert(tiny_model_dir, tmp_path / "plain.gguf", name="tiny-llama"))
    assert plain["general.name"] == "tiny-llama" and plain["general.size_label"]
    assert "general.base_model.count" not in plain
    got = fields(convert(student, tmp_path / "student.gguf", name="student"))
    assert got["general.name"] == "student" and got["general.size_label"] == plain["general.size_label"]
    assert got["general.base_model.count"] == 1
    assert got["general.base_model.0.name"] == "smollm2-135m-instruct (pruned)"
    assert got["general.description"] == "distilled by edgedistill from the teacher smollm2-135m-instruct"
    assert not [v for v in got.values() if str(tmp_path) in str(v) or "runs/" in str(v)]  # no path of this machine
    # a folder of no known origin is named by its own name; a registry name stays as it is
    from edgedistill.formats.gguf import model_name

    assert model_name(str(tmp_path / "my-models" / "support-bot")) == "support-bot"
    assert model_name("qwen2.5-coder-0.5b-instruct") == "qwen2.5-coder-0.5b-instruct"
    assert got["general.tags"] == ["edgedistill", "distillation"]
