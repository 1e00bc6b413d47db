"""Each knob is declared once, `run` and the stage commands show the same default for it, and the earlier flag and
setting names still work for one release with a one-line notice."""

from __future__ import annotations

import ast
import collections
import dataclasses
import json
from pathlib import Path

import click

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]

# Names several stages declare, each for its own input or output (what it reads, where it writes), not a knob of
# how it works: the help says which model, file or folder that stage means.
IO = {"out", "teacher", "student", "model", "data_dir", "target", "generations", "split"}
# The same word for two different things, kept apart on purpose:
DIFFERENT = {
    "threads": "runtime threads: all cores in export and serve, the profile's in bench",
    "api_key_env": "serve: the key clients must send; engines: the key sent to the teacher",
}


def _declarations() -> dict[str, list[str]]:
    """Every `name: T = setting(...)` in a class of edgedistill/: where each field name is declared."""
    found = collections.defaultdict(list)
    for path in (ROOT / "edgedistill").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for st in node.body:
                    if (isinstance(st, ast.AnnAssign) and isinstance(st.value, ast.Call)
                            and getattr(st.value.func, "id", None) == "setting"):
                        found[st.target.id].append(f"{path.relative_to(ROOT)}:{node.name}")
    return found


def test_each_knob_is_declared_once():
    twice = {k: v for k, v in _declarations().items() if len(v) > 1 and k not in IO and k not in DIFFERENT}
    assert not twice, f"declared more than once (inherit the settings class or take it with settings.like): {twice}"
    assert _declarations()["kd_weight"] == ["edgedistill/distill/settings.py:LossSettings"]


def _options(command: click.Command) -> dict[str, click.Option]:
    return {o.opts[0]: o for o in command.params if isinstance(o, click.Option) and not o.hidden}


def test_run_and_the_stage_commands_show_the_same_defaults():
    from edgedistill.cli import cli

    commands = {name: cli.commands[name] for name in ("distill", "generate", "cache-logits", "prune", "bench")}
    run = _options(cli.commands["run"])
    shared = 0
    for name, command in commands.items():
        for flag, option in _options(command).items():
            if flag in run and flag not in ("--config", "--out", "--teacher", "--student", "--data", "--target",
                                              "--prompts"):  # IO: each its own
                assert run[flag].help == option.help, (name, flag, run[flag].help, option.help)
                shared += 1
    assert shared >= 40  # the training, loss, engine, decoding, pruning and bench knobs
    for flag, default in (("--kd-weight", "0.5"), ("--lr", "0.0005"), ("--grad-accum", "2"), ("--steps", "200"),
                          ("--teacher-engine", "llama.cpp"), ("--max-new-tokens", "128"),
                          ("--hw-friendly", "True")):
        assert f"[default: {default}]" in run[flag].help


def test_the_defaults_are_the_stage_classes_own():
    from edgedistill.settings import default_of
    from edgedistill.data.stage import GenerateSettings
    from edgedistill.distill.stage import DistillSettings, PruneSettings
    from edgedistill.pipeline import RunSettings

    run = {f.name: f for f in dataclasses.fields(RunSettings)}
    for cls in (DistillSettings, GenerateSettings, PruneSettings):
        for f in dataclasses.fields(cls):
            if f.name in run and f.name not in IO:
                assert run[f.name].metadata == f.metadata, (cls.__name__, f.name)
                assert default_of(run[f.name]) == default_of(f), f.name


def test_earlier_names_still_work_with_a_notice(tmp_path):
    # flags: distill --max-steps and --data, prune's teacher as an argument, data split --out-dir
    gen = tmp_path / "gen.jsonl"
    gen.write_text(json.dumps({"id": "a", "prompt": "hi", "response": "hello"}) + "\n")
    proc = run_cli("distill", "--student", "s", "--data", str(gen), "--max-steps", "0", "--out", str(tmp_path / "d"))
    assert proc.returncode == 2
    assert "note: --max-steps is deprecated" in proc.stderr and "use --steps" in proc.stderr
    assert "note: --data is deprecated" in proc.stderr and "steps=0 must be at least 1" in proc.stderr
    assert "generations is required" not in proc.stderr  # --data was read as --generations
    proc = run_cli("prune", str(tmp_path / "nowhere"), "--layers", "0", "--out", str(tmp_path / "p"))
    assert proc.returncode == 2 and "prune --teacher TEACHER" in proc.stderr and "layers=0" in proc.stderr
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "prompt": f"question number {i} about {i * 7}"}) + "\n"
                               for i in range(20)))
    proc = run_cli("data", "split", str(prompts), "--out-dir", str(tmp_path / "s"))
    assert proc.returncode == 0 and "--out-dir is deprecated" in proc.stderr
    assert (tmp_path / "s" / "train.jsonl").exists()
    # a settings file under the earlier key names
    old = tmp_path / "old.yaml"
    old.write_text("max_steps: 0\n")
    proc = run_cli("distill", "--config", str(old), "--student", "s", "--generations", str(gen), "--out",
                   str(tmp_path / "d2"))
    assert proc.returncode == 2 and "'max_steps'" in proc.stderr and "steps=0 must be at least 1" in proc.stderr
