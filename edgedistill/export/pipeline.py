"""export_model: one model -> one validated bundle per variant (format:scheme).

Read top to bottom: check every variant and output path first (fail in the first second), load the float32
model once, compute the reference logits once, then per variant build into a temporary folder, load the result
in its runtime, compare, and either rename the folder into place with its manifest or drop it.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgedistill.errors import EdgeDistillError, InvalidModelError, UnsupportedError
from edgedistill.export import validate as V
from edgedistill.export.bundle import source_hash, write_manifest
from edgedistill.paths import atomic_dir, disk_full_named, ensure_writable_dir, remove_scratch, scratch_dir
from edgedistill.data.held_out import HeldOutSettings
from edgedistill.data.stage import GenerateSettings
from edgedistill.settings import Settings, like, setting
from edgedistill.settings import write as write_settings
from edgedistill.quantize import BuildContext, Scheme, bundle_name, format_of, get, unsupported_reason

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class ExportSettings(Settings):
    variants: list[str] = setting(["gguf:q4_k_m"], "FORMAT:SCHEME, e.g. gguf:q4_k_m or onnx:int4; repeatable "
                                                   "(--list shows them).", flag="--variant")
    # the bench's windows (declared there); validation needs fewer: it checks the file, the bench ranks variants
    chunks: int = like(HeldOutSettings, "chunks", 4)
    chunk_len: int = like(HeldOutSettings, "chunk_len")
    threads: int | None = setting(None, "Runtime threads during validation [default: all].", min=1)
    force: bool = setting(False, "Write variants that fail validation too (their manifest says so).")
    data_dir: Path | None = setting(None, "Data folder for validation text and calibration [default: "
                                          "calibration_data].", exists="dir", flag="--data")
    target: str | None = setting(None, "Target profile name to record in the manifests.")
    trust_remote_code: bool = like(GenerateSettings, "trust_remote_code")
    block_size: int | None = setting(None, "onnx int4/int8: weights per quantization block [default: 32].", min=16,
                                     max=256)
    symmetric: bool = setting(True, "onnx int4/int8: symmetric blocks, or with zero points.",
                              flag="--symmetric/--asymmetric")
    accuracy_level: int | None = setting(None, "onnx int4/int8: MatMulNBits compute precision [default 4: int8, "
                                               "fast; 0 unset, 1 fp32, 2 fp16, 3 bf16].", min=0, max=4)
    algorithm: str | None = setting(None, "onnx int4/int8: how blocks are fitted: rtn (round to nearest), k_quant, "
                                          "or k_quant_mixed (8-bit lm_head and most sensitive layers) [default: "
                                          "k_quant_mixed for int4, rtn for int8].", choices=("rtn", "k_quant",
                                                                                     "k_quant_mixed"))
    head_bits: int | None = setting(None, "onnx int4: bits of the output projection [default 4; 8 keeps it at 8 "
                                          "bits].", choices=(4, 8))

    imatrix: bool = setting(False, "gguf q4_0/q4_k_m/q5_k_m: weight llama.cpp's quantizer by an importance matrix "
                                   "that llama-imatrix computes on the train prompts (the file goes into the bundle).")
    imatrix_chunks: int = setting(32, "gguf --imatrix: chunks of 512 calibration tokens.", min=1, max=4096)

    def extra_problems(self) -> list[str]:
        return [] if self.variants else ["no variants given"]

    @property
    def options(self) -> dict:
        """What the scheme builders read (BuildContext.options)."""
        return {"block_size": self.block_size, "symmetric": self.symmetric, "accuracy_level": self.accuracy_level,
                "algorithm": self.algorithm, "head_bits": self.head_bits, "imatrix": self.imatrix,
                "imatrix_chunks": self.imatrix_chunks if self.imatrix else None}


@dataclass
class VariantResult:
    key: str
    passed: bool
    path: Path | None  # the bundle, None when it failed and was not written
    metrics: dict | None = None
    manifest: dict | None = None
    error: str | None = None


def _check_source(model_dir: Path) -> None:
    if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        raise InvalidModelError(
            f"{model_dir} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); a bundle needs one: copy the teacher's "
            "tokenizer files into it (students from `edgedistill prune`/`distill` carry them)"
        )
    if not list(model_dir.glob("*.safetensors")):
        raise InvalidModelError(f"{model_dir} has no .safetensors weights; export reads safetensors only")


def export_model(spec: str, out: Path, settings: ExportSettings,
                 on_step: Callable[[str], None] | None = None) -> list[VariantResult]:
    """Export `spec` (registry name, model directory or .gguf) to out/FORMAT-SCHEME/ for every variant."""
    step = on_step or (lambda msg: log.info(msg))
    schemes = [get(v) for v in settings.variants]
    keys = [s.key for s in schemes]
    if len(set(keys)) != len(keys):
        raise EdgeDistillError(f"a variant is listed twice: {', '.join(keys)}")
    out = Path(out)
    top = out  # the outermost folder this export creates: removed again if it ends with nothing written
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    created = not top.exists()
    out = ensure_writable_dir(out, "--out folder")
    try:
        with disk_full_named(out):
            return _export(spec, out, settings, schemes, step)
    finally:
        if created and top.is_dir() and not any(p.is_file() for p in top.rglob("*")):  # failed or interrupted
            shutil.rmtree(top, ignore_errors=True)


def _export(spec: str, out: Path, settings: ExportSettings, schemes, step) -> list[VariantResult]:
    from edgedistill.models import load_model, resolve
    from edgedistill.models.locate import save_tokenizer

    for s in schemes:
        if (out / bundle_name(s.key)).exists():
            raise EdgeDistillError(f"{out / bundle_name(s.key)} exists already; remove it or choose another --out")

    ref = resolve(spec, pull=True)
    work = scratch_dir(out, ".export-work-")
    try:
        if ref.kind == "hf_dir":
            model_dir = ref.path
            _check_source(model_dir)
        step(f"loading {spec}")
        model, tokenizer = load_model(ref, trust_remote_code=settings.trust_remote_code)
        if ref.kind != "hf_dir":  # the ONNX builder and bitsandbytes read a directory: write the float32 model once
            model_dir = work / "source"
            model.save_pretrained(model_dir, safe_serialization=True)
            save_tokenizer(tokenizer, model_dir)
        imatrix_text = None
        for s in schemes:  # an architecture a format cannot write fails now, not after the other variants
            if (why := unsupported_reason(s.key, model_dir)) is not None:
                raise UnsupportedError(f"{s.key}: {why}")
        if settings.imatrix and any("imatrix" in s.options for s in schemes):  # the schemes that take one
            imatrix_text = calibration_text(settings.data_dir, tokenizer)  # no train prompts: fail before work
        source = _source_record(spec, ref, model_dir, model)

        step(f"reference logits: {settings.chunks} held-out chunks of {settings.chunk_len} tokens")
        chunks = V.held_out_chunks(tokenizer, settings.chunks, settings.chunk_len, settings.data_dir)
        reference = V.torch_logits(model, chunks)

        results = []
        for s in schemes:
            step(f"{s.key}: building")
            ctx = BuildContext(model=model, tokenizer=tokenizer, model_dir=model_dir, out_dir=Path(), work_dir=work,
                               options={**settings.options, "name": source["name"], "imatrix_text": imatrix_text,
                                        "trust_remote_code": settings.trust_remote_code},
                               threads=settings.threads)
            results.append(_one_variant(s, ctx, out, settings, chunks, reference, source, step))
        if any(r.path for r in results):  # beside the bundles written (none written: nothing left behind)
            write_settings(settings, out / "settings.yaml")
        return results
    finally:
        remove_scratch(work)


def calibration_text(data_dir: Path | None, tokenizer) -> str:
    """The importance matrix's calibration text: every domain's train-split prompts in the model's chat format.
    Validation reads the domain texts, never these prompts, so the matrix is not fitted to what judges it."""
    from edgedistill.data import default_data_dir
    from edgedistill.data.load import load_prompts
    from edgedistill.models.generate import prompt_text

    data_dir = Path(data_dir) if data_dir else default_data_dir()
    files = sorted(data_dir.glob("*/prompts/train.jsonl"))
    if not files:
        raise EdgeDistillError(f"no */prompts/train.jsonl under {data_dir}: the importance matrix needs train prompts")
    parts = []
    for f in files:
        for p in load_prompts(f)[0]:
            parts.append(prompt_text(tokenizer, p.messages))
    return "\n".join(parts)


class _Failed(Exception):
    def __init__(self, metrics: dict, reason: str):
        super().__init__(reason)
        self.metrics, self.reason = metrics, reason


def _one_variant(s: Scheme, ctx: BuildContext, out: Path, settings: ExportSettings, chunks, reference, source,
                 step) -> VariantResult:
    dest = out / bundle_name(s.key)
    try:
        with atomic_dir(dest) as tmp:
            ctx.out_dir = tmp
            main = s.build(ctx)
            if not (tmp / "tokenizer.json").exists():
                from edgedistill.models.locate import save_tokenizer

                save_tokenizer(ctx.tokenizer, tmp)
            step(f"{s.key}: validating in {s.runtime}")
            metrics = _validate(s, main, ctx, chunks, reference, settings)
            reasons = _over_tolerance(s, metrics)
            if reasons and not settings.force:
                raise _Failed(metrics, "; ".join(reasons))
            manifest = write_manifest(tmp, _record(s, main, ctx, metrics, reasons, source, settings))
        return VariantResult(s.key, not reasons, dest, metrics, manifest, "; ".join(reasons) or None)
    except _Failed as f:
        return VariantResult(s.key, False, None, f.metrics, None, f.reason)


def _validate(s: Scheme, main: Path, ctx: BuildContext, chunks, reference, settings) -> dict:
    """The file in its format's runner against the float model's logits (and greedy tokens, for exact schemes)."""
    runner = format_of(s.key).runner(main, n_ctx=max(settings.chunk_len, 256), threads=settings.threads, ctx=ctx)
    try:
        metrics = V.validate(ctx.model, ctx.tokenizer, runner.logits, chunks, reference_logits=reference,
                             candidate_greedy=runner.greedy if s.exact else None)
    finally:
        runner.close()
    return metrics.as_dict()


def _over_tolerance(s: Scheme, m: dict) -> list[str]:
    reasons = []
    if m["mean_kl"] > s.max_kl:
        reasons.append(f"mean KL {m['mean_kl']:.4f} > tolerance {s.max_kl}")
    if m["top1_agreement"] < s.min_top1:
        reasons.append(f"top-1 agreement {100 * m['top1_agreement']:.1f}% < tolerance {100 * s.min_top1:.0f}%")
    if m.get("greedy_match") is False:
        reasons.append("greedy generation differs from the torch model")
    return reasons


def _record(s: Scheme, main: Path, ctx: BuildContext, metrics: dict, reasons: list[str], source: dict,
            settings: ExportSettings) -> dict:
    files = [p for p in main.parent.iterdir() if p.name.startswith(main.name)]  # with external data, if any
    model_bytes = sum(p.stat().st_size for p in files)
    params = source["parameters"]
    quant = format_of(s.key).manifest_extras(main, s, ctx.options)
    return {
        "format": s.format,
        "scheme": s.name,
        "runtime": s.runtime,
        "model_file": main.name,
        "model_bytes": model_bytes,
        "parameters": params,
        "bits_per_weight": 8 * model_bytes / params,
        "quantization": {**quant, "options": {k: v for k, v in ctx.options.items()
                                              if k in s.options and v is not None}},
        "source": source,
        "validation": {**metrics, "tolerance": {"max_kl": s.max_kl, "min_top1": s.min_top1,
                                                "exact_greedy": s.exact},
                       "passed": not reasons, "forced": bool(reasons), "failures": reasons},
        "target": settings.target,
        "chat_template": bool(getattr(ctx.tokenizer, "chat_template", None)),
    }


def _source_record(spec: str, ref, model_dir: Path, model) -> dict:
    """The manifest's record of the model a bundle was made from: names and a hash, never a folder of this machine
    (a bundle ships to other machines)."""
    from edgedistill.formats.gguf import model_name

    rec = {"model": model_name(spec), "name": ref.name or Path(str(ref.location)).name,
           "sha256": source_hash(model_dir), "parameters": int(model.num_parameters()),
           "architecture": model.config.model_type}
    for extra in ("edgedistill.json", "pruning.json"):  # provenance of pulled teachers / pruned students
        p = model_dir / extra
        if p.is_file():
            try:
                data = json.loads(p.read_text())
                teacher = data.get("teacher") or data.get("registry_name")
            except (OSError, ValueError):
                continue
            if teacher:
                rec["teacher"] = model_name(str(teacher))
    return rec
