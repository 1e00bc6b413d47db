"""The requests the endpoint accepts, as pydantic models of the OpenAI chat and completions APIs (the part a local
model can honour), and the checks that turn anything else into a 400 naming the field.

Text only: a content part other than text (an image, an audio clip, a file, a URL) is refused, so nothing a client
sends makes the server read a file or fetch a URL. Parameters this server cannot honour (tools, several choices,
logprobs, penalties) are refused rather than silently ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgedistill.serve.errors import BadRequest

# Asked for with a value other than these, a parameter is refused: the answer would not be what the client expects.
UNSUPPORTED = {"tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None,),
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
                raise BadRequest(f"{name} is not supported by edgedistill serve (a local text model, one answer per "
                                 "request); leave it out", param=name)
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise BadRequest("response_format: only {'type': 'text'} is supported", param="response_format")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # name, tool_call_id...: not used

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict] | None = None

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

    def plain_messages(self) -> list[dict]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text(i)}
                for i, m in enumerate(self.messages)]

    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


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
