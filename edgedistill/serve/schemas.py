"""The requests the endpoint accepts, as pydantic models of the OpenAI chat and completions APIs (the part a local
model can honour), and the checks that turn anything else into a 400 naming the field.

Text only: a content part other than text (an image, an audio clip, a file, a URL) is refused, so nothing a client
sends makes the server read a file or fetch a URL. Structured output (response_format json_object / json_schema,
tools with tool_choice) is constrained decoding (runtime.constrain). Parameters this server cannot honour (several
choices, logprobs, penalties, the deprecated functions) are refused rather than silently ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgedistill.serve.errors import BadRequest

# Asked for with a value other than these, a parameter is refused: the answer would not be what the client expects.
UNSUPPORTED = {"functions": (None, []), "function_call": (None,), "parallel_tool_calls": (None, False, True),
               "logprobs": (None, False), "top_logprobs": (None, 0), "logit_bias": (None, {}),
               "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0), "n": (None, 1),
               "best_of": (None, 1), "echo": (None, False), "suffix": (None, ""), "audio": (None,),
               "modalities": (None, ["text"]), "prediction": (None,)}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # `user`, `metadata`, `store`...: accepted and not used

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: dict | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop strings")
        if any(len(s) > 256 for s in stops):
            raise ValueError("a stop string may have at most 256 characters")
        return stops

    def unsupported(self) -> None:
        extra = self.model_extra or {}
        for name, fine in UNSUPPORTED.items():
            if name in extra and extra[name] not in fine:
                hint = "use tools" if name in ("functions", "function_call") else "leave it out"
                raise BadRequest(f"{name} is not supported by edgedistill serve (a local text model, one answer per "
                                 f"request); {hint}", param=name)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # name...: not used

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict] | None = None
    tool_calls: list[dict] | None = None  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool turn: the call it answers

    def text(self, i: int) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for j, part in enumerate(self.content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(f"messages[{i}].content[{j}]: only text parts are served (type {part.get('type')!r} "
                                 "given); this server reads no images, audio, files or URLs",
                                 param=f"messages[{i}].content")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None

    def plain_messages(self) -> list[dict]:
        """The messages as chat templates take them: developer as system; an assistant turn's tool calls with their
        arguments as objects (OpenAI sends them as JSON text), a tool turn with the id of the call it answers."""
        out = []
        for i, m in enumerate(self.messages):
            msg = {"role": "system" if m.role == "developer" else m.role, "content": m.text(i)}
            if m.tool_calls:
                msg["tool_calls"] = [_call_for_template(c, i) for c in m.tool_calls]
            if m.tool_call_id is not None:
                msg["tool_call_id"] = m.tool_call_id
            out.append(msg)
        return out

    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def _call_for_template(call: dict, i: int) -> dict:
    import json

    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise BadRequest(f"messages[{i}].tool_calls: each needs {{\"function\": {{\"name\", \"arguments\"}}}}",
                         param=f"messages[{i}].tool_calls")
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            args = json.loads(args or "{}")
        except ValueError:
            raise BadRequest(f"messages[{i}].tool_calls: arguments of {fn['name']} are not JSON",
                             param=f"messages[{i}].tool_calls") from None
    return {**call, "function": {**fn, "arguments": args}}


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # the completions API's own default

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise BadRequest("prompt: give one string (several prompts in one request are not supported)",
                             param="prompt")
        return self.prompt[0]

    def answer_tokens(self) -> int | None:
        return self.max_tokens


def parse(cls, body: bytes):
    """The request model from a JSON body; BadRequest naming the first wrong field otherwise."""
    import json

    from pydantic import ValidationError

    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"the body is not valid JSON ({e}); send a JSON object with Content-Type: "
                         "application/json") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    try:
        req = cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "body"
        raise BadRequest(f"{where}: {err['msg']} (given {_short(err.get('input'))})", param=where) from None
    req.unsupported()
    return req


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
