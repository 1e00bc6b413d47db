"""Constrained decoding: output that parses as JSON (any object, or one that follows a JSON schema), as one label of
a closed set, or as a call of one of the OpenAI `tools` offered, valid by construction.

A request's `response_format` / `tools` / `tool_choice` (OpenAI's shapes) become one Constraint: a JSON schema or a
set of labels, and the text the model's own chat template puts around a tool call (Qwen's <tool_call> tags). Each
backend compiles it its own way (GGUF: a llama.cpp grammar; ONNX: onnxruntime-genai's guidance) and caches what it
compiled per constraint. A schema keyword no backend can enforce is refused in one line naming it, never ignored:
an output that merely looks constrained is worse than a refusal.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from edgedistill.errors import EdgeDistillError

# keywords the constraint enforces, and those that only describe (ignored, as a validator ignores them)
ENFORCED = {"type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
            "enum", "const", "anyOf", "allOf", "$ref", "$defs", "definitions", "pattern", "minLength", "maxLength",
            "format"}
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly",
               "writeOnly", "strict", "name"}
FORMATS = {"date", "time", "date-time", "uuid"}
TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


class ConstraintError(EdgeDistillError):
    """A response_format, tools or tool_choice that cannot be enforced: the request is at fault (HTTP 400)."""


@dataclass(frozen=True)
class Constraint:
    """What the output must be: JSON following `schema` (a dict), or exactly one of `choices`; `prefix` and
    `suffix` the fixed text around it (a tool call's tags); `tools`: the names callable (a tool call)."""

    schema: dict | None = None
    choices: tuple[str, ...] = ()
    prefix: str = ""
    suffix: str = ""
    tools: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """One string per distinct constraint: what a backend caches its compiled form under."""
        return json.dumps([self.schema, self.choices, self.prefix, self.suffix], sort_keys=True)


def check_schema(schema, where: str = "schema") -> None:
    """Refuse, naming it, the first keyword of `schema` (walked whole) that the constraint would not enforce."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise ConstraintError(f"{where} must be a JSON object (a JSON schema), not {type(schema).__name__}")
    for k, v in schema.items():
        if k in ANNOTATIONS:
            continue
        if k not in ENFORCED:
            hint = " (use anyOf)" if k == "oneOf" else ""
            raise ConstraintError(f"{where}: the keyword {k!r} is not supported by constrained decoding{hint}; "
                                  f"supported: {', '.join(sorted(ENFORCED))}")
        if k == "type":
            for t in v if isinstance(v, list) else [v]:
                if t not in TYPES:
                    raise ConstraintError(f"{where}: unknown type {t!r}; one of {', '.join(sorted(TYPES))}")
        elif k == "format" and v not in FORMATS:
            raise ConstraintError(f"{where}: the format {v!r} is not supported by constrained decoding; supported: "
                                  f"{', '.join(sorted(FORMATS))}")
        elif k in ("properties", "$defs", "definitions"):
            if not isinstance(v, dict):
                raise ConstraintError(f"{where}.{k} must be an object")
            for name, sub in v.items():
                check_schema(sub, f"{where}.{k}.{name}")
        elif k in ("items", "additionalProperties") and not isinstance(v, bool):
            check_schema(v, f"{where}.{k}")
        elif k in ("prefixItems", "anyOf", "allOf"):
            if not isinstance(v, list) or not v:
                raise ConstraintError(f"{where}.{k} must be a non-empty list of schemas")
            for i, sub in enumerate(v):
                check_schema(sub, f"{where}.{k}[{i}]")
        elif k == "$ref" and not (isinstance(v, str) and v.startswith("#/")):
            raise ConstraintError(f"{where}: only local references ('#/$defs/...') are supported, not {v!r}")


def closed(schema):
    """The schema with every object that lists its properties closed to others where it does not say
    (additionalProperties false): what is generated is still valid against the schema, and a small model cannot
    invent keys without end (OpenAI's strict mode asks the same of the schema)."""
    if isinstance(schema, list):
        return [closed(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (closed(v) if k in ("items", "anyOf", "allOf", "prefixItems", "additionalProperties") else v)
           for k, v in schema.items()}
    for k in ("properties", "$defs", "definitions"):
        if isinstance(schema.get(k), dict):
            out[k] = {name: closed(sub) for name, sub in schema[k].items()}
    if "properties" in schema and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def _tool_schema(tool: dict) -> tuple[str, dict]:
    """(name, the schema of one call of it: {"name": NAME, "arguments": {...}})."""
    fn = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ConstraintError("each entry of tools must be {\"type\": \"function\", \"function\": {\"name\": ..., "
                              "\"parameters\": {...}}}")
    params = fn.get("parameters") or {"type": "object", "properties": {}}
    check_schema(params, f"tools[{fn['name']}].parameters")
    call = {"name": {"const": fn["name"]}, "arguments": closed(params)}
    return fn["name"], {"type": "object", "properties": call, "required": ["name", "arguments"],
                        "additionalProperties": False}


def tool_call_tags(template: str | None) -> tuple[str, str]:
    """The text a model's chat template puts around a tool call, where it has such a convention (Qwen 2.5 and 3,
    Hermes: <tool_call> tags); none elsewhere: the bare JSON call."""
    if template and "<tool_call>" in template:
        return "<tool_call>\n", "\n</tool_call>"
    return "", ""


def constraint_for(response_format: dict | None = None, tools: list[dict] | None = None, tool_choice=None,
                   template: str | None = None) -> Constraint | None:
    """The Constraint a request asks for; None for free text (no response_format or "text", and tools with
    tool_choice "auto" or "none": the model chooses, its call is read from the text when it makes one).

    response_format: {"type": "json_object"}, {"type": "json_schema", "json_schema": {"schema": {...}}}, or
    edgedistill's {"type": "choice", "choices": ["billing", "shipping", ...]} (a label, as plain text).
    tool_choice: "required" (one of the tools) or {"type": "function", "function": {"name": NAME}}."""
    if response_format is not None and not isinstance(response_format, dict):
        raise ConstraintError("response_format must be an object such as {\"type\": \"json_object\"}")
    if tools is not None and not isinstance(tools, list):
        raise ConstraintError("tools must be a list of {\"type\": \"function\", \"function\": {...}}")
    if tools and response_format and response_format.get("type", "text") != "text":
        raise ConstraintError("give response_format or tools, not both")
    if tools:
        named = dict(_tool_schema(t) for t in tools)
        if tool_choice in (None, "auto", "none"):
            return None
        if tool_choice == "required":
            pick = list(named)
        elif isinstance(tool_choice, dict) and isinstance((tool_choice.get("function") or {}).get("name"), str):
            pick = [tool_choice["function"]["name"]]
            if pick[0] not in named:
                raise ConstraintError(f"tool_choice names {pick[0]!r}, which is not among the tools "
                                      f"({', '.join(named)})")
        else:
            raise ConstraintError("tool_choice must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", "
                                  "\"function\": {\"name\": ...}}")
        schema = named[pick[0]] if len(pick) == 1 else {"anyOf": [named[n] for n in pick]}
        prefix, suffix = tool_call_tags(template)
        return Constraint(schema=schema, prefix=prefix, suffix=suffix, tools=tuple(pick))
    if tool_choice not in (None, "auto", "none"):
        raise ConstraintError("tool_choice needs tools")
    if response_format is None:
        return None
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return Constraint(schema={"type": "object"})
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise ConstraintError("response_format json_schema needs {\"json_schema\": {\"name\": ..., \"schema\": "
                                  "{...}}}")
        check_schema(spec["schema"], "json_schema.schema")
        return Constraint(schema=closed(spec["schema"]))
    if kind == "choice":
        choices = response_format.get("choices")
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
            raise ConstraintError("response_format choice needs {\"choices\": [\"label\", ...]} (non-empty strings)")
        return Constraint(choices=tuple(dict.fromkeys(choices)))
    raise ConstraintError(f"response_format type {kind!r} is not one of text, json_object, json_schema, choice")


def gbnf(c: Constraint) -> str:
    """The constraint as a llama.cpp grammar (GBNF): llama-cpp-python's own JSON-schema converter for a schema."""
    if c.choices:
        body = " | ".join(json.dumps(x) for x in c.choices)
        return f"root ::= {body}\n"
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        rules = json_schema_to_gbnf(json.dumps(c.schema))
    except (ValueError, KeyError, AssertionError, RecursionError) as e:
        raise ConstraintError(f"the schema cannot be turned into a grammar: {e}") from None
    # a string's characters as JSON allows them: the converter's char rule lets control characters through (a strict
    # JSON reader refuses them) and UTF-16 surrogates (llama.cpp decodes their UTF-8 form leniently)
    rules = rules.replace('char ::= [^"\\\\]', 'char ::= [^"\\\\\\x00-\\x1F\\uD800-\\uDFFF]')
    if not (c.prefix or c.suffix):
        return rules
    rules = rules.replace("root ::=", "call ::=", 1)
    return f"root ::= {json.dumps(c.prefix)} call {json.dumps(c.suffix)}\n{rules}"


def lark(c: Constraint) -> str:
    """The constraint as an llguidance Lark grammar (onnxruntime-genai's guidance): %json for a schema, with fixed
    whitespace (flexible whitespace lets a small model pad an answer with blanks up to its token limit)."""
    if c.choices:
        return "start: " + " | ".join(json.dumps(x) for x in c.choices) + "\n"
    schema = {**c.schema, "x-guidance": {"whitespace_flexible": False}} if isinstance(c.schema, dict) else c.schema
    parts = [json.dumps(c.prefix)] if c.prefix else []
    parts += [f"%json {json.dumps(schema)}"] + ([json.dumps(c.suffix)] if c.suffix else [])
    return "start: " + " ".join(parts) + "\n"


@dataclass
class Reply:
    """One chat answer as OpenAI shapes it: `content` (None for a tool call), `tool_calls` ([{"id", "type":
    "function", "function": {"name", "arguments": JSON text}}]), `finish_reason` ("stop", "length" or
    "tool_calls"); `parsed`: the JSON value of a json_object / json_schema answer."""

    content: str | None
    tool_calls: list[dict] = field(default_factory=list)
    finish_reason: str | None = None
    parsed: object = None


def _json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def _call(obj, names: set[str]) -> dict | None:
    if isinstance(obj, dict) and obj.get("name") in names and isinstance(obj.get("arguments", {}), dict):
        return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                "function": {"name": obj["name"], "arguments": json.dumps(obj.get("arguments", {}),
                                                                           ensure_ascii=False)}}
    return None


def read_reply(text: str, finish: str | None, c: Constraint | None, tools: list[dict] | None) -> Reply:
    """The answer's text read as the request asked: tool calls (under a constraint, or a call the model chose to
    make under "auto": a JSON call, bare or in its template's tags), a parsed JSON value, or plain text."""
    names = {(t.get("function") or {}).get("name") for t in tools or []}
    body = text.strip()
    if names:
        parts = [p.replace("</tool_call>", "").strip() for p in body.split("<tool_call>")]
        parts = parts[1:] if len(parts) > 1 and not parts[0] else parts  # text before the first tag stays a part
        calls = [_call(_json(p), names) for p in parts]
        if calls and all(calls):
            return Reply(None, calls, "tool_calls" if finish != "length" else finish)
        return Reply(text, [], finish)
    if c is not None and c.schema is not None:  # None when cut short by max_tokens (finish_reason "length")
        return Reply(text, [], finish, _json(body))
    return Reply(text, [], finish)
