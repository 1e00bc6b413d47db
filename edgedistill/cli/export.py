"""edgedistill export"""

from __future__ import annotations

from pathlib import Path

import click

from edgedistill.cli.options import settings_from, settings_options
from edgedistill.export.pipeline import ExportSettings

from edgedistill.models.registry import DEFAULT_TEACHER



def standard_variants() -> list[str]:
    """Every scheme of the formats the offline runtime loads (GGUF, ONNX), in registry order."""
    from edgedistill.quantize import formats, schemes

    return [k for k, s in schemes().items() if formats()[s.format].offline]


def _schemes_help() -> str:
    from edgedistill.quantize import schemes

    return "\n".join(f"  {s.key:<20} {s.help}" for s in schemes().values())


@click.command("export", epilog="Schemes (FORMAT:SCHEME) are listed by --list.")
@click.argument("model", default=DEFAULT_TEACHER)
@click.option("--out", type=click.Path(path_type=Path), help="Folder for the bundles (one per variant).")
@settings_options(ExportSettings)
@click.option("--all", "all_", is_flag=True, help="Every variant of the formats the offline runtime loads (--list).")
@click.option("--list", "list_", is_flag=True, help="List the formats and schemes and exit.")
def export_cmd(model, out, all_, list_, **flags):
    """Quantize and export MODEL to GGUF / ONNX bundles, each validated against the float32 torch model.

    Every variant is built in a temporary folder, loaded in its runtime (llama-cpp-python, onnxruntime, torch)
    and compared with the torch model on held-out text (mean KL, top-1 agreement, perplexity ratio; F16 GGUF and
    fp32 ONNX must also reproduce greedy generation). Only variants within their tolerance are written, as
    OUT/FORMAT-SCHEME/ with manifest.json (OUT/settings.yaml: the settings). Exit code 1 when a variant failed.

    Example: edgedistill export smollm2-135m-instruct --out bundles --variant gguf:q4_k_m --variant onnx:int4
    """
    from edgedistill.progress import stderr
    from edgedistill.errors import EdgeDistillError
    from edgedistill.export.pipeline import export_model

    if list_:
        click.echo(_schemes_help())
        return
    if out is None:
        raise EdgeDistillError("--out is required: the folder that receives one bundle per variant")
    if all_:
        given = list(flags.get("variants") or ())
        every = standard_variants()
        flags["variants"] = every + [v for v in given if v not in every]
    settings = settings_from(ExportSettings, flags)
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
