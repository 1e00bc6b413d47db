"""Constrained decoding in the runtime: JSON that follows a schema, a label of a closed set and tool calls come out
valid by construction from a tiny random model (which left free would write neither), on every backend; what cannot
be enforced is refused in one line naming it."""

from __future__ import annotations

import json

import jsonschema
import pytest

from edgedistill.runtime import ConstraintError, load
from edgedistill.runtime.constrain import check_schema, constraint_for, gbnf, lark, read_reply, tool_call_tags

NESTED = {  # nested objects, enums, arrays; bounded (a random model fills strings up to maxLength)
    "type": "object",
    "properties": {
        "route": {"enum": ["billing", "shipping", "returns"]},
        "urgent": {"type": "boolean"},
        "customer": {"type": "object", "properties": {"tier": {"enum": ["gold", "basic"]},
                                                      "name": {"type": "string", "maxLength": 6}},
                     "required": ["tier", "name"], "additionalProperties": False},
        "tags": {"type": "array", "items": {"enum": ["late", "damaged", "refund"]}, "maxItems": 3},
    },
    "required": ["route", "urgent", "customer", "tags"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "track_order", "description": "Where an order is.", "parameters": {
        "type": "object", "properties": {"order_id": {"type": "string", "maxLength": 8}},
        "required": ["order_id"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "refund", "parameters": {
        "type": "object", "properties": {"order_id": {"type": "string", "maxLength": 8},
                                         "reason": {"enum": ["late", "damaged"]}},
        "required": ["order_id", "reason"], "additionalProperties": False}}},
]
ASK = [{"role": "user", "content": "My order NW-123 arrived damaged, I want my money back."}]
BUNDLES = ("gguf-q8_0", "onnx-fp32")


def _params(name: str) -> dict:
    return next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_a_json_schema_answer_always_parses_and_follows_it(tiny_bundles, bundle):
    with load(tiny_bundles[1] / bundle) as m:
        free = m.chat(ASK, max_tokens=40)
        with pytest.raises(ValueError):
            json.loads(free)  # left free, the tiny model writes no JSON: what follows is the constraint's doing
        fmt = {"type": "json_schema", "json_schema": {"name": "ticket", "schema": NESTED}}
        for seed, temperature in ((None, 0.0), (1, 1.0), (2, 1.0)):
            reply = m.respond(ASK, response_format=fmt, max_tokens=200, temperature=temperature, seed=seed)
            assert reply.finish_reason == "stop", reply
            jsonschema.validate(reply.parsed, NESTED)
            assert json.loads(reply.content) == reply.parsed
        anything = json.loads(m.chat(ASK, response_format={"type": "json_object"}, max_tokens=200))
        assert isinstance(anything, dict)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_a_label_is_one_of_the_choices(tiny_bundles, bundle):
    labels = ["billing", "shipping", "returns"]
    with load(tiny_bundles[1] / bundle) as m:
        for seed in (1, 2, 3):
            got = m.chat(ASK, response_format={"type": "choice", "choices": labels}, max_tokens=20, temperature=1.0,
                         seed=seed)
            assert got in labels, got


@pytest.mark.parametrize("bundle", BUNDLES)
def test_tool_calls_come_back_in_openais_shape(tiny_bundles, bundle):
    with load(tiny_bundles[1] / bundle) as m:
        reply = m.respond(ASK, tools=TOOLS, tool_choice="required", max_tokens=200)
        assert reply.content is None and reply.finish_reason == "tool_calls" and len(reply.tool_calls) == 1
        call = reply.tool_calls[0]
        assert call["type"] == "function" and call["id"].startswith("call_")
        name = call["function"]["name"]
        assert name in ("track_order", "refund")
        jsonschema.validate(json.loads(call["function"]["arguments"]), _params(name))
        named = m.respond(ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "refund"}},
                          max_tokens=200, temperature=1.0, seed=4)
        assert [c["function"]["name"] for c in named.tool_calls] == ["refund"]
        jsonschema.validate(json.loads(named.tool_calls[0]["function"]["arguments"]), _params("refund"))
        # "none": the tools are not offered and the answer is text; "auto": the model's choice, read either way
        assert m.respond(ASK, tools=TOOLS, tool_choice="none", max_tokens=8).tool_calls == []
        auto = m.respond(ASK, tools=TOOLS, tool_choice="auto", max_tokens=8)
        assert (auto.content is None) == bool(auto.tool_calls)


def test_what_cannot_be_enforced_is_refused_naming_it(tiny_bundles):
    with pytest.raises(ConstraintError, match="'minimum' is not supported"):
        check_schema({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}})
    with pytest.raises(ConstraintError, match="'oneOf' .* \\(use anyOf\\)"):
        check_schema({"oneOf": [{"type": "string"}, {"type": "integer"}]})
    with pytest.raises(ConstraintError, match="format 'email'"):
        check_schema({"type": "string", "format": "email"})
    with pytest.raises(ConstraintError, match="tools\\[refund\\].parameters.properties.when: the keyword 'if'"):
        constraint_for(tools=[{"type": "function", "function": {"name": "refund", "parameters": {
            "type": "object", "properties": {"when": {"if": {"type": "string"}}}}}}], tool_choice="required")
    with pytest.raises(ConstraintError, match="'cancel', which is not among the tools"):
        constraint_for(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "cancel"}})
    with pytest.raises(ConstraintError, match="not both"):
        constraint_for({"type": "json_object"}, TOOLS, "required")
    with pytest.raises(ConstraintError, match="'xml' is not one of"):
        constraint_for({"type": "xml"})
    with pytest.raises(ConstraintError, match="response_format must be an object"):
        constraint_for("json")
    with pytest.raises(ConstraintError, match="tools must be a list"):
        constraint_for(tools={"name": "refund"}, tool_choice="required")
    with load(tiny_bundles[1] / "gguf-q8_0") as m:  # through the runtime: refused before any token
        with pytest.raises(ConstraintError, match="'uniqueItems'"):
            m.chat(ASK, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "array", "items": {"type": "string"}, "uniqueItems": True}}})
    assert constraint_for(None) is None and constraint_for({"type": "text"}) is None
    assert constraint_for(tools=TOOLS, tool_choice="auto") is None


def test_objects_are_closed_to_keys_they_do_not_list_unless_they_say():
    """Left open, an object lets a small model invent keys without end (llguidance follows JSON schema there): the
    constraint closes every object that lists its properties and does not say, and keeps what a schema says."""
    from edgedistill.runtime.constrain import closed

    got = closed({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}},
                                                   "c": {"type": "array", "items": {"properties": {}}},
                                                   "d": {"type": "object", "properties": {},
                                                         "additionalProperties": True}}})
    assert got["additionalProperties"] is False and got["properties"]["a"]["additionalProperties"] is False
    assert got["properties"]["c"]["items"]["additionalProperties"] is False
    assert got["properties"]["d"]["additionalProperties"] is True
    assert closed({"type": "object"}) == {"type": "object"}  # json_object: any object, as asked


def test_a_strings_characters_are_those_json_allows():
    """llama-cpp-python's converter lets control characters (which json.loads refuses) and surrogates into a string:
    the grammar keeps them out, and the rule it rewrites is still there (a new converter fails here, not on a user)."""
    from edgedistill.runtime.constrain import Constraint

    rules = gbnf(Constraint(schema={"type": "string"}))
    assert r'char ::= [^"\\\x00-\x1F\uD800-\uDFFF]' in rules, rules


def test_the_models_own_tool_call_tags_are_kept():
    """A template with Qwen's <tool_call> convention gets the call inside its tags, in both grammar forms; the reply
    reads calls bare, tagged, or several in a row, and text that is not a call stays content."""
    qwen = "{% if tools %}<tools>{{ tools }}</tools>{% endif %} ... <tool_call> ... </tool_call>"
    assert tool_call_tags(qwen) == ("<tool_call>\n", "\n</tool_call>") and tool_call_tags("{{ messages }}") == ("", "")
    c = constraint_for(tools=TOOLS, tool_choice="required", template=qwen)
    assert gbnf(c).startswith('root ::= "<tool_call>\\n" call "\\n</tool_call>"')
    assert lark(c).startswith('start: "<tool_call>\\n" %json {') and lark(c).rstrip().endswith('"\\n</tool_call>"')
    tagged = '<tool_call>\n{"name": "refund", "arguments": {"order_id": "NW-1", "reason": "late"}}\n</tool_call>'
    r = read_reply(tagged + "\n" + tagged.replace("NW-1", "NW-2"), "stop", c, TOOLS)
    assert [json.loads(x["function"]["arguments"])["order_id"] for x in r.tool_calls] == ["NW-1", "NW-2"]
    assert r.content is None and r.finish_reason == "tool_calls"
    bare = read_reply('{"name": "track_order", "arguments": {"order_id": "A"}}', "stop", None, TOOLS)
    assert bare.tool_calls[0]["function"]["name"] == "track_order"
    text = read_reply("Sorry, which order?", "stop", None, TOOLS)
    assert text.content == "Sorry, which order?" and text.tool_calls == [] and text.finish_reason == "stop"
    unknown = read_reply('{"name": "delete_all", "arguments": {}}', "stop", None, TOOLS)
    assert unknown.tool_calls == [] and unknown.content  # a call of no tool offered is not a tool call
