"""models: pull, resolve, load and inspect teachers and students."""

from edgedistill.models.registry import DEFAULT_TEACHER, KnownModel, known_models
from edgedistill.models.locate import ModelRef, is_pulled, load_model, pulled_path, resolve

__all__ = [
    "DEFAULT_TEACHER",
    "KnownModel",
    "ModelRef",
    "is_pulled",
    "known_models",
    "load_model",
    "pulled_path",
    "resolve",
]
