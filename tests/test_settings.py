"""edgedistill.settings: defaults < YAML file < overrides, every problem at once, files read through one checked
path, and the written settings loading back equal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from edgedistill.errors import EdgeDistillError
from edgedistill.settings import Settings, SettingsError, load, read_yaml_mapping, setting, write


@dataclass(frozen=True)
class Demo(Settings):
    name: str = setting(None, "A name.", required=True)
    steps: int = setting(10, "Steps.", min=1)
    rate: float = setting(0.5, "A rate.", min=0, min_open=True, max=1)
    kind: str = setting("a", "A kind.", choices=("a", "b"))
    files: list[Path] = setting([], "Files.")
    pair: tuple[int, int] | None = setting(None, "A pair.", kind="pair")
    flag: bool = setting(False, "A flag.")


def test_defaults_then_file_then_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\nsteps: 20\nrate: 1\nfiles: [a.txt]\npair: [2, 3]\n")
    s = load(Demo, cfg, {"steps": 30, "kind": None})  # None: the flag was not given
    assert (s.name, s.steps, s.rate, s.kind, s.files, s.pair) == ("x", 30, 1.0, "a", [Path("a.txt")], (2, 3))
    assert isinstance(s.rate, float)
    write(s, tmp_path / "out" / "settings.yaml")
    assert load(Demo, tmp_path / "out" / "settings.yaml") == s
    assert (tmp_path / "out" / "settings.yaml").read_text().startswith("# Demo: the resolved settings")


def test_every_problem_is_reported_at_once(tmp_path):
    with pytest.raises(SettingsError) as e:
        Demo(steps=0, rate=0.0, kind="c")
    msg = str(e.value)
    for part in ("name is required", "steps=0 must be at least 1", "rate=0.0 must be above 0", "kind='c' is not one of a, b"):
        assert part in msg
    with pytest.raises(SettingsError, match="steps: '3' is not a int"):
        Demo(name="x", steps="3")
    with pytest.raises(SettingsError, match="flag: 'yes' is not a bool"):
        Demo(name="x", flag="yes")


@pytest.mark.parametrize("content, words", [
    (b"name: x\nnot_known: 1\n", "unknown setting(s) not_known"),
    (b"name: \xff\n", "not UTF-8"),
    (b"name: [unclosed\n", "not valid YAML"),
    (b"- a\n- b\n", "must hold a mapping"),
    (b"[" * 20000 + b"]" * 20000, "nested too deeply"),
])
def test_bad_files_give_one_line(tmp_path, content, words):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(content)
    with pytest.raises(SettingsError) as e:
        load(Demo, cfg)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(SettingsError, match="cannot read settings file"):
        read_yaml_mapping(tmp_path / "nope.yaml")


def test_a_yaml_key_set_twice_is_refused_naming_it_and_both_lines(tmp_path):
    p = tmp_path / "twice.yaml"
    p.write_text("steps: 40\nlr: 0.001\nsteps: 80\n")
    with pytest.raises(EdgeDistillError, match=r"sets 'steps' twice \(line 1 and line 3\); keep one"):
        read_yaml_mapping(p)
    nested = tmp_path / "nested.yaml"
    nested.write_text("latency:\n  time_to_first_token: 1s\n  time_to_first_token: 2s\n")
    with pytest.raises(EdgeDistillError, match=r"'time_to_first_token' twice \(line 2 and line 3\)"):
        read_yaml_mapping(nested)
    merged = tmp_path / "merged.yaml"  # a merge key's values may be overridden: not a duplicate
    merged.write_text("base: &b {threads: 2, memory: 1GB}\nbox:\n  <<: *b\n  threads: 4\n")
    assert read_yaml_mapping(merged)["box"] == {"threads": 4, "memory": "1GB"}
