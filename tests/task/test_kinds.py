"""Every registered output kind: reads a good answer, refuses a bad one with a reason, and scores against gold and
against another model's answer. A kind registered without a case here fails the suite."""

from __future__ import annotations

import pytest

from edgedistill.task.kinds import get, kinds

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                   "required": ["city"]}}}]
SCHEMA = {"type": "object", "properties": {"order": {"type": "string"}, "qty": {"type": "integer"},
                                           "tags": {"type": "array", "items": {"type": "string"}}},
          "required": ["order", "qty"]}

# kind: (output spec, record, good answer, its headline metric vs gold, bad answer, gold)
CASES = {
    "label": ({"labels": ["billing", "shipping"]}, {}, "Shipping.", 1.0, "maybe refunds", "shipping"),
    "json": ({"schema": SCHEMA}, {}, '```json\n{"order": "NW-1", "qty": 2}\n```', 1.0, '{"order": "NW-1"}',
             {"order": "nw-1", "qty": 2}),
    "tool_call": ({"tools": TOOLS}, {}, 'Sure: {"name": "get_weather", "arguments": {"city": "New York"}}', 1.0,
                  '{"name": "get_time", "arguments": {}}',
                  {"name": "get_weather", "allowed": {"city": ["new york", "NYC"], "unit": ["", "celsius"]}}),
    "code": ({"timeout_s": 5}, {"tests": "def check(f):\n    assert f(2, 3) == 5\n", "entry_point": "add"},
             "```python\ndef add(a, b):\n    return a + b\n```", 1.0, "def add(a, b) return", None),
    "text": ({}, {}, "The parcel ships on Monday.", None, "   ", "The parcel ships Monday."),
}


def test_every_kind_has_a_case():
    assert set(kinds()) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_kind_reads_scores_and_refuses(name):
    kind = get(name)
    output, record, good, expected, bad, gold = CASES[name]
    assert kind.problems(output) == []
    assert kind.item_problems(output, record) == []
    assert kind.instructions(output) is not None
    p = kind.parse(good, output, record)
    assert p.valid, p.why
    b = kind.parse(bad, output, record)
    assert not b.valid and b.why
    g = kind.gold(gold, output, record)
    assert g.valid, g.why
    scored = kind.score(p.value, g.value, output, record)
    assert kind.metric in scored
    if expected is not None:
        assert scored[kind.metric] == expected
    else:
        assert 0 < scored[kind.metric] < 100
    assert set(kind.zero()) <= set(scored) | set(kind.zero())


def test_label_macro_f1_and_first_word():
    kind, out = get("label"), {"labels": ["billing", "shipping", "returns"]}
    assert kind.parse("billing - the card was charged twice", out, {}).value == "billing"
    assert not kind.parse("billingual", out, {}).valid  # a label must stand as a word
    f1 = kind.summary(["billing", "billing", None], ["billing", "shipping", "shipping"], out)["macro_f1"]
    assert f1 == pytest.approx((2 / 3 + 0) / 2)


def test_tool_call_scored_as_bfcl_scores_it():
    kind, out = get("tool_call"), {"tools": TOOLS}
    gold = kind.gold({"name": "get_weather", "allowed": {"city": ["New York"], "unit": ["", "celsius"]}}, out, {}).value

    def correct(answer: str) -> float:
        p = kind.parse(answer, out, {})
        return kind.score(p.value, gold, out, {})["correct"] if p.valid else -1

    assert correct('{"name": "get_weather", "arguments": {"city": "new york"}}') == 1  # case and spaces
    assert correct('{"name": "get_weather", "arguments": {"city": "New York", "unit": "Celsius"}}') == 1
    assert correct('{"name": "get_weather", "arguments": {"city": "New York", "unit": "kelvin"}}') == 0
    assert correct('{"name": "get_weather", "arguments": {"city": "Boston"}}') == 0
    assert correct('[{"function": {"name": "get_weather", "arguments": "{\\"city\\": \\"New York\\"}"}}]') == 1
    assert correct('{"name": "get_weather", "arguments": {"unit": "celsius"}}') == -1  # a required one missing
    assert correct('{"name": "get_weather", "arguments": {"city": "NY", "zip": 1}}') == -1  # no such parameter
    required = kind.gold({"name": "get_weather", "allowed": {"city": ["Rome"], "unit": ["celsius"]}}, out, {}).value
    p = kind.parse('{"name": "get_weather", "arguments": {"city": "Rome"}}', out, {})
    assert kind.score(p.value, required, out, {})["correct"] == 0  # unit has no "": it must be given
    # an item's own tools win over the task's; the functions go with the input
    item = {"tools": [{"name": "add", "parameters": {"type": "dict", "properties": {"a": {"type": "integer"}}}}]}
    assert kind.parse('{"name": "add", "arguments": {"a": 1}}', out, item).valid
    assert '"add"' in kind.context(out, item)


def test_json_field_scores():
    kind, out = get("json"), {"schema": SCHEMA}
    p = kind.parse('{"order": "NW-1", "qty": 3, "tags": ["a"]}', out, {})
    s = kind.score(p.value, {"order": "NW-1", "qty": 2, "tags": ["a"]}, out, {})
    assert s["exact"] == 0 and s["field_f1"] == pytest.approx(2 / 3)
    assert "qty" in kind.parse('{"order": "NW-1", "qty": "two"}', out, {}).why
    assert kind.problems({"schema": {"type": "nonsense"}})


def test_code_fails_wrong_answers():
    kind = get("code")
    out, rec = {"timeout_s": 5}, {"tests": "def check(f):\n    assert f(2, 3) == 5\n", "entry_point": "add"}
    wrong = kind.parse("def add(a, b):\n    return a - b\n", out, rec).value
    assert kind.score(wrong, None, out, rec)["pass"] == 0.0
    assert kind.item_problems(out, {}) != []


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_kind_says_how_its_answers_are_constrained(name):
    """label, json and tool_call answers can be made to parse by construction (runtime.constrain): their request
    is one the runtime accepts and llama.cpp compiles; code and text ask for none."""
    import llama_cpp

    from edgedistill.runtime.constrain import constraint_for, gbnf

    kind = get(name)
    output, record = CASES[name][:2]
    request = kind.constraint(output, record)
    c = constraint_for(**request)
    assert (c is None) == (name in ("code", "text"))
    if c is not None:
        llama_cpp.LlamaGrammar.from_string(gbnf(c), verbose=False)
    if name == "label":
        assert all(kind.parse(x, output, record).valid for x in c.choices)
    if name == "tool_call":
        assert c.tools == ("get_weather",)
