"""task.yaml read and checked: every problem listed with its key; `task validate` says it in one line, exit 2."""

from __future__ import annotations

import json

import pytest
import yaml

from edgedistill.task.spec import TaskError, load_task
from tests.conftest import run_cli

SEEDS = [{"text": t, "output": o} for t, o in [("I was charged twice", "billing"), ("Where is my parcel?", "shipping"),
                                               ("Refund my card", "billing"), ("The box never came", "shipping"),
                                               ("Invoice is wrong", "billing")]]


def write(tmp_path, **over):
    task = {"name": "routing", "instructions": "Route the message.", "input": "text",
            "output": {"kind": "label", "labels": ["billing", "shipping"]}, "seeds": SEEDS, **over}
    task = {k: v for k, v in task.items() if v is not None}
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    return path


def test_a_good_task_loads_with_files_relative_to_it(tmp_path):
    (tmp_path / "inputs.jsonl").write_text(json.dumps({"text": "My order is late"}) + "\n")
    (tmp_path / "test.csv").write_text("id,text,output\nt1,Charged again,billing\n")
    t = load_task(write(tmp_path, inputs="inputs.jsonl", test="test.csv"))
    assert (t.name, len(t.seeds), len(t.inputs), len(t.test)) == ("routing", 5, 1, 1)
    assert t.test[0]["id"] == "t1" and t.gold(t.test[0]).value == "billing"
    system, user = t.messages(t.inputs[0])
    assert "billing, shipping" in system["content"] and user["content"] == "My order is late"
    assert t.messages(t.inputs[0], system=False)[0]["role"] == "user"
    assert len(t.messages(t.inputs[0], shots=t.seeds[:2])) == 6


def test_every_problem_is_listed_with_its_key(tmp_path):
    bad = write(tmp_path, name="", output={"kind": "label", "labels": ["a"], "colour": 1},
                seeds=SEEDS[:3] + [{"text": "x", "output": "refund"}], extra=1)
    with pytest.raises(TaskError) as e:
        load_task(bad)
    msg = str(e.value)
    for key in ("unknown key 'extra'", "name:", "output.labels", "output.colour"):
        assert key in msg, key
    with pytest.raises(TaskError) as e:
        load_task(write(tmp_path, seeds=SEEDS[:3] + [{"text": "x", "output": "refund"}, {"output": "billing"}]))
    msg = str(e.value)
    assert "seeds[3]: its `output` is not a valid label answer" in msg and "seeds[4]: no input" in msg
    with pytest.raises(TaskError, match="at least 5"):
        load_task(write(tmp_path, seeds=SEEDS[:4]))
    with pytest.raises(TaskError, match="output.kind: 'poem'"):
        load_task(write(tmp_path, output={"kind": "poem"}))
    with pytest.raises(TaskError, match="inputs: .*no such file"):
        load_task(write(tmp_path, inputs="missing.jsonl"))


def test_task_validate_command(tmp_path):
    r = run_cli("task", "validate", str(write(tmp_path)))
    assert r.returncode == 0 and "5 seeds" in r.stdout
    r = run_cli("task", "validate", str(write(tmp_path, output={"kind": "json"})))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "output.schema" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_example_task_of_the_readme_is_valid():
    from tests.conftest import REPO

    t = load_task(REPO / "examples" / "tasks" / "routing" / "task.yaml")
    assert t.output["kind"] == "label" and len(t.seeds) >= 5 and all("output" in r for r in t.test)


def test_ids_are_unique_across_seeds_inputs_and_test(tmp_path):
    (tmp_path / "inputs.jsonl").write_text(json.dumps({"id": "a", "text": "My order is late"}) + "\n")
    (tmp_path / "test.jsonl").write_text(json.dumps({"id": "a", "text": "Charged again", "output": "billing"}) + "\n")
    with pytest.raises(TaskError, match="the id 'a' is in inputs and in test"):
        load_task(write(tmp_path, inputs="inputs.jsonl", test="test.jsonl"))
