"""The teacher as an engine: what writes the teacher's answers and its top-k log-probabilities.

  torch      the transformers model in this process, float32 (the reference; slow on a CPU)
  llama.cpp  a GGUF in this process through llama-cpp-python: several sequences decoded together, the top-k
             log-probabilities of every generated token read from the same logits
  openai     any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp's server, a vendor API): bounded
             concurrent requests, timeouts, retries with backoff, `top_logprobs` when the server offers them

Every engine answers conversations (`Engine.answer`); the local ones also score given token sequences
teacher-forced (`Engine.score`, what `cache-logits` stores). A served teacher's log-probabilities come from its
answers (`generate --logprobs K`) and are aligned to a local tokenizer's ids exactly, or refused.

Adding an engine is one `@register` class and a test that runs it (tests/engines).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from edgedistill.errors import EdgeDistillError
from edgedistill.settings import Settings, setting

_ENGINES: dict[str, type] = {}
ENGINE_NAMES = ("torch", "llama.cpp", "openai")  # the registered names, for settings' choices


class EngineError(EdgeDistillError):
    """The teacher engine cannot do what was asked (unreachable server, refused key, wrong tokenizer ...)."""


@dataclass(frozen=True)
class EngineSettings(Settings):
    """The teacher-engine fields shared by the stages that run the teacher (generate, cache-logits, run)."""

    teacher_engine: str = setting("llama.cpp", "What runs the teacher: llama.cpp (its GGUF in process, the fastest "
                                               "here: benchmarks/results/distill/teacher_engines), torch (in process, "
                                               "float32) or openai (an OpenAI-compatible server).",
                                  choices=ENGINE_NAMES)
    teacher_url: str | None = setting(None, "A served teacher (the openai engine): the server's base URL, e.g. "
                                            "http://127.0.0.1:8080/v1.",
                                      kind="url", key=False)  # the served model's name is its identity
    teacher_model: str | None = setting(None, "openai engine: the served model's name.")
    teacher_api: str = setting("chat", "openai engine: the API the teacher is asked through: chat "
                                       "(/v1/chat/completions, for instruct models) or completions (/v1/completions "
                                       "on the prompt rendered here: with --tokenizer's chat template when it has "
                                       "one, else the contents joined by newlines; for base models).",
                               choices=("chat", "completions"))
    api_key_env: str | None = setting(None, "openai engine: environment variable holding the API key (never "
                                            "logged or written).", key=False)
    tokenizer: str | None = setting(None, "openai engine: local model whose tokenizer the served tokens are aligned "
                                          "to (the student's), needed for --logprobs.")
    concurrency: int = setting(4, "openai engine: requests in flight at most.", min=1, max=256, key=False)
    teacher_timeout: float = setting(120.0, "openai engine: how long one request may take (90s, 2m; seconds in a "
                                            "file).", min=0, min_open=True, kind="duration", key=False)
    retries: int = setting(4, "openai engine: retries with backoff on 429/5xx and lost connections.", min=0, max=20,
                           key=False)
    teacher_gguf_type: str = setting("f16", "llama.cpp engine on a registry / Hugging Face teacher: the GGUF it runs "
                                            "(f16 exact, q8_0 faster).", choices=("f16", "q8_0"))
    sequence_level_fallback: bool = setting(False, "openai engine: keep the text alone (sequence-level KD) when the "
                                                   "served tokens cannot be aligned, instead of stopping.")
    teacher_extra_body: str | None = setting(None, "openai engine: server-specific request fields as JSON, e.g. "
                                                   "'{\"repeat_penalty\": 1.0}' for llama.cpp's server (its default "
                                                   "1.1 changes greedy answers).")

    def __post_init__(self) -> None:
        # a teacher URL names the engine: --teacher-url without --teacher-engine is the openai engine
        if self.teacher_url and self.teacher_engine == "llama.cpp":
            object.__setattr__(self, "teacher_engine", "openai")
        super().__post_init__()

    def engine_problems(self) -> list[str]:
        if self.teacher_engine == "openai":
            if not self.teacher_url or not self.teacher_model:
                return ["a served teacher needs --teacher-url and --teacher-model (the served model's name)"]
            if self.teacher_extra_body is not None:
                import json

                try:
                    if not isinstance(json.loads(self.teacher_extra_body), dict):
                        raise ValueError
                except ValueError:
                    return [f"--teacher-extra-body {self.teacher_extra_body!r} must be a JSON object"]
        elif self.teacher_url or self.teacher_model:
            return ["--teacher-url and --teacher-model are for --teacher-engine openai"]
        elif self.teacher_api != "chat":
            return [f"--teacher-api {self.teacher_api} is for a served teacher (--teacher-url)"]
        return []

    def extra_problems(self) -> list[str]:
        return self.engine_problems()

    def engine_spec(self, teacher: str | None, trust_remote_code: bool = False) -> EngineSpec:
        import json

        return EngineSpec(self.teacher_engine, teacher, url=self.teacher_url, served_model=self.teacher_model,
                          api_key_env=self.api_key_env, tokenizer=self.tokenizer, api=self.teacher_api,
                          concurrency=self.concurrency,
                          timeout_s=self.teacher_timeout, retries=self.retries, gguf_type=self.teacher_gguf_type,
                          trust_remote_code=trust_remote_code, sequence_level_fallback=self.sequence_level_fallback,
                          extra_body=json.loads(self.teacher_extra_body) if self.teacher_extra_body else None)


def _default(name: str):
    """An EngineSettings field's default: EngineSpec's knobs are those settings, resolved, not declared again."""
    from dataclasses import fields as fields_

    from edgedistill.settings import default_of

    return next(default_of(f) for f in fields_(EngineSettings) if f.name == name)


@dataclass(frozen=True)
class EngineSpec:
    """Which teacher, through which engine: EngineSettings resolved for one teacher (`EngineSettings.engine_spec`).
    `model`: registry name, Hugging Face folder or .gguf (torch and llama.cpp); for openai the served model's name is
    `served_model` and `tokenizer` names a local model whose tokenizer the served tokens are aligned to (needed only
    for log-probabilities)."""

    engine: str
    model: str | None = None
    url: str | None = None
    served_model: str | None = None
    api_key_env: str | None = None
    tokenizer: str | None = None
    api: str = _default("teacher_api")  # openai: "chat" or "completions"
    concurrency: int = _default("concurrency")
    timeout_s: float = _default("teacher_timeout")
    retries: int = _default("retries")
    gguf_type: str = _default("teacher_gguf_type")
    threads: int | None = None
    trust_remote_code: bool = False
    sequence_level_fallback: bool = False  # openai: keep the text alone when the tokens cannot be aligned
    extra_body: dict | None = None  # openai: server-specific request fields, e.g. {"repeat_penalty": 1.0}


@dataclass
class Answer:
    """One answered conversation. `tokens`: the generated ids in the local tokenizer (the stop token included
    when one was generated); `topk_ids`/`topk_logprobs`: per generated token, the teacher's top k (None when
    not asked for or not offered); `topk_text`: the same as the server's byte strings, when no local tokenizer
    is given to align them to (what cross-tokenizer distillation projects)."""

    index: int
    text: str | None  # None: the prompt was too long for the context
    n_tokens: int
    finish: str  # "stop" | "length" | "prompt_too_long"
    tokens: list[int] | None = None
    topk_ids: list[list[int]] | None = None
    topk_logprobs: list[list[float]] | None = None
    topk_text: tuple | None = None  # openai without a tokenizer to align to: (pieces, per piece [(piece, logprob)])
    model: str | None = None  # openai: the model id the server says answered (a vendor's dated version of an alias)


@dataclass
class Engine:
    """Base of the engines. Subclasses set the fields in their `open`."""

    spec: EngineSpec
    teacher_id: str = ""  # what records and caches name as the teacher
    fingerprint: str = ""  # refuses data or caches made by another teacher
    tokenizer: object = None  # the local (transformers) tokenizer ids refer to; None for openai without one
    context: int | None = None  # tokens of context, when known
    settings: dict = field(default_factory=dict)  # recorded beside the data (never a secret)

    name = ""

    @classmethod
    def identity(cls, spec: EngineSpec) -> tuple[str, str, dict]:
        """(teacher id, fingerprint, recorded settings) without loading anything: a finished rerun stops here."""
        raise NotImplementedError

    def answer(self, conversations: Sequence[Sequence[dict]], gen, *, logprobs: int = 0,
               max_prompt_tokens: int | None = None) -> Iterator[Answer]:
        raise NotImplementedError

    def score(self, examples: Sequence[dict], k: int, *, batch_size: int = 4, progress=None):
        """Per example, teacher-forced: (ids (n, k) int64, logprobs (n, k) float32) at its n response
        positions (labels != -100), best first."""
        raise EngineError(f"the {self.name} engine scores only what it generates: make the data with "
                          "`edgedistill generate --logprobs K`, then `cache-logits` reads it from the records")

    def close(self) -> None:
        pass


def register(name: str):
    def deco(cls):
        if name not in ENGINE_NAMES:
            raise AssertionError(f"add {name!r} to ENGINE_NAMES")
        cls.name = name
        _ENGINES[name] = cls
        return cls

    return deco


def engines() -> dict[str, type]:
    from edgedistill.engines import llamacpp, local, served  # noqa: F401  (registration)

    return dict(_ENGINES)


def open_engine(spec: EngineSpec, *, loaded=None) -> Engine:
    """The engine `spec` names, ready to answer. `loaded`: an already loaded (model, tokenizer) (torch)."""
    known = engines()
    if spec.engine not in known:
        raise EngineError(f"unknown teacher engine {spec.engine!r}; choose one of {', '.join(known)}")
    return known[spec.engine].open(spec, loaded=loaded)


def identity(spec: EngineSpec) -> tuple[str, str, dict]:
    """(teacher id, fingerprint, settings recorded in the data) of the teacher `spec` names, loading nothing."""
    known = engines()
    if spec.engine not in known:
        raise EngineError(f"unknown teacher engine {spec.engine!r}; choose one of {', '.join(known)}")
    return known[spec.engine].identity(spec)


def plan(tokenizer, conversations, max_prompt_tokens: int | None):
    """The chat prompts' token ids, and the order to answer them in: (ids per conversation, indices too long for
    the context, the rest sorted by length so a batch holds similar lengths)."""
    from edgedistill.models.generate import chat_ids

    encoded = [chat_ids(tokenizer, c) for c in conversations]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    too_long = [i for i in order if max_prompt_tokens is not None and len(encoded[i]) > max_prompt_tokens]
    skip = set(too_long)
    return encoded, too_long, [i for i in order if i not in skip]


def topk_rows(logp, k: int):
    """(ids, logprobs) of the k largest entries of each row of a (n, V) log-probability array, best first."""
    import numpy as np

    idx = np.argpartition(-logp, k - 1, axis=-1)[:, :k]
    vals = np.take_along_axis(logp, idx, -1)
    order = np.argsort(-vals, axis=-1)
    return np.take_along_axis(idx, order, -1).astype(np.int64), np.take_along_axis(vals, order, -1).astype(np.float32)


def log_softmax(logits):
    """Row-wise log-softmax in float64 of a (n, V) float array (numpy), returned as float32."""
    import numpy as np

    x = logits.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)
