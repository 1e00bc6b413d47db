"""What a model is, read from its files without loading the weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from math import prod

from edgedistill import paths
from edgedistill.errors import InvalidModelError
from edgedistill.models import gguf_file
from edgedistill.models.locate import ModelRef, resolve


@dataclass(frozen=True)
class ModelInfo:
    spec: str
    kind: str
    location: str
    architecture: str
    layers: int
    hidden_size: int
    attention_heads: int
    kv_heads: int
    intermediate_size: int
    vocab_size: int
    context_length: int
    parameters: int
    tied_embeddings: bool
    chat_template: bool
    disk_bytes: int
    weights_dtype: str

    def as_dict(self) -> dict:
        return asdict(self)


def _hf_info(ref: ModelRef) -> ModelInfo:
    from edgedistill.checked import check_model_folder, read_json

    d = ref.path
    # a folder a user cannot load (no tokenizer, a cut weight file) is not described as fine
    cfg, headers = check_model_folder(d)
    if not headers:
        raise InvalidModelError(f"{d} has no .safetensors weights (edgedistill loads only safetensors, GGUF or ONNX)")
    tensors = [t for h in headers.values() for t in h.values()]
    params, dtypes = sum(prod(t["shape"]) for t in tensors), {t["dtype"] for t in tensors}
    has_template = (d / "chat_template.jinja").is_file()
    tok_cfg = d / "tokenizer_config.json"
    if not has_template and tok_cfg.is_file():
        tok = read_json(tok_cfg, "tokenizer config", InvalidModelError)
        has_template = isinstance(tok, dict) and bool(tok.get("chat_template"))
    heads = int(cfg.get("num_attention_heads", 0))
    return ModelInfo(
        spec=ref.spec,
        kind=ref.kind,
        location=str(d),
        architecture=cfg.get("model_type", "?"),
        layers=int(cfg.get("num_hidden_layers", 0)),
        hidden_size=int(cfg.get("hidden_size", 0)),
        attention_heads=heads,
        kv_heads=int(cfg.get("num_key_value_heads", heads)),
        intermediate_size=int(cfg.get("intermediate_size", 0)),
        vocab_size=int(cfg.get("vocab_size", 0)),
        context_length=int(cfg.get("max_position_embeddings", 0)),
        parameters=params,
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        chat_template=has_template,
        disk_bytes=paths.dir_size(d),
        weights_dtype=",".join(sorted(dtypes)),
    )


def _gguf_info(ref: ModelRef) -> ModelInfo:
    reader = gguf_file.open_gguf(ref.path)
    meta = gguf_file.metadata(reader)
    arch = meta.get("general.architecture", "?")

    def hp(key: str, default=0):
        return meta.get(f"{arch}.{key}", default)

    names = {t.name for t in reader.tensors}
    heads = int(hp("attention.head_count"))
    types = sorted({t.tensor_type.name for t in reader.tensors})
    return ModelInfo(
        spec=ref.spec,
        kind=ref.kind,
        location=str(ref.path),
        architecture=arch,
        layers=int(hp("block_count")),
        hidden_size=int(hp("embedding_length")),
        attention_heads=heads,
        kv_heads=int(hp("attention.head_count_kv", heads)),
        intermediate_size=int(hp("feed_forward_length")),
        vocab_size=int(hp("vocab_size", len(meta.get("tokenizer.ggml.tokens", [])))),
        context_length=int(hp("context_length")),
        parameters=gguf_file.tensor_param_count(reader),
        tied_embeddings="output.weight" not in names,
        chat_template=bool(meta.get("tokenizer.chat_template")),
        disk_bytes=ref.path.stat().st_size,
        weights_dtype=",".join(types),
    )


def model_info(spec: str) -> ModelInfo:
    ref = resolve(spec)
    if ref.kind == "hf_dir":
        return _hf_info(ref)
    if ref.kind == "gguf":
        return _gguf_info(ref)
    raise InvalidModelError(f"models info reads local models only; pull or download {spec!r} first")
