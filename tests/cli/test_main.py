"""The CLI as a user meets it: fast help, one-line errors with exit code 2, tracebacks only with --verbose."""

import json
import subprocess
import sys

import pytest

from tests import tiny
from tests.conftest import REPO, run_cli


def _one_line_error(proc):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_help_imports_no_heavy_library():
    code = (
        "import sys\n"
        "from edgedistill.cli import cli\n"
        "try:\n    cli(['--help'], prog_name='edgedistill')\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "try:\n    cli(['models', '--help'], prog_name='edgedistill')\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'onnxruntime', 'llama_cpp', 'gguf') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY=\n" in proc.stdout, proc.stdout
    assert "models" in proc.stdout and "pull" in proc.stdout


def test_unknown_model_is_one_line():
    line = _one_line_error(run_cli("models", "info", "no-such-model"))
    assert "unknown model 'no-such-model'" in line


def test_verbose_shows_traceback():
    proc = run_cli("--verbose", "models", "info", "no-such-model")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "ModelNotFoundError" in proc.stderr


def test_pull_unknown_name():
    assert "models that can be pulled" in _one_line_error(run_cli("models", "pull", "no-such-model"))


def test_dir_without_config(tmp_path):
    assert "has no config.json" in _one_line_error(run_cli("models", "info", str(tmp_path)))


def test_corrupt_and_truncated_gguf(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"\x00" * 1000)
    assert "not a GGUF file" in _one_line_error(run_cli("models", "info", str(junk)))
    good = tiny.write_small_gguf(tmp_path / "good.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:-100])
    assert "truncated" in _one_line_error(run_cli("models", "info", str(cut)))


def test_hub_id_offline():
    line = _one_line_error(run_cli("models", "info", "org/model", env={"HF_HUB_OFFLINE": "1"}))
    assert "not reachable" in line and "local directory" in line


def test_info_json_on_tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    proc = run_cli("models", "info", str(tiny_model_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert info["layers"] == 2 and info["hidden_size"] == 64 and info["kv_heads"] == 2
    assert info["parameters"] == model.num_parameters()
    assert info["chat_template"] is True and info["tied_embeddings"] is True


def test_ask_tiny_model(tiny_model_dir):
    proc = run_cli("models", "ask", str(tiny_model_dir), "Where is my order?", "--max-new-tokens", "5")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("args", [["models", "ask", "x", "hi", "--max-new-tokens", "0"], ["models", "nosuch"]])
def test_usage_errors_exit_2(args):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_list_shows_default_teacher_not_pulled():
    proc = run_cli("models", "list")
    assert proc.returncode == 0, proc.stderr
    assert "smollm2-135m-instruct" in proc.stdout and "no" in proc.stdout


def test_runtime_only_install_gets_a_clear_message():
    """With torch missing (as in `edgedistill[runtime]`), a toolchain command says what to install."""
    code = "import sys; sys.modules['torch'] = None; from edgedistill.cli import main; main()"
    proc = subprocess.run([sys.executable, "-c", code, "models", "pull"], capture_output=True, text=True, cwd=REPO)
    line = _one_line_error(proc)
    assert "pip install 'edgedistill[full]'" in line
