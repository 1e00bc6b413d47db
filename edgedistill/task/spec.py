"""A task file (task.yaml) read and checked, every problem listed with its key, like a device profile.

    name: ticket-routing
    instructions: |                 # the system prompt the teacher gets
      Route the customer's message to the team that handles it.
    input: text                     # the field of each record that holds the input ("messages": chat turns)
    output:
      kind: label                   # label | json | tool_call | code | text (task/kinds.py)
      labels: [billing, shipping, returns, technical]
    seeds:                          # at least 5 examples: records with the input field and `output`
      - {text: "I was charged twice", output: billing}
    inputs: inputs.jsonl            # optional: unlabelled inputs (JSONL, CSV or Parquet), answered by the teacher
    test: test.jsonl                # optional: held-out records with gold `output`

`seeds`, `inputs` and `test` may be lists or files (paths relative to the task file). Records may carry what the
kind reads beside the input: `tools` (tool_call), `tests` and `entry_point` (code), and an `id`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from edgedistill.errors import EdgeDistillError
from edgedistill.task.kinds import Kind, Parsed, get, kinds

MIN_SEEDS = 5
_KEYS = {"name", "instructions", "input", "output", "seeds", "inputs", "test"}
_REQUIRED = ("name", "instructions", "output", "seeds")


class TaskError(EdgeDistillError):
    """A task file or its data is not usable; the message lists every problem with its key."""


@dataclass(frozen=True)
class Task:
    name: str
    instructions: str
    input: str  # the records' input field, or "messages"
    output: dict  # the `output:` mapping, its `kind` included
    seeds: tuple[dict, ...]
    inputs: tuple[dict, ...] = ()
    test: tuple[dict, ...] = ()
    path: str = ""
    sources: dict = field(default_factory=dict)  # seeds/inputs/test: the file each came from, or "inline"

    @property
    def kind(self) -> Kind:
        return get(self.output["kind"])

    @property
    def fingerprint(self) -> str:
        """What the task asks (instructions, input field, output): two runs with one fingerprint ask the same."""
        body = json.dumps([self.instructions, self.input, self.output], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def system_prompt(self) -> str:
        hint = self.kind.instructions(self.output)
        return self.instructions.strip() + ("\n\n" + hint if hint else "")

    def messages(self, record: dict, *, system: bool = True, shots: tuple[dict, ...] = ()) -> tuple[dict, ...]:
        """The conversation that asks for `record`'s answer: the instructions as the system message (unless
        `system` is False: the student that learned them), `shots` as earlier turns (seeds with their answers), then
        the input with what the kind adds to it (an item's tools)."""
        out = [{"role": "system", "content": self.system_prompt()}] if system else []
        for s in shots:
            out += [*self._asked(s), {"role": "assistant",
                                      "content": self.kind.example(s["output"], self.output, s)}]
        return tuple(out + self._asked(record))

    def _asked(self, record: dict) -> list[dict]:
        extra = self.kind.context(self.output, record)
        if self.input == "messages":
            turns = [dict(m) for m in record["messages"]]
            if extra:
                turns[-1]["content"] = turns[-1]["content"] + "\n\n" + extra
            return turns
        return [{"role": "user", "content": str(record[self.input]) + ("\n\n" + extra if extra else "")}]

    def text_of(self, record: dict) -> str:
        """The input as text (near-duplicate checks)."""
        if self.input == "messages":
            return "\n".join(str(m.get("content", "")) for m in record["messages"])
        return str(record[self.input])

    def gold(self, record: dict) -> Parsed:
        return self.kind.gold(record["output"], self.output, record)


def _read_records(value, key: str, base: Path, field_: str, problems: list[str]) -> tuple[tuple[dict, ...], str]:
    """A list given inline, or the records of a JSONL / CSV / Parquet file (path relative to the task file)."""
    if isinstance(value, list):
        bad = [i for i, r in enumerate(value) if not isinstance(r, dict)]
        if bad:
            problems.append(f"{key}[{bad[0]}]: each record is a mapping")
            return (), "inline"
        return tuple(dict(r) for r in value), "inline"
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{key}: a list of records or a file (JSONL, CSV or Parquet)")
        return (), ""
    path = (base / value).expanduser()
    from edgedistill.data.load import DataError, read_rows

    try:
        rows = []
        for _, rec in read_rows(path, column=field_ if field_ != "messages" else "prompt"):
            if not isinstance(rec, dict):
                raise DataError(f"{path}: each record is a JSON object")
            if "prompt" in rec and field_ not in rec and field_ != "messages":
                rec[field_] = rec.pop("prompt")
            rows.append(rec)
    except DataError as e:
        problems.append(f"{key}: {e}")
        return (), str(path)
    return tuple(rows), str(path)


def _check_record(task_input: str, kind: Kind, output: dict, rec: dict, where: str, gold: bool) -> list[str]:
    problems = []
    if task_input == "messages":
        msgs = rec.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs) or msgs[-1].get("role") != "user":
            problems.append(f"{where}: `messages` must be chat turns ending with the user's")
    elif not isinstance(rec.get(task_input), str | int | float) or not str(rec.get(task_input)).strip():
        problems.append(f"{where}: no input: the field {task_input!r} (the task's `input`) is missing or empty")
    problems += [f"{where}: {p}" for p in kind.item_problems(output, rec)]
    if gold:
        if "output" not in rec:
            problems.append(f"{where}: no `output` (the gold answer)")
        elif not problems:
            g = kind.gold(rec["output"], output, rec)
            if not g.valid:
                problems.append(f"{where}: its `output` is not a valid {kind.name} answer: {g.why}")
    return problems


def load_task(path: Path | str) -> Task:
    """task.yaml read and checked: every problem in one TaskError, each with its key (and record index)."""
    from edgedistill.checked import read_yaml_mapping

    path = Path(path)
    data = read_yaml_mapping(path, "task file", TaskError)
    problems: list[str] = []
    for k in data:
        if k not in _KEYS:
            problems.append(f"unknown key {k!r} (known: {', '.join(sorted(_KEYS))})")
    for k in _REQUIRED:
        if k not in data:
            problems.append(f"missing key {k!r}")
    for k in ("name", "instructions"):
        if k in data and (not isinstance(data[k], str) or not data[k].strip()):
            problems.append(f"{k}: a non-empty string")
    task_input = data.get("input", "input")
    if not isinstance(task_input, str) or not task_input.strip():
        problems.append("input: the name of the records' input field, or messages")
        task_input = "input"
    output = data.get("output")
    kind = None
    if "output" in data:
        if not isinstance(output, dict) or "kind" not in output:
            problems.append(f"output: a mapping with a kind ({', '.join(kinds())})")
        elif output["kind"] not in kinds():
            problems.append(f"output.kind: {output['kind']!r} is not one of {', '.join(kinds())}")
        else:
            kind = get(output["kind"])
            for k in output:
                if k != "kind" and k not in kind.keys:
                    problems.append(f"output.{k}: not a key of a {kind.name} task "
                                    f"(known: {', '.join(('kind', *kind.keys))})")
            problems += kind.problems(output)
    base = path.parent
    sources, read = {}, {}
    for k in ("seeds", "inputs", "test"):
        if k in data:
            read[k], sources[k] = _read_records(data[k], k, base, task_input, problems)
    if kind is not None and not problems:
        for k, gold in (("seeds", True), ("inputs", False), ("test", True)):
            for i, rec in enumerate(read.get(k, ())):
                problems += _check_record(task_input, kind, output, rec, f"{k}[{i}]", gold)
                if len(problems) > 20:
                    break
        if "seeds" in read and len(read["seeds"]) < MIN_SEEDS:
            problems.append(f"seeds: {len(read['seeds'])} given, a task needs at least {MIN_SEEDS}")
    if problems:
        shown = problems[:20] + ([f"... and more ({len(problems) - 20} not shown)"] if len(problems) > 20 else [])
        raise TaskError(f"task file {path}: " + "; ".join(shown))
    sets = {k: _with_ids(read.get(k, ()), k) for k in ("seeds", "inputs", "test")}
    seen: dict[str, str] = {}
    for k, records in sets.items():  # answers are kept by id: one id, one record, across the three sets
        for r in records:
            if r["id"] in seen:
                raise TaskError(f"task file {path}: the id {r['id']!r} is in {seen[r['id']]} and in {k}; ids must be "
                                "unique across seeds, inputs and test")
            seen[r["id"]] = k
    return Task(name=data["name"].strip(), instructions=data["instructions"], input=task_input, output=dict(output),
                seeds=sets["seeds"], inputs=sets["inputs"], test=sets["test"], path=str(path), sources=sources)


def _with_ids(records: tuple[dict, ...], key: str) -> tuple[dict, ...]:
    """Every record with an id (its own, else seed-N / input-N / test-N); ids unique within the set."""
    prefix = {"seeds": "seed", "inputs": "input"}.get(key, key)
    out, seen = [], set()
    for i, r in enumerate(records):
        rid = str(r.get("id", f"{prefix}-{i}"))
        if rid in seen:
            raise TaskError(f"{key}: the id {rid!r} is used twice; ids must be unique")
        seen.add(rid)
        out.append({**r, "id": rid})
    return tuple(out)
