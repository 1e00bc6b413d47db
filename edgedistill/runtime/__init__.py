"""runtime: load an exported bundle in an offline app — numpy, tokenizers, onnxruntime or llama-cpp-python only.

    from edgedistill.runtime import load
    model = load("bundles/gguf-q4_k_m")
    print(model.chat([{"role": "user", "content": "Where is my order?"}], max_tokens=128))
    label = model.chat(messages, response_format={"type": "choice", "choices": ["billing", "shipping"]})
    reply = model.respond(messages, tools=TOOLS, tool_choice="required")   # reply.tool_calls, OpenAI's shape
    for piece in model.stream("Write a haiku about gears.", max_tokens=40):
        print(piece, end="", flush=True)

Importing this package never imports torch or transformers (a test checks sys.modules) and nothing here opens a
socket. Every file of the bundle is checked against its sha256 in manifest.json before loading.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgedistill.runtime.bundle import BundleError, open_bundle
from edgedistill.runtime.constrain import Constraint, ConstraintError, Reply, constraint_for, read_reply

__all__ = ["load", "SamplingParams", "BundleError", "ConstraintError", "LoadedModel", "Completion", "Reply"]


@dataclass(frozen=True)
class SamplingParams:
    """How one call decodes: length, temperature (0: greedy), nucleus mass, seed, stop strings."""

    max_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # keep going past end-of-turn (benchmarks that need exactly max_tokens tokens)
    constraint: Constraint | None = None  # what the output must parse as (runtime.constrain); None: free text

    def __post_init__(self) -> None:
        from edgedistill.errors import EdgeDistillError

        problems = []
        if self.max_tokens < 1:
            problems.append(f"max_tokens={self.max_tokens} must be at least 1")
        if not 0 <= self.temperature <= 5:
            problems.append(f"temperature={self.temperature} must be in [0, 5]")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p} must be in (0, 1]")
        if problems:
            raise EdgeDistillError("; ".join(problems))


@dataclass
class Completion:
    """What a generation produced besides its text, filled in as it runs: token counts and why it ended
    ("stop": end of turn or a stop string; "length": max_tokens reached; None while it runs)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None


class LoadedModel:
    """What every backend offers: generate (text in, text out), stream (pieces of text), chat (messages).

    A backend implements encode, decode and generate_ids (token ids until end-of-turn or max_tokens); turning ids
    into text pieces, stop strings and chat templates are shared here."""

    manifest: dict
    path: Path
    template: str | None
    special: dict
    context_length: int  # positions the loaded model holds: prompt and answer together

    def encode(self, text: str) -> list[int]:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def generate_ids(self, prompt_ids: list[int], cfg: SamplingParams) -> Iterator[int]:  # pragma: no cover
        raise NotImplementedError

    def check_constraint(self, constraint: Constraint) -> None:
        """Raise ConstraintError now if this backend cannot enforce `constraint` (a backend that compiles it
        compiles and caches it here), so that a server refuses the request before it queues."""

    def reset(self) -> None:
        """Forget any prompt the backend keeps computed between calls, so that the next generation computes its
        whole prompt (llama.cpp reuses the longest cached prefix; a timed run must not)."""

    def prompt_tokens_computed(self) -> int | None:
        """Prompt tokens the last generation computed (a cached prefix is not computed again); None: unknown."""
        return None

    def runtime_info(self) -> dict:
        """The runtime and what it uses on this machine (versions, CPU features or providers), so that figures from
        two machines can be told apart."""
        return {}

    def stream(self, prompt: str, **kw) -> Iterator[str]:
        cfg = SamplingParams(**{**kw, "stop": tuple(kw.get("stop") or ())})
        return self.stream_ids(self.encode(prompt), cfg)

    def stream_ids(self, prompt_ids: list[int], cfg: SamplingParams, done: Completion | None = None
                   ) -> Iterator[str]:
        """Text pieces of the answer to `prompt_ids`; `done`, when given, receives the counts and the finish
        reason as the generation goes (complete once the iterator is exhausted)."""
        from edgedistill.runtime.text import StopText

        done = done if done is not None else Completion()
        done.prompt_tokens, done.completion_tokens, done.finish_reason = len(prompt_ids), 0, None
        stop = StopText(cfg.stop)
        # Detokenize a short window, not the whole output per token: the text of out[prefix:] beyond the text of
        # out[prefix:read] is new. Keeping a few tokens of context in the window keeps leading spaces and
        # multi-token characters right for every tokenizer.
        out: list[int] = []
        prefix = read = 0
        for tid in self.generate_ids(prompt_ids, cfg):
            out.append(tid)
            done.completion_tokens += 1
            before = self.decode(out[prefix:read])
            text = self.decode(out[prefix:])
            if text.endswith("\ufffd") or len(text) <= len(before):  # half a character: wait for the rest
                continue
            piece = stop.feed(text[len(before):])
            prefix, read = max(0, read - 4), len(out)
            if stop.done:
                done.finish_reason = "stop"
            if piece:
                yield piece
            if stop.done:
                return
        tail = self.decode(out[prefix:])[len(self.decode(out[prefix:read])):] if read < len(out) else ""
        rest = stop.feed(tail) + stop.flush()  # a trailing incomplete character, as decoded
        done.finish_reason = "stop" if stop.done or len(out) < cfg.max_tokens else "length"
        if rest:
            yield rest

    def generate(self, prompt: str, **kw) -> str:
        return "".join(self.stream(prompt, **kw))

    def render_chat(self, messages: Sequence[dict], tools: Sequence[dict] | None = None) -> str:
        from edgedistill.runtime.text import render

        return render(self.template, messages, self.special, tools=tools)

    def prepare_chat(self, messages: Sequence[dict], *, response_format: dict | None = None,
                     tools: Sequence[dict] | None = None, tool_choice=None, **kw) -> tuple[list[int], SamplingParams]:
        """(prompt ids, sampling) of one chat request: the tools offered through the chat template (unless
        tool_choice is "none"), the output constrained as response_format / tool_choice ask (runtime.constrain)."""
        offered = None if tool_choice == "none" else tools
        constraint = constraint_for(response_format, list(tools or []) or None, tool_choice, self.template)
        cfg = SamplingParams(**{**kw, "stop": tuple(kw.get("stop") or ()), "constraint": constraint})
        return self.encode(self.render_chat(messages, offered)), cfg

    def chat(self, messages: Sequence[dict], **kw) -> str:
        """The answer's text. response_format ({"type": "json_object"}, {"type": "json_schema", "json_schema":
        {"schema": ...}} or {"type": "choice", "choices": [...]}) constrains it to parse as asked."""
        return "".join(self.chat_stream(messages, **kw))

    def chat_stream(self, messages: Sequence[dict], **kw) -> Iterator[str]:
        ids, cfg = self.prepare_chat(messages, **kw)
        return self.stream_ids(ids, cfg)

    def respond(self, messages: Sequence[dict], *, response_format: dict | None = None,
                tools: Sequence[dict] | None = None, tool_choice=None, **kw) -> Reply:
        """One chat answer as OpenAI shapes it (runtime.constrain.Reply): tool calls of the `tools` offered (always
        one of them with tool_choice "required" or a named function; the model's choice with "auto"), or content,
        parsed when response_format asked for JSON."""
        ids, cfg = self.prepare_chat(messages, response_format=response_format, tools=tools,
                                     tool_choice=tool_choice, **kw)
        done = Completion()
        text = "".join(self.stream_ids(ids, cfg, done))
        offered = None if tool_choice == "none" else list(tools or []) or None
        return read_reply(text, done.finish_reason, cfg.constraint, offered)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load(path: str | Path, *, threads: int | None = None, verify: bool = True, n_ctx: int = 2048,
         adapter: str | Path | None = None) -> LoadedModel:
    """Open a bundle made by `edgedistill export` with the backend its format needs. n_ctx: the context the
    GGUF backend reserves (the ONNX cache grows as needed). adapter: a LoRA adapter bundle (gguf-lora) applied over
    this base bundle, which must have been exported from the model the adapter was trained on."""
    from edgedistill.runtime.bundle import ADAPTERS, adapter_args, backend

    manifest = open_bundle(path, verify=verify)
    if manifest["format"] in ADAPTERS:
        base = ((manifest.get("quantization") or {}).get("adapter") or {}).get("base")
        raise BundleError(f"{path} is a LoRA adapter, not a model: load the bundle of its base model ({base}) with "
                          f"adapter={str(path)!r}")
    return backend(manifest["format"]).Model(Path(path), manifest, threads=threads, n_ctx=n_ctx,
                                             **adapter_args(manifest, Path(path), adapter, verify=verify))


def __getattr__(name: str):
    """GenerationConfig, the earlier name of SamplingParams, for one release (with a DeprecationWarning)."""
    if name == "GenerationConfig":
        import warnings

        warnings.warn("edgedistill.runtime.GenerationConfig is deprecated; use SamplingParams", DeprecationWarning,
                      stacklevel=2)
        return SamplingParams
    raise AttributeError(f"module 'edgedistill.runtime' has no attribute {name!r}")
