"""Turn what the user typed (a registry name, a local directory, a .gguf file, a hub id) into a model."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from edgedistill import paths
from edgedistill.checked import check_model_folder
from edgedistill.errors import InvalidModelError, ModelNotFoundError, OfflineError
from edgedistill.models import registry

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelRef:
    spec: str  # what the user typed
    kind: str  # "hf_dir" | "gguf" | "hub"
    location: str  # a path for hf_dir/gguf, the repo id for hub
    name: str | None = None  # registry name, when it came from the registry

    @property
    def path(self) -> Path:
        return Path(self.location)


def pulled_path(name: str) -> Path:
    return paths.models_dir() / name


def is_pulled(name: str) -> bool:
    """In the cache, converted by the current conversion (an older one is converted again by the next pull)."""
    import json

    from edgedistill.models.convert import CONVERSION, PROVENANCE_FILE

    folder = pulled_path(name)
    if not (folder / "config.json").is_file():
        return False
    try:
        return int(json.loads((folder / PROVENANCE_FILE).read_text()).get("conversion", 1)) >= CONVERSION
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def resolve(spec: str, *, pull: bool = False) -> ModelRef:
    """Classify `spec` and check it exists; with pull=True a registry model not yet in the cache is pulled."""
    spec = str(spec)
    known = registry.get(spec)
    if known is not None:
        if not is_pulled(spec):
            if not pull:
                raise ModelNotFoundError(
                    f"model {spec!r} is not in the cache yet; run: edgedistill models pull {spec}"
                )
            from edgedistill.models.pull import pull as do_pull

            do_pull(spec)
        return ModelRef(spec, "hf_dir", str(pulled_path(spec)), name=spec)

    p = Path(spec).expanduser()
    if p.exists():
        if p.is_dir():
            if not (p / "config.json").is_file():
                raise InvalidModelError(
                    f"directory {p} has no config.json, so it is not a Hugging Face model directory; "
                    "pass the folder that holds config.json and the weights, or a .gguf file"
                )
            return ModelRef(spec, "hf_dir", str(p))
        with open(p, "rb") as f:
            magic = f.read(4)
        if p.suffix.lower() == ".gguf" or magic == b"GGUF":
            return ModelRef(spec, "gguf", str(p))
        raise InvalidModelError(f"{p} is neither a model directory nor a .gguf file")

    looks_like_path = spec.startswith((".", "/", "~")) or spec.lower().endswith(".gguf") or spec.count("/") > 1
    if looks_like_path:
        raise ModelNotFoundError(f"no such file or directory: {spec}")
    if _HUB_ID.match(spec):
        if not hub_reachable():
            raise OfflineError(
                f"cannot fetch {spec!r}: the model hub is not reachable from this machine; download the model "
                "elsewhere and pass its local directory or .gguf file instead"
            )
        return ModelRef(spec, "hub", spec)
    names = ", ".join(sorted(registry.known_models()))
    raise ModelNotFoundError(
        f"unknown model {spec!r}; known names: {names}; or pass a local directory, a .gguf file or a hub id"
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick, bounded check (transformers itself retries for half a minute before giving up)."""
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return False
    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except Exception:
        return False
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def load_tokenizer(spec: str | ModelRef, *, trust_remote_code: bool = False):
    """The tokenizer alone (no weights loaded), for any spec load_model accepts."""
    from transformers import AutoTokenizer

    ref = spec if isinstance(spec, ModelRef) else resolve(spec, pull=True)
    if ref.kind == "gguf":
        from edgedistill.models import gguf_file

        tok = gguf_file.build_tokenizer(None, gguf_file.metadata(gguf_file.open_gguf(ref.path)))
        return tok if tok is not None else AutoTokenizer.from_pretrained(str(ref.path.parent), gguf_file=ref.path.name)
    if ref.kind == "hf_dir":
        check_model_folder(ref.path, weights=False)
    return AutoTokenizer.from_pretrained(ref.location, trust_remote_code=trust_remote_code)


def load_model(spec: str | ModelRef, *, dtype=None, trust_remote_code: bool = False, pull: bool = True,
               attn_implementation: str | None = None):
    """(model, tokenizer) in float32 for any spec. trust_remote_code stays off unless the caller asks;
    attn_implementation (sdpa, eager, ...) is transformers' choice unless given."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = spec if isinstance(spec, ModelRef) else resolve(spec, pull=pull)
    dtype = dtype or torch.float32
    if ref.kind == "gguf":
        from edgedistill.models.convert import load_gguf

        model, tok = load_gguf(ref.path, dtype=dtype)
        if attn_implementation:
            model.set_attn_implementation(attn_implementation)
        return model, tok
    check_model_folder(ref.path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref.location, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            ref.location, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True,
            **({"attn_implementation": attn_implementation} if attn_implementation else {}),
        )
    except OSError as e:
        raise InvalidModelError(f"cannot load {ref.spec}: {str(e).splitlines()[0]}") from None
    except ValueError as e:
        raise InvalidModelError(f"cannot load {ref.spec}: {str(e).splitlines()[0]}") from None
    model.eval()
    return model, tokenizer


# SentencePiece model files: transformers 5 loads them but writes only tokenizer.json, while llama.cpp's converter
# reads a SentencePiece tokenizer (Gemma, Phi-3, Mistral) from tokenizer.model.
_ORIGINAL_TOKENIZER_FILES = ("tokenizer.model",)


def save_tokenizer(tokenizer, out_dir: Path) -> None:
    """tokenizer.save_pretrained, plus the original tokenizer files transformers no longer writes: copied from
    the folder the tokenizer was loaded from, or, for one rebuilt from a GGUF, the files it was built from
    (models.gguf_file.ORIGINAL_FILES)."""
    import shutil

    out_dir = Path(out_dir)
    tokenizer.save_pretrained(out_dir)
    sources = [Path(p).parent for p in [getattr(tokenizer, "vocab_file", None),
                                        getattr(tokenizer, "init_kwargs", {}).get("vocab_file")] if p]
    sources.append(Path(getattr(tokenizer, "name_or_path", "") or "."))
    from edgedistill.models.gguf_file import ORIGINAL_FILES

    for name, data in getattr(tokenizer, ORIGINAL_FILES, {}).items():  # rebuilt from a GGUF
        (out_dir / name).write_bytes(data)
    for name in _ORIGINAL_TOKENIZER_FILES:
        src = next((d / name for d in sources if (d / name).is_file()), None)
        if src is not None and not (out_dir / name).exists():
            shutil.copy2(src, out_dir / name)
