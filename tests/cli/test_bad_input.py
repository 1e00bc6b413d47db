"""Classes of user mistakes, each through the real CLI: one line on stderr, exit code 2, nothing written.

One test per class (not per example): an output that cannot be written is refused before any model loads, for
every command that writes.
"""

from __future__ import annotations

import pytest

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
        "generate": ["generate", "--teacher", str(model), "--split", "train", "--limit", "1", "--out",
                     str(out / "g.jsonl")],
        "prune": ["prune", str(model), "--layers", "1", "--out", str(out)],
        "cache-logits": ["cache-logits", "--teacher", str(model), "--data", str(gen), "--out", str(out)],
        "distill": ["distill", "--teacher", str(model), "--student", str(model), "--data", str(gen), "--out",
                    str(out)],
        "export": ["export", str(model), "--out", str(out)],
        "bench": ["bench", str(bundle), "--target", "laptop", "--out", str(out)],
        "eval": ["eval", str(model), "--limit", "1", "--json-out", str(out / "graded.json")],
        "run": ["run", "--target", "laptop", "--teacher", str(model), "--out", str(out)],
        "safety reapply": ["safety", "reapply", "--student", str(model), "--teacher", str(model), "--out", str(out)],
        "safety eval": ["safety", "eval", str(model), "--out", str(out / "safety.json")],
        "data split": ["data", "split", str(prompts), "--out-dir", str(out)],
    }


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
