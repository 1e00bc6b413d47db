"""edgedistill export"""

from __future__ import annotations

from pathlib import Path

import click

from edgedistill.models.registry import DEFAULT_TEACHER

ALL = ("gguf:f16", "gguf:q8_0", "gguf:q5_k_m", "gguf:q4_k_m", "gguf:q4_0", "onnx:fp32", "onnx:int8", "onnx:int4")


def _schemes_help() -> str:
    from edgedistill.quantize import schemes

    return "\n".join(f"  {s.key:<20} {s.help}" for s in schemes().values())


@click.command("export", epilog="Schemes (FORMAT:SCHEME) are listed by --list.")
@click.argument("model", default=DEFAULT_TEACHER)
@click.option("--out", type=click.Path(path_type=Path), help="Folder for the bundles (one per variant).")
@click.option("--variant", "variants", multiple=True, metavar="FORMAT:SCHEME",
              help="e.g. gguf:q4_k_m or onnx:int4; repeatable. Default: gguf:q4_k_m.")
@click.option("--all", "all_", is_flag=True, help=f"Every standard variant: {', '.join(ALL)}.")
@click.option("--list", "list_", is_flag=True, help="List the formats and schemes and exit.")
@click.option("--force", is_flag=True, help="Write variants that fail validation too (their manifest says so).")
@click.option("--chunks", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Held-out text chunks for validation.")
@click.option("--chunk-len", type=click.IntRange(16, 8192), default=256, show_default=True, help="Tokens per chunk.")
@click.option("--threads", type=click.IntRange(1), default=None, help="Runtime threads during validation (default: all).")
@click.option("--block-size", type=click.IntRange(16, 256), default=None,
              help="onnx int4/int8: weights per quantization block (default 32).")
@click.option("--asymmetric", is_flag=True, help="onnx int4/int8 (rtn): with zero points (default symmetric).")
@click.option("--accuracy-level", type=click.IntRange(0, 4), default=None,
              help="onnx int4/int8: MatMulNBits compute precision (default 4: int8, fast; 0 unset, 1 fp32, 2 fp16, 3 bf16).")
@click.option("--algorithm", type=click.Choice(["hqq", "rtn"]), default=None,
              help="onnx int4: fit the 4-bit blocks by HQQ (default) or round to nearest.")
@click.option("--head-bits", type=click.Choice(["4", "8"]), default=None,
              help="onnx int4: bits of the output projection (default 4; 8 keeps it at 8 bits, round-to-nearest).")
@click.option("--target", default=None, help="Target profile name to record in the manifests.")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Data folder for validation text and calibration (default: calibration_data/).")
@click.option("--trust-remote-code", is_flag=True)
def export_cmd(model, out, variants, all_, list_, force, chunks, chunk_len, threads, block_size, asymmetric,
               accuracy_level, algorithm, head_bits, target, data_dir, trust_remote_code):
    """Quantize and export MODEL to GGUF / ONNX bundles, each validated against the float32 torch model.

    Every variant is built in a temporary folder, loaded in its runtime (llama-cpp-python, onnxruntime, torch)
    and compared with the torch model on held-out text (mean KL, top-1 agreement, perplexity ratio; F16 GGUF and
    fp32 ONNX must also reproduce greedy generation). Only variants within their tolerance are written, as
    OUT/FORMAT-SCHEME/ with manifest.json. Exit code 1 when a variant failed.

    Example: edgedistill export smollm2-135m-instruct --out bundles --variant gguf:q4_k_m --variant onnx:int4
    """
    from edgedistill.progress import stderr
    from edgedistill.errors import EdgeDistillError
    from edgedistill.export.pipeline import ExportSettings, export_model

    if list_:
        click.echo(_schemes_help())
        return
    if out is None:
        raise EdgeDistillError("--out is required: the folder that receives one bundle per variant")
    chosen = list(ALL) if all_ else list(variants) or ["gguf:q4_k_m"]
    if all_ and variants:
        chosen += [v for v in variants if v not in ALL]
    options = {"block_size": block_size, "symmetric": not asymmetric, "accuracy_level": accuracy_level,
               "algorithm": algorithm, "head_bits": int(head_bits) if head_bits else None}
    settings = ExportSettings(variants=chosen, chunks=chunks, chunk_len=chunk_len, threads=threads, force=force,
                              options=options, data_dir=data_dir, target=target,
                              trust_remote_code=trust_remote_code)
    with stderr.status("exporting") as status:
        results = export_model(model, out, settings, on_step=lambda msg: status.update(msg))
    click.echo(f"{'variant':<18} {'result':<8} {'size MB':>8} {'bits/w':>7} {'mean KL':>8} {'top-1':>7} {'ppl x':>7}")
    for r in results:
        m = r.metrics or {}
        size = f"{r.manifest['model_bytes'] / 1e6:.1f}" if r.manifest else "-"
        bpw = f"{r.manifest['bits_per_weight']:.2f}" if r.manifest else "-"
        state = "ok" if r.passed else ("FORCED" if r.path else "FAILED")
        click.echo(f"{r.key:<18} {state:<8} {size:>8} {bpw:>7} {m.get('mean_kl', float('nan')):>8.4f} "
                   f"{100 * m.get('top1_agreement', float('nan')):>6.1f}% {m.get('ppl_ratio', float('nan')):>7.3f}")
        quant = (r.manifest or {}).get("quantization", {})
        if quant.get("fallback_share"):
            types = ", ".join(f"{k} {v}" for k, v in quant["tensor_types"].items() if k != "F32")
            click.echo(f"  {100 * quant['fallback_share']:.0f}% of weights fell back from the scheme's main types "
                       f"(rows not a multiple of 256?); tensors by type: {types}")
        if r.error:
            click.echo(f"  {'written anyway (--force): ' if r.path else 'not written: '}{r.error}")
    if any(not r.passed and r.path is None for r in results):
        raise SystemExit(1)
