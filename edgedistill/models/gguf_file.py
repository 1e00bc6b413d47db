"""Reading GGUF files: validation, metadata, and the tokenizer they carry.

Facts used here (from the GGUF spec and llama.cpp): a file starts with the magic b"GGUF" and a version;
key/values hold hyper-parameters under "<arch>.*" and the tokenizer under "tokenizer.ggml.*"; token types
are 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte; "tokenizer.ggml.pre" names the
pre-tokenizer llama.cpp applies before BPE.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgedistill.errors import InvalidModelError

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
# What a decoder-only model takes (the originals' tokenizer_config.json says so too): without it transformers'
# generic fast tokenizer also returns token_type_ids, and model.generate(**tokenizer(text)) fails.
MODEL_INPUTS = ("input_ids", "attention_mask")


def open_gguf(path: Path):
    """Open a GGUF file with the `gguf` reader, turning every way a file can be broken into one clear error."""
    import gguf  # heavy-ish: numpy memmaps, imported on use

    path = Path(path)
    if not path.is_file():
        raise InvalidModelError(f"{path} is not a file")
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] != GGUF_MAGIC[: len(head[:4])] or not head:
        raise InvalidModelError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
    if len(head) < 8:
        raise InvalidModelError(f"{path} is a truncated GGUF file ({len(head)} bytes: the magic, then nothing); "
                                "download or export it again")
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:  # the reader raises ValueError/IndexError/struct errors on damaged files
        raise InvalidModelError(
            f"{path} is a damaged or truncated GGUF file ({type(e).__name__}: {e}); download it again"
        ) from None
    size = path.stat().st_size
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise InvalidModelError(
                f"{path} is truncated: tensor {t.name} ends at byte {end} but the file has {size} bytes; "
                "download it again"
            )
    return reader


def metadata(reader) -> dict[str, Any]:
    """All key/values as plain Python values (lists stay lists)."""
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        out[key] = field.contents()
    return out


def tensor_param_count(reader) -> int:
    return sum(int(t.n_elements) for t in reader.tensors)


_QWEN2_SPLIT = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_tokenizer(pre: str | None):
    """The pre-tokenizer llama.cpp applies for a given `tokenizer.ggml.pre` name, rebuilt with `tokenizers`.
    Returns None for names we have not implemented (the caller falls back to transformers' converter)."""
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("gpt-2", "gpt2", "default", None):
        return byte_level
    if pre == "qwen2":
        # Qwen2's split (llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2): contractions, letters with at most one leading
        # non-letter, single digits, punctuation runs, newlines, spaces; then bytes to the byte-level alphabet.
        split = pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False)
        return pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if pre == "smollm":
        # SmolLM's tokenizer splits digits one by one before the GPT-2 byte-level regex.
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return None


def build_tokenizer(reader, meta: dict[str, Any] | None = None):
    """A transformers fast tokenizer equivalent to the one llama.cpp builds from this file's metadata.

    Only byte-level BPE ("gpt2" model) with a known pre-tokenizer is rebuilt here; anything else returns
    None so the caller can use transformers' own GGUF tokenizer conversion instead.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    meta = meta if meta is not None else metadata(reader)
    if meta.get("tokenizer.ggml.model") != "gpt2":
        return None
    pre = _pre_tokenizer(meta.get("tokenizer.ggml.pre"))
    if pre is None:
        return None
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    vocab = {tok: i for i, tok in enumerate(tokens)}

    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tk.pre_tokenizer = pre
    tk.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == TOKEN_TYPE_CONTROL]
    user = [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == TOKEN_TYPE_USER_DEFINED]
    tk.add_special_tokens(special)
    if user:
        tk.add_tokens(user)

    def tok(key: str) -> str | None:
        idx = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(idx)] if idx is not None and 0 <= int(idx) < len(tokens) else None

    bos = tok("bos")
    if meta.get("tokenizer.ggml.add_bos_token") and bos is not None:
        # llama.cpp prepends BOS for such files; make transformers do the same.
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    else:
        tk.post_processor = processors.ByteLevel(trim_offsets=False)

    arch = meta.get("general.architecture", "llama")
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=bos,
        eos_token=tok("eos"),
        unk_token=tok("unknown"),
        pad_token=tok("padding") or tok("eos"),
        model_max_length=int(meta.get(f"{arch}.context_length", 2048)),
        clean_up_tokenization_spaces=False,
        model_input_names=list(MODEL_INPUTS),
    )
    template = meta.get("tokenizer.chat_template")
    if template:
        hf.chat_template = template
    return hf


def sentencepiece_model(meta: dict[str, Any]) -> bytes | None:
    """The SentencePiece model (tokenizer.model bytes) llama.cpp's "llama" tokenizer of this file implements: its
    pieces, scores and piece types, BPE merging by score, byte fallback when it has byte pieces, and the file's
    space-prefix rule. None for other tokenizer models. Gemma, Mistral and Phi-3 GGUFs carry this kind; written as
    tokenizer.model it is what transformers and llama.cpp's converter both read."""
    if meta.get("tokenizer.ggml.model") != "llama" or not meta.get("tokenizer.ggml.tokens"):
        return None
    from sentencepiece import sentencepiece_model_pb2 as pb

    tokens = list(meta["tokenizer.ggml.tokens"])
    scores = list(meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens))
    types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    m = pb.ModelProto()
    for piece, score, kind in zip(tokens, scores, types):
        p = m.pieces.add()
        p.piece, p.score = piece, float(score)
        p.type = int(kind) if int(kind) in (1, 2, 3, 4, 5, 6) else 1  # llama.cpp's token types are SentencePiece's
    t = m.trainer_spec
    t.model_type = pb.TrainerSpec.BPE
    t.vocab_size = len(tokens)
    t.byte_fallback = any(int(k) == 6 for k in types)
    for key, field in (("unknown", "unk_id"), ("bos", "bos_id"), ("eos", "eos_id"), ("padding", "pad_id")):
        idx = meta.get(f"tokenizer.ggml.{key}_token_id")
        setattr(t, field, int(idx) if idx is not None else -1)
    n = m.normalizer_spec
    n.name = "identity"
    n.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    n.remove_extra_whitespaces = False
    n.escape_whitespaces = True
    return m.SerializeToString()


def build_sentencepiece_tokenizer(meta: dict[str, Any]):
    """A transformers tokenizer for a GGUF with a SentencePiece ("llama") tokenizer, loaded from the
    tokenizer.model that `sentencepiece_model` rebuilds; the bytes ride along on the tokenizer
    (ORIGINAL_FILES) so that saving it writes tokenizer.model too. None for other tokenizer models."""
    import json

    from transformers import AutoTokenizer

    from edgedistill.paths import temp_dir

    spm = sentencepiece_model(meta)
    if spm is None:
        return None
    tokens = list(meta["tokenizer.ggml.tokens"])

    def tok(key: str) -> str | None:
        idx = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(idx)] if idx is not None and 0 <= int(idx) < len(tokens) else None

    arch = str(meta.get("general.architecture", "llama"))
    conf = {"tokenizer_class": "GemmaTokenizer" if arch.startswith("gemma") else "LlamaTokenizer",
            "bos_token": tok("bos"), "eos_token": tok("eos"), "unk_token": tok("unknown"),
            "pad_token": tok("padding") or tok("eos"), "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token")),
            "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token")), "legacy": True,
            "model_max_length": int(meta.get(f"{arch}.context_length", 2048)), "clean_up_tokenization_spaces": False}
    if conf["tokenizer_class"] == "GemmaTokenizer":
        conf["mask_token"] = None
    with temp_dir("spm") as tmp:
        (tmp / "tokenizer.model").write_bytes(spm)
        (tmp / "tokenizer_config.json").write_text(json.dumps(conf), encoding="utf-8")
        hf = AutoTokenizer.from_pretrained(tmp)
    hf.model_input_names = list(MODEL_INPUTS)
    template = meta.get("tokenizer.chat_template")
    if template:
        hf.chat_template = template
    setattr(hf, ORIGINAL_FILES, {"tokenizer.model": spm})
    return hf


# attribute of a tokenizer built here holding {file name: bytes} of original files to write beside it when saved
ORIGINAL_FILES = "_edgedistill_original_files"

