"""The output kinds of a task: what an answer must look like, how it is read, and how it is scored.

  label      one of a closed set of labels                  accuracy, macro-F1
  json       a JSON object valid against a JSON schema      exact match of the object, field-level F1
  tool_call  one call of one of the task's (or item's) tools the call's match as BFCL scores it
  code       Python, run against the item's tests           pass@1 (in the sandbox: task/sandbox.py)
  text       free text                                      chrF

Each kind reads its part of the task file (`output:`), adds the format the answer must take to the instructions,
parses an answer into a value (valid or not, and why), and scores a value against a reference: a gold answer from
the task's test file, or the teacher's own answer (agreement). Adding a kind is one `@register` class and a test
that runs it (tests/task).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

_KINDS: dict[str, Kind] = {}


@dataclass(frozen=True)
class Parsed:
    """An answer as its kind reads it: valid (parses and obeys the task's constraints) with its value, or why not."""

    valid: bool
    value: object = None
    why: str = ""


def register(cls):
    _KINDS[cls.name] = cls()
    return cls


def kinds() -> dict[str, Kind]:
    return dict(_KINDS)


def get(name: str) -> Kind:
    return _KINDS[name]


class Kind:
    name = ""
    metric = ""  # the headline metric (a key of `score`'s result)
    keys: tuple[str, ...] = ()  # what `output:` may hold besides `kind`
    max_new_tokens = 256  # a default answer length for the kind
    agreement = True  # another model's answer is a reference (code: only tests are)

    def problems(self, output: dict) -> list[str]:
        """What is wrong with the task file's `output:` mapping for this kind."""
        return []

    def item_problems(self, output: dict, record: dict) -> list[str]:
        """What an input record lacks for this kind (a tool_call item without tools, a code item without tests)."""
        return []

    def instructions(self, output: dict) -> str:
        """The answer's format, appended to the task's instructions."""
        return ""

    def context(self, output: dict, record: dict) -> str:
        """What of the record goes with its input (an item's own tools), appended to the user's message."""
        return ""

    def parse(self, text: str, output: dict, record: dict) -> Parsed:
        raise NotImplementedError

    def score(self, value, reference, output: dict, record: dict) -> dict[str, float]:
        """Per-item metrics of a valid value against a reference (a gold answer, or the teacher's value)."""
        raise NotImplementedError

    def zero(self) -> dict[str, float]:
        """The metrics of an answer that did not parse."""
        return {self.metric: 0.0}

    def gold(self, answer, output: dict, record: dict) -> Parsed:
        """A gold answer from the task file, read as a reference (by default: parsed like a model's answer, from its
        JSON text when it is not a string)."""
        text = answer if isinstance(answer, str) else json.dumps(answer)
        return self.parse(text, output, record)

    def example(self, answer, output: dict, record: dict) -> str:
        """A gold answer written as a model should answer (what a few-shot example shows)."""
        return answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)

    def summary(self, values: Sequence, references: Sequence, output: dict) -> dict[str, float]:
        """Metrics over the whole set that are not means of per-item ones (macro-F1). Invalid values are None."""
        return {}

    def constraint(self, output: dict, record: dict) -> dict:
        """The structured-output request (runtime and serve: response_format, or tools with tool_choice) under
        which a model's answer to `record` always parses as this kind; {} where none applies (free text, code)."""
        return {}


# ------------------------------------------------------------------------------------------------------ helpers


_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\s*\n?(.*?)```", re.S)


def _unfenced(text: str) -> str:
    m = _FENCE.search(text)
    return m.group(1) if m else text


def first_json(text: str):
    """The first JSON value (object or array) in `text`, code fences and surrounding words allowed; raises
    ValueError when there is none."""
    body = _unfenced(text)
    decoder = json.JSONDecoder()
    for i, ch in enumerate(body):
        if ch in "{[":
            try:
                return decoder.raw_decode(body, i)[0]
            except (json.JSONDecodeError, RecursionError):
                continue
    raise ValueError("no JSON object in the answer")


def _normal(v):
    """A value as BFCL compares it: strings lower-cased without spaces and the punctuation ,./-_*^; containers
    element-wise; numbers as numbers (an int is accepted for a float)."""
    if isinstance(v, str):
        return re.sub(r"[ ,./\-_*^]", "", v).lower()
    if isinstance(v, list | tuple):
        return [_normal(x) for x in v]
    if isinstance(v, dict):
        return {k: _normal(x) for k, x in v.items()}
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return float(v)
    return v


def _leaves(obj, prefix: str = "") -> dict[str, object]:
    """A JSON value flattened to path -> leaf (lists by index), for field-level scores."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    if isinstance(obj, list):
        out = {}
        for i, v in enumerate(obj):
            out.update(_leaves(v, f"{prefix}[{i}]"))
        return out or {prefix: []}
    return {prefix: obj}


# ------------------------------------------------------------------------------------------------------ kinds


@register
class Label(Kind):
    name = "label"
    metric = "accuracy"
    keys = ("labels",)
    max_new_tokens = 16

    def problems(self, output: dict) -> list[str]:
        labels = output.get("labels")
        if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) and x.strip() for x in labels):
            return ["output.labels: a label task needs a list of at least two label names (strings)"]
        lowered = [x.strip().lower() for x in labels]
        if len(set(lowered)) != len(lowered):
            return ["output.labels: two labels differ only in case or spaces; keep one"]
        return []

    def instructions(self, output: dict) -> str:
        return "Answer with exactly one of these labels and nothing else: " + ", ".join(output["labels"]) + "."

    def constraint(self, output: dict, record: dict) -> dict:
        return {"response_format": {"type": "choice", "choices": list(output["labels"])}}

    def parse(self, text: str, output: dict, record: dict) -> Parsed:
        said = text.strip().strip("`'\"*").strip()
        by_lower = {x.lower(): x for x in output["labels"]}
        if said.lower().rstrip(".") in by_lower:
            return Parsed(True, by_lower[said.lower().rstrip(".")])
        # a label said first, then words ("billing. The customer ..."): the longest label the answer starts with
        for low in sorted(by_lower, key=len, reverse=True):
            if said.lower().startswith(low) and not said[len(low):len(low) + 1].isalnum():
                return Parsed(True, by_lower[low])
        return Parsed(False, None, "not one of the labels")

    def score(self, value, reference, output: dict, record: dict) -> dict[str, float]:
        return {"accuracy": float(value == reference)}

    def summary(self, values: Sequence, references: Sequence, output: dict) -> dict[str, float]:
        f1s = []
        for label in output["labels"]:
            tp = sum(v == label and r == label for v, r in zip(values, references))
            fp = sum(v == label and r != label for v, r in zip(values, references))
            fn = sum(v != label and r == label for v, r in zip(values, references))
            if tp + fp + fn:
                f1s.append(2 * tp / (2 * tp + fp + fn))
        return {"macro_f1": sum(f1s) / len(f1s)} if f1s else {}


@register
class Json(Kind):
    name = "json"
    metric = "exact"
    keys = ("schema",)

    def problems(self, output: dict) -> list[str]:
        schema = output.get("schema")
        if not isinstance(schema, dict):
            return ["output.schema: a json task needs a JSON schema (a mapping)"]
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as e:
            return [f"output.schema: not a valid JSON schema: {e.message}"]
        return []

    def instructions(self, output: dict) -> str:
        return ("Answer with one JSON object and nothing else, valid against this JSON schema: "
                + json.dumps(output["schema"], ensure_ascii=False))

    def constraint(self, output: dict, record: dict) -> dict:
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "answer",
                                                                           "schema": output["schema"]}}}

    def parse(self, text: str, output: dict, record: dict) -> Parsed:
        from jsonschema import Draft202012Validator

        try:
            value = first_json(text)
        except ValueError as e:
            return Parsed(False, None, str(e))
        error = next(iter(Draft202012Validator(output["schema"]).iter_errors(value)), None)
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "the object"
            return Parsed(False, value, f"{where}: {error.message}")
        return Parsed(True, value)

    def score(self, value, reference, output: dict, record: dict) -> dict[str, float]:
        got, want = _leaves(_normal(value)), _leaves(_normal(reference))
        same = sum(1 for k, v in got.items() if k in want and want[k] == v)
        f1 = 2 * same / (len(got) + len(want)) if got or want else 1.0
        return {"exact": float(_normal(value) == _normal(reference)), "field_f1": f1}

    def zero(self) -> dict[str, float]:
        return {"exact": 0.0, "field_f1": 0.0}


def _functions(output: dict, record: dict) -> list[dict]:
    """The tools an item may call, as bare function definitions (name, description, parameters): the item's own
    `tools`, else the task's; OpenAI's {"type": "function", "function": {...}} form is unwrapped."""
    tools = record.get("tools") if record.get("tools") is not None else output.get("tools")
    return [t.get("function", t) if isinstance(t, dict) and t.get("type") == "function" else t for t in tools or []]


def _tools_problems(tools, where: str) -> list[str]:
    if not isinstance(tools, list) or not tools:
        return [f"{where}: a list of at least one tool (OpenAI's tools, or bare function definitions)"]
    problems = []
    for i, t in enumerate(tools):
        f = t.get("function", t) if isinstance(t, dict) and t.get("type") == "function" else t
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not f["name"]:
            problems.append(f"{where}[{i}]: a tool needs a name")
        elif "parameters" in f and not isinstance(f["parameters"], dict):
            problems.append(f"{where}[{i}] ({f['name']}): parameters must be a JSON schema object")
    return problems


@register
class ToolCall(Kind):
    """One call, as {"name": ..., "arguments": {...}}. A gold call may give, per argument, the values BFCL accepts:
    {"name": ..., "allowed": {"arg": [value, ...]}}, "" among them meaning the argument may be left out."""

    name = "tool_call"
    metric = "correct"
    keys = ("tools",)

    def problems(self, output: dict) -> list[str]:
        return _tools_problems(output["tools"], "output.tools") if "tools" in output else []

    def item_problems(self, output: dict, record: dict) -> list[str]:
        if record.get("tools") is not None:
            return _tools_problems(record["tools"], "tools")
        return [] if output.get("tools") else ["no tools: give output.tools in the task or `tools` in each record"]

    def instructions(self, output: dict) -> str:
        return ('Answer with one function call as a JSON object and nothing else: {"name": "<function name>", '
                '"arguments": {"<parameter>": <value>, ...}}.')

    def context(self, output: dict, record: dict) -> str:
        return "Functions:\n" + json.dumps(_functions(output, record), ensure_ascii=False)

    def constraint(self, output: dict, record: dict) -> dict:
        return {"tools": [{"type": "function", "function": f} for f in _functions(output, record)],
                "tool_choice": "required"}

    def parse(self, text: str, output: dict, record: dict) -> Parsed:
        try:
            call = first_json(text)
        except ValueError as e:
            return Parsed(False, None, str(e))
        if isinstance(call, list) and len(call) == 1:
            call = call[0]
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            call = call["function"]
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return Parsed(False, None, "not a call: an object with a name and arguments")
        args = call.get("arguments", call.get("parameters", {}))
        if isinstance(args, str):  # OpenAI's tool_calls carry the arguments as JSON text
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return Parsed(False, None, "the arguments are not JSON")
        if not isinstance(args, dict):
            return Parsed(False, None, "the arguments are not an object")
        fn = next((f for f in _functions(output, record) if f.get("name") == call["name"]), None)
        if fn is None:
            return Parsed(False, None, f"no tool named {call['name']!r}")
        params = (fn.get("parameters") or {}).get("properties") or {}
        unknown = sorted(set(args) - set(params))
        if params and unknown:
            return Parsed(False, None, f"{call['name']} has no parameter {unknown[0]!r}")
        missing = [p for p in (fn.get("parameters") or {}).get("required") or [] if p not in args]
        if missing:
            return Parsed(False, None, f"{call['name']} needs {missing[0]!r}")
        return Parsed(True, {"name": call["name"], "arguments": args})

    def gold(self, answer, output: dict, record: dict) -> Parsed:
        if isinstance(answer, dict) and "allowed" in answer:
            allowed = answer.get("allowed")
            if not isinstance(answer.get("name"), str) or not isinstance(allowed, dict) or not all(
                    isinstance(v, list) for v in allowed.values()):
                return Parsed(False, None, 'a gold call with "allowed" needs a name and a list of values per argument')
            return Parsed(True, {"name": answer["name"], "allowed": allowed})
        return super().gold(answer, output, record)

    def example(self, answer, output: dict, record: dict) -> str:
        if isinstance(answer, dict) and isinstance(answer.get("allowed"), dict):  # each argument's first value
            args = {k: next(v for v in options if v != "") for k, options in answer["allowed"].items()
                    if any(v != "" for v in options)}
            answer = {"name": answer["name"], "arguments": args}
        return super().example(answer, output, record)

    def score(self, value, reference, output: dict, record: dict) -> dict[str, float]:
        if value["name"] != reference["name"]:
            return {"correct": 0.0}
        args = value["arguments"]
        if "allowed" not in reference:  # another call's exact values (the teacher's answer)
            same = _normal(args) == _normal(reference["arguments"])
            return {"correct": float(same)}
        allowed = reference["allowed"]
        for name, options in allowed.items():
            if name not in args:
                if "" not in options:
                    return {"correct": 0.0}
                continue
            if _normal(args[name]) not in [_normal(o) for o in options if o != ""]:
                return {"correct": 0.0}
        return {"correct": float(set(args) <= set(allowed))}


@register
class Code(Kind):
    """Python source; the item's `tests` (Python that raises on a wrong answer, e.g. HumanEval's `check`, called
    with the item's `entry_point` when it names one) decide, run in the sandbox."""

    name = "code"
    metric = "pass"
    keys = ("timeout_s", "memory_mb")
    max_new_tokens = 512
    agreement = False

    def problems(self, output: dict) -> list[str]:
        problems = []
        for key, lo, hi in (("timeout_s", 0.1, 600), ("memory_mb", 64, 65536)):
            v = output.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi):
                problems.append(f"output.{key}: a number in [{lo}, {hi}], got {v!r}")
        return problems

    def item_problems(self, output: dict, record: dict) -> list[str]:
        return [] if isinstance(record.get("tests"), str) and record["tests"].strip() else [
            "no tests: a code item needs `tests` (Python that fails on a wrong answer)"]

    def instructions(self, output: dict) -> str:
        return "Answer with the complete Python code in one ```python code block."

    def parse(self, text: str, output: dict, record: dict) -> Parsed:
        source = _unfenced(text).strip()
        if not source:
            return Parsed(False, None, "no code")
        try:
            ast.parse(source)
        except SyntaxError as e:
            return Parsed(False, None, f"not valid Python (line {e.lineno}: {e.msg})")
        return Parsed(True, source)

    def gold(self, answer, output: dict, record: dict) -> Parsed:
        return Parsed(True, None)  # the tests are the reference

    def score(self, value, reference, output: dict, record: dict) -> dict[str, float]:
        from edgedistill.task.sandbox import run_python

        program = value + "\n\n" + record["tests"] + (f"\n\ncheck({record['entry_point']})\n"
                                                      if record.get("entry_point") else "\n")
        result = run_python(program, timeout_s=float(output.get("timeout_s", 10)),
                            memory_mb=int(output.get("memory_mb", 512)))
        return {"pass": float(result.ok)}


@register
class Text(Kind):
    name = "text"
    metric = "chrf"
    max_new_tokens = 256

    def parse(self, text: str, output: dict, record: dict) -> Parsed:
        return Parsed(True, text.strip()) if text.strip() else Parsed(False, None, "empty")

    def score(self, value, reference, output: dict, record: dict) -> dict[str, float]:
        from edgedistill.data.text_fidelity import chrf

        return {"chrf": chrf(value, reference)}
