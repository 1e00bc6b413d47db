"""transformers model folder -> GGUF file, by llama.cpp's own converter (`convert_hf_to_gguf.py`).

The converter comes from the llama.cpp sources of the installed llama-cpp-python (formats/llamacpp_source.py), so
the file is written by the same llama.cpp version that loads it. It knows the architectures (tensor layout, rotary
permutations, per-family hyper-parameters) and tokenizers (BPE, SentencePiece) of hundreds of model families.

One thing is added here: llama.cpp names a BPE tokenizer's pre-tokenizer by the hash of its encoding of a fixed
text, and refuses tokenizers whose hash it has not seen, even when their pre-tokenizer is a plain GPT-2 one
(retrained vocabularies, the tiny tokenizers of the tests). For those, `pre_tokenizer_name` reads the
pre-tokenizer's structure from tokenizer.json and names it when it is one llama.cpp implements.

Quantized types are made from the F16 file by llama.cpp's own quantizer (quantize/gguf.py).
"""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import sys
from pathlib import Path

from edgedistill.errors import EdgeDistillError, InvalidModelError, UnsupportedError
from edgedistill.paths import temp_dir

log = logging.getLogger(__name__)

OUT_TYPES = ("f32", "f16")

# Runs in a child process (llama.cpp's converter wants its own gguf-py first on the path, and an interrupted
# conversion is then simply killed): the converter's main(), with the structural pre-tokenizer fallback.
_DRIVER = r"""
import runpy, sys
src, fallback = sys.argv[1], sys.argv[2]
sys.path[0:0] = [src, src + "/gguf-py"]
from conversion import base

_by_hash = base.TextModel.get_vocab_base_pre

def get_vocab_base_pre(self, tokenizer):
    try:
        return _by_hash(self, tokenizer)
    except NotImplementedError:
        if not fallback:
            raise
        print(f"edgedistill: pre-tokenizer not known by hash; named {fallback!r} by its structure", file=sys.stderr)
        return fallback

base.TextModel.get_vocab_base_pre = get_vocab_base_pre
if sys.argv[3] == "--lora":  # llama.cpp's adapter converter, which reuses the model classes above
    sys.argv = [src + "/convert_lora_to_gguf.py", *sys.argv[4:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
    sys.exit(0)
if sys.argv[3] == "--list":
    import conversion
    conversion.load_all_models()
    print("\n".join(sorted(conversion.TEXT_MODEL_MAP)))
    sys.exit(0)
sys.argv = [src + "/convert_hf_to_gguf.py", *sys.argv[3:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run(args: list[str], fallback: str = "", output: Path | None = None) -> subprocess.CompletedProcess:
    from edgedistill import children
    from edgedistill.formats.llamacpp_source import source_dir

    return children.run([sys.executable, "-c", _DRIVER, str(source_dir()), fallback, *args], output=output)


@functools.lru_cache(maxsize=1)
def supported_architectures() -> frozenset[str]:
    """The `architectures` names (config.json) that llama.cpp's converter writes as text models."""
    proc = _run(["--list"])
    if proc.returncode != 0:
        raise EdgeDistillError(f"llama.cpp's converter did not start: {_last_line(proc.stderr)}")
    return frozenset(proc.stdout.split())


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(("WARNING", "INFO"))]
    return lines[-1] if lines else "no message"


def check_model_dir(model_dir: Path) -> dict:
    """Refuse, before any work, a folder the converter cannot take: no config, an architecture it does not know,
    no tokenizer files. Returns the config."""
    model_dir = Path(model_dir)
    try:
        cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InvalidModelError(f"{model_dir} has no readable config.json ({e}); it is not a transformers model") from None
    archs = cfg.get("architectures") or []
    if not archs:
        raise InvalidModelError(f"{model_dir}/config.json names no architectures; GGUF conversion needs one")
    if archs[0] not in supported_architectures():
        from edgedistill.formats.onnx import SUPPORTED_ARCHS as ONNX_ARCHS

        hint = "; export it to ONNX instead (--variant onnx:fp32)" if cfg.get("model_type") in ONNX_ARCHS else ""
        raise UnsupportedError(f"llama.cpp's converter (the GGUF writer) does not know the architecture "
                               f"{archs[0]!r}{hint}")
    if not any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        raise InvalidModelError(f"{model_dir} has no tokenizer.json or tokenizer.model; GGUF files carry the "
                                "tokenizer, so save it beside the model (tokenizer.save_pretrained)")
    return cfg


def convert(model_dir: Path, out: Path, *, dtype: str = "f16", name: str | None = None) -> Path:
    """Write the transformers model in `model_dir` (config, safetensors, tokenizer files) to `out` as one GGUF
    file of `dtype` (f16: 2-D weights in F16, norms in F32; f32). The caller gives a temporary `out`."""
    if dtype not in OUT_TYPES:
        raise UnsupportedError(f"GGUF conversion writes {' or '.join(OUT_TYPES)}, not {dtype!r}; other types are "
                               "quantized from f16")
    from edgedistill.models.families import find_family

    fam = find_family(check_model_dir(model_dir))
    name = name or Path(model_dir).name
    if fam and fam.gguf_name_tag and fam.gguf_name_tag not in name.lower().replace("-", ""):
        name = f"{name}-{fam.gguf_name_tag}"  # llama.cpp keys the family's token rules on the name
    with temp_dir("gguf-view") as tmp:
        view = _converter_view(Path(model_dir), tmp)
        meta = tmp / ".edgedistill-metadata.json"
        meta.write_text(json.dumps(provenance(Path(model_dir), name)))
        args = [str(view), "--outfile", str(out), "--outtype", dtype]
        args += ["--model-name", name, "--metadata", str(meta)]
        return _write(args, Path(out), f"llama.cpp's converter failed on {model_dir}",
                      fallback=_fallback_pre(Path(model_dir)))


def _write(args: list[str], out: Path, failed: str, fallback: str = "") -> Path:
    """Run the converter driver writing `out`; nothing is left at `out` when it fails or is interrupted, and the
    failure is `failed` with the converter's last line."""
    try:
        proc = _run(args, fallback=fallback, output=out)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    log.debug("llama.cpp converter:\n%s", proc.stderr)
    if proc.returncode != 0 or not out.is_file():
        out.unlink(missing_ok=True)
        raise EdgeDistillError(f"{failed}: {_last_line(proc.stderr)}")
    return out


def convert_lora(adapter_dir: Path, base_dir: Path, out: Path, *, dtype: str = "f16") -> Path:
    """Write a peft LoRA adapter (adapter_config.json + adapter_model.safetensors in `adapter_dir`) as a GGUF LoRA
    file that llama.cpp applies over the base model's GGUF, by llama.cpp's own `convert_lora_to_gguf.py`; `base_dir`
    is the base model's Hugging Face folder (its config decides the tensor names). The caller gives a temporary
    `out`."""
    if dtype not in OUT_TYPES:
        raise UnsupportedError(f"GGUF LoRA conversion writes {' or '.join(OUT_TYPES)}, not {dtype!r}")
    check_model_dir(base_dir)
    return _write(["--lora", str(adapter_dir), "--base", str(base_dir), "--outfile", str(out), "--outtype", dtype],
                  Path(out), f"llama.cpp's LoRA converter failed on {adapter_dir}")


def model_name(spec: str) -> str:
    """A model as a file shipped to another machine names it: never a folder of the machine that built it. A registry
    name as it is; a folder by the registry name it was pulled as, "TEACHER (pruned)" for a student `prune` cut, else
    the folder's own name (the last part of its path)."""
    path = Path(spec).expanduser()
    if not path.is_absolute() and len(path.parts) == 1 and not path.is_dir():
        return spec  # a registry name, or a served model's
    pruned = lambda r: r.get("teacher") and f"{model_name(str(r['teacher']))} (pruned)"  # noqa: E731
    for record, name_of in (("edgedistill.json", lambda r: r.get("registry_name")), ("pruning.json", pruned)):
        try:
            name = name_of(json.loads((path / record).read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError):
            continue
        if name:
            return str(name)
    return path.name or spec


def provenance(model_dir: Path, name: str) -> dict:
    """The GGUF `general.*` keys edgedistill adds through the converter's metadata override: the name, and for a
    student made here its base model (the distilled student's starting point, or the teacher it was pruned from),
    the teacher, and tags saying how it was made. The size label is the converter's own, from the parameter count.
    (llama-bench's "llama ?B" column is not from these keys: llama.cpp names a size only for the layer counts of
    the models it knows.)"""
    meta: dict = {"general.name": name}
    records = {}
    for f in ("distill.json", "pruning.json"):
        try:
            records[f] = json.loads((model_dir / f).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
    distilled, pruned = records.get("distill.json") or {}, records.get("pruning.json") or {}
    teacher = distilled.get("teacher") or pruned.get("teacher")
    base = distilled.get("student_init") or pruned.get("teacher")
    teacher = teacher and model_name(str(teacher))
    if base:
        meta["general.base_models"] = [{"name": model_name(str(base))}]
    if teacher:
        how = "distilled" if distilled else "pruned"
        meta["general.description"] = f"{how} by edgedistill from the teacher {teacher}"
        meta["general.tags"] = ["edgedistill", "distillation" if distilled else "pruning"]
    return meta


def _converter_view(model_dir: Path, tmp: Path) -> Path:
    """The folder the converter reads. transformers 5 no longer writes `added_tokens_decoder` into
    tokenizer_config.json, and that is where the converter learns which SentencePiece pieces are special (Gemma's
    <start_of_turn>, Phi-3's <|end|>): without it they become plain text in the GGUF vocabulary. For such a folder
    the view is a folder of links to its files with that table restored from tokenizer.json's added tokens."""
    try:
        conf = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        added = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens") or []
    except (OSError, ValueError):
        return model_dir
    if "added_tokens_decoder" in conf or not added:
        return model_dir
    for f in model_dir.iterdir():
        if f.name != "tokenizer_config.json":
            (tmp / f.name).symlink_to(f.resolve())
    conf["added_tokens_decoder"] = {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                                     "single_word", "special") if k in t}
                                    for t in added}
    (tmp / "tokenizer_config.json").write_text(json.dumps(conf, indent=2), encoding="utf-8")
    return tmp


def write_gguf(model, tokenizer, out: Path, *, dtype: str = "f16", name: str = "model") -> Path:
    """Write an in-memory transformers model and its tokenizer to `out` as one GGUF file (saved to a temporary
    folder first: the converter reads folders)."""
    with temp_dir("gguf-src") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        from edgedistill.models.locate import save_tokenizer

        save_tokenizer(tokenizer, tmp)
        return convert(tmp, out, dtype=dtype, name=name)


def _fallback_pre(model_dir: Path) -> str:
    try:
        tj = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    try:
        return pre_tokenizer_name(tj)
    except UnsupportedError:
        return ""  # the converter's own refusal then stands


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """The `tokenizer.ggml.pre` name llama.cpp uses for this tokenizer's pre-tokenization, read from its
    structure: GPT-2's byte-level regex, or SmolLM's single digits then that regex."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [(p.get("type"), p.get("individual_digits")) for p in parts]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    if kinds == [("ByteLevel", None)] and byte_level[0].get("use_regex", True):
        return "gpt-2"
    if kinds == [("Digits", True), ("ByteLevel", None)] and byte_level[0].get("use_regex", True):
        return "smollm"
    raise UnsupportedError(f"no llama.cpp name for the pre-tokenizer {json.dumps(pre)[:120]}")
