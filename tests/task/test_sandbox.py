"""The sandbox that runs model-written code: a loop, a fork, a 10 GB allocation, a write outside its folder and a
secret in the environment each stay inside it."""

from __future__ import annotations

from edgedistill.task.sandbox import run_python


def test_a_plain_program_runs_and_fails_honestly():
    assert run_python("print(6 * 7)").stdout.strip() == "42"
    r = run_python("assert 1 == 2")
    assert not r.ok and "AssertionError" in r.stderr


def test_an_infinite_loop_is_stopped():
    r = run_python("while True:\n    pass\n", timeout_s=1)
    assert not r.ok and r.returncode != 0


def test_no_process_is_started():
    for program in ("import os\nos.fork()", "import subprocess\nsubprocess.run(['true'])", "import os\nos.system('true')",
                    "import ctypes\nctypes.CDLL(None).fork()"):
        r = run_python(program)
        assert not r.ok and ("sandbox" in r.stderr or "Error" in r.stderr), program


def test_memory_is_capped():
    r = run_python("x = bytearray(10 * 1024 ** 3)\nprint('allocated')", memory_mb=256)
    assert not r.ok and "allocated" not in r.stdout and "MemoryError" in r.stderr


def test_writes_stay_in_the_scratch_folder(tmp_path):
    target = tmp_path / "escaped.txt"
    r = run_python(f"open({str(target)!r}, 'w').write('x')")
    assert not r.ok and not target.exists() and "outside the scratch folder" in r.stderr
    assert run_python("open('mine.txt', 'w').write('x')\nprint(open('mine.txt').read())").stdout.strip() == "x"


def test_no_secret_is_inherited(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-model-code")
    r = run_python("import os\nprint(os.environ.get('OPENAI_API_KEY'))")
    assert r.ok and r.stdout.strip() == "None"
