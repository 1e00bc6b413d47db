"""Classes of user mistakes, each through the real CLI: one line on stderr, exit code 2, nothing written.

One test per class (not per example): an output that cannot be written is refused before any model loads, for
every command that writes.
"""

from __future__ import annotations

import json

import pytest

from tests import tiny
from tests.conftest import run_cli


def _one_line(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-500:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture
def broken_model(tmp_path):
    """A model folder whose config.json is not JSON: loading it first would give a model error, not an --out one."""
    d = tmp_path / "broken-model"
    d.mkdir()
    (d / "config.json").write_text("{not json")
    (d / "model.safetensors").write_bytes(b"\0" * 64)
    return d


def _writing_commands(tmp_path, model):
    """Every command that writes, with its output placed under a plain file (no folder can be made there, for
    any user, root included) and every input it reads before writing pointed at `model` or a real small file."""
    blocked = tmp_path / "blocker"
    blocked.write_text("a file, not a folder\n")
    gen = tmp_path / "gen.jsonl"
    gen.write_text('{"id": "a", "messages": [{"role": "user", "content": "hi"}], "response": "hello"}\n')
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "hi"}\n{"id": "b", "prompt": "where is my order"}\n')
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")  # found as a bundle; read only after the --out check
    out = blocked / "out"
    return {
        "generate": ["generate", "--teacher-engine", "torch", "--teacher", str(model), "--split", "train", "--limit", "1", "--out",
                     str(out / "g.jsonl")],
        "prune": ["prune", "--teacher", str(model), "--layers", "1", "--teacher-width", "--out", str(out)],
        "cache-logits": ["cache-logits", "--teacher-engine", "torch", "--teacher", str(model), "--generations", str(gen), "--out", str(out)],
        "distill": ["distill", "--teacher", str(model), "--student", str(model), "--generations", str(gen), "--out",
                    str(out)],
        "export": ["export", str(model), "--out", str(out)],
        "bench": ["bench", str(bundle), "--target", "laptop", "--out", str(out)],
        "eval": ["eval", str(model), "--limit", "1", "--out", str(out / "graded.json")],
        "run": ["run", "--target", "laptop", "--teacher", str(model), "--out", str(out)],
        "safety reapply": ["safety", "reapply", "--student", str(model), "--teacher", str(model), "--out", str(out)],
        "safety eval": ["safety", "eval", str(model), "--out", str(out / "safety.json")],
        "data split": ["data", "split", str(prompts), "--out", str(out)],
    }


@pytest.mark.slow
def test_an_unwritable_output_is_refused_before_any_model_loads(tmp_path, broken_model):
    failures = {}
    for name, args in _writing_commands(tmp_path, broken_model).items():
        proc = run_cli(*args)
        try:
            line = _one_line(proc)
            assert "blocker" in line and "writable" in line, line
            assert "EDGEDISTILL_HOME" not in line, line
        except AssertionError as e:
            failures[name] = str(e).splitlines()[0][:300]
    assert not failures, "\n".join(f"{k}: {v}" for k, v in failures.items())


def _copy_model(src, dst, drop=()):
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop))
    return dst


def _tiny_phi3(out):
    """A tiny Phi-3 (fused qkv and gate/up projections) with the tiny tokenizer."""
    from transformers import Phi3Config, Phi3ForCausalLM

    tok = tiny.build_tokenizer()
    cfg = Phi3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    Phi3ForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.mark.slow
def test_files_users_hand_us_are_read_through_one_checked_path(tmp_path, tiny_model_dir):
    """Missing tokenizer, bad encoding, truncated file, bad unit, deep nesting, unsupported layout: one line."""
    no_tok = _copy_model(tiny_model_dir, tmp_path / "no-tokenizer", drop=("tokenizer*", "special_tokens_map.json",
                                                                           "chat_template.jinja"))
    latin1 = tmp_path / "prompts.jsonl"
    latin1.write_bytes('{"id": "a", "prompt": "caf\u00e9"}\n'.encode("latin-1"))
    profile = tmp_path / "box.yaml"
    profile.write_bytes("name: bo\u00eete\n".encode("latin-1"))
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 20000 + "]" * 20000 + "\n")
    gen = tmp_path / "gen.jsonl"
    gen.write_text('{"id": "a", "messages": [{"role": "user", "content": "Where is my order?"}], '
                   '"response": "It ships on Monday."}\n')
    proc = run_cli("cache-logits", "--teacher-engine", "torch", "--teacher", str(tiny_model_dir), "--generations", str(gen), "--out",
                   str(tmp_path / "cache"), "--k", "4")
    assert proc.returncode == 0, proc.stderr
    topk = tmp_path / "cache" / "shard-00000.safetensors"
    topk.write_bytes(topk.read_bytes()[: topk.stat().st_size // 2])
    phi3 = _tiny_phi3(tmp_path / "phi3")
    d = ["--teacher", str(tiny_model_dir), "--student", str(tiny_model_dir), "--generations", str(gen)]
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    suite = tmp_path / "suite-data" / "safety" / "test.jsonl"
    suite.parent.mkdir(parents=True)
    suite.write_text('{"id": "s1", "kind": "harmful", "category": "harassment", '
                     '"messages": [{"role": "user", "content": 5}]}\n')
    gen_number = tmp_path / "gen-number.jsonl"
    gen_number.write_text('{"id": "a", "messages": [{"role": "user", "content": 5}], "response": "hi"}\n')
    laughs = tmp_path / "laughs.yaml"  # aliases that expand to 9**9 values
    laughs.write_text("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"{q}: &{q} [{', '.join([f'*{p}'] * 9)}]\n" for p, q in zip("abcdefgh", "bcdefghi")) + "name: *i\n")
    cases = {
        "models ask, no tokenizer": (["models", "ask", str(no_tok), "hi"], "no tokenizer files"),
        "generate, no tokenizer": (["generate", "--teacher-engine", "torch", "--teacher", str(no_tok), "--split", "train", "--limit",
                                                   "1", "--out", str(tmp_path / "g.jsonl")], "no tokenizer files"),
        "prune, no tokenizer": (["prune", "--teacher", str(no_tok), "--layers", "1", "--teacher-width", "--out", str(tmp_path / "p")],
                                "no tokenizer files"),
        "generate, latin-1 prompts": (["generate", "--teacher-engine", "torch", "--teacher", str(tiny_model_dir), "--prompts", str(latin1),
                                       "--out", str(tmp_path / "g2.jsonl")], "not UTF-8"),
        "targets show, latin-1 profile": (["targets", "show", str(profile)], "not UTF-8"),
        "targets show, deep profile": (["targets", "show", str(deep)], "nested too deeply"),
        "distill --config, deep": (["distill", "--config", str(deep), *d, "--out", str(tmp_path / "d1")],
                                   "nested too deeply"),
        "distill, truncated cache": (["distill", *d, "--logit-cache", str(tmp_path / "cache"), "--out",
                                      str(tmp_path / "d2")], "truncated"),
        "bench, bad unit": (["bench", str(tmp_path), "--target", "laptop", "--bandwidth", "fast"], "bandwidth"),
        "models info, only a config.json": (["models", "info", str(config_only)], "but no weights (*.safetensors) "
                                                                                  "and no tokenizer files"),
        "safety eval, a number as message content": (["safety", "eval", str(tiny_model_dir), "--data",
                                                      str(suite.parent.parent)], "test.jsonl:1: message 0 needs"),
        "distill, a number as message content": (["distill", "--teacher", str(tiny_model_dir), "--student",
                                                  str(tiny_model_dir), "--generations", str(gen_number), "--out",
                                                  str(tmp_path / "d3")], "gen-number.jsonl:1: message 0 needs"),
        "targets show, an alias bomb": (["targets", "show", str(laughs)], "expands through its aliases"),
        "generate, a 100,000-character URL (the line is capped)": (
            ["generate", "--teacher-engine", "openai", "--teacher-model", "m", "--teacher-url",
             "http://[" + "x" * 100_000, "--split", "train", "--out", str(tmp_path / "g3.jsonl")], "characters cut"),
        "prune, phi3 shape llama.cpp cannot load": (["prune", "--teacher", str(phi3), "--hidden", "48", "--heads", "2", "--kv-heads",
                                                      "1", "--teacher-width", "--out", str(tmp_path / "p3")], "heads x head_dim = hidden"),
    }
    failures = {}
    for name, (args, expect) in cases.items():
        proc = run_cli(*args)
        try:
            line = _one_line(proc)
            assert expect in line and len(line) < 1100, line[:300]
        except AssertionError as e:
            failures[name] = str(e).splitlines()[0][:300]
    assert not failures, "\n".join(f"{k}: {v}" for k, v in failures.items())
    assert not (tmp_path / "p").exists() and not (tmp_path / "d2" / "student").exists()
    assert not (tmp_path / "d3").exists()


@pytest.mark.slow
def test_files_that_lie_are_called_what_they_are(tmp_path, tiny_model_dir):
    """A weight file cut short, a GGUF that is only its magic, a prompts line that is not JSON under --skip-bad."""
    cut = _copy_model(tiny_model_dir, tmp_path / "cut")
    w = cut / "model.safetensors"
    w.write_bytes(w.read_bytes()[:20_000])
    assert "truncated" in _one_line(run_cli("models", "info", str(cut)))
    magic = tmp_path / "magic.gguf"
    magic.write_bytes(b"GGUF")
    line = _one_line(run_cli("models", "info", str(magic)))
    assert "truncated" in line and "does not start" not in line
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Where is my order?"}\n{"id": "b", "prompt": \n'
                       '{"id": "c", "prompt": "Hi"}\n')
    out = tmp_path / "g.jsonl"
    proc = run_cli("generate", "--teacher-engine", "torch", "--teacher", str(tiny_model_dir), "--prompts", str(prompts), "--skip-bad",
                   "--max-new-tokens", "4", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 malformed" in proc.stderr + proc.stdout
    assert sorted(json.loads(x)["id"] for x in out.read_text().splitlines()) == ["a", "c"]


def test_click_usage_errors_are_one_line_too():
    for args, expect in ((["distill", "--no-such-flag"], "no such option"), (["models", "ask"], "missing argument"),
                         (["generate", "--batch-size", "abc"], "abc"), (["nosuch"], "no such command")):
        line = _one_line(run_cli(*args))
        assert expect in line.lower() and "--help" in line, line
