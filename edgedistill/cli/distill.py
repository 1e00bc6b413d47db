"""edgedistill prune"""

from __future__ import annotations

from pathlib import Path

import click

from edgedistill.models.registry import DEFAULT_TEACHER


@click.command("prune")
@click.argument("teacher", default=DEFAULT_TEACHER)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="New student folder.")
@click.option("--layers", type=click.IntRange(1), default=None, help="Blocks to keep (the most important ones).")
@click.option("--hidden", type=click.IntRange(1), default=None, help="Hidden size.")
@click.option("--ffn", type=click.IntRange(1), default=None, help="FFN intermediate size.")
@click.option("--heads", type=click.IntRange(1), default=None, help="Query heads.")
@click.option("--kv-heads", type=click.IntRange(1), default=None, help="Key/value heads (groups).")
@click.option("--hw-friendly", is_flag=True,
              help="Largest width whose rows are multiples of 256 (real llama.cpp K-quants); explicit sizes win.")
@click.option("--calibration", type=click.Path(exists=True, path_type=Path), default=None,
              help="Text file or folder of .txt (default: every domain's texts/ in calibration_data/).")
@click.option("--max-tokens", type=click.IntRange(256), default=16384, show_default=True,
              help="Calibration tokens used to measure importance.")
def prune_cmd(teacher, out, layers, hidden, ffn, heads, kv_heads, hw_friendly, calibration, max_tokens):
    """Derive a smaller student from TEACHER by depth and width pruning, chosen by measured importance."""
    from edgedistill.cli.progress import byte_progress
    from edgedistill.data import default_data_dir, load_texts
    from edgedistill.distill.prune import StudentShape, derive_student, hardware_friendly
    from edgedistill.models.locate import load_model

    if calibration is None:
        texts = [t for d in sorted(default_data_dir().glob("*/texts")) for _, t in load_texts(d)]
    else:
        texts = [t for _, t in load_texts(calibration)]
    loaded = load_model(teacher)
    shape = StudentShape(layers, hidden, ffn, heads, kv_heads)
    if hw_friendly:
        hw = hardware_friendly(loaded[0], layers)
        shape = StudentShape(layers, hidden or hw.hidden, ffn or hw.ffn, heads or hw.heads, kv_heads or hw.kv_heads)
    with byte_progress() as progress:
        path = derive_student(teacher, shape, _interleave(texts), out, max_tokens=max_tokens, progress=progress,
                              loaded=loaded)
    import json

    rec = json.loads((path / "pruning.json").read_text())
    s = rec["shape"]
    click.echo(f"student in {path}: {rec['student_parameters'] / 1e6:.1f}M parameters "
               f"(teacher {rec['teacher_parameters'] / 1e6:.1f}M); layers {s['layers']}, hidden {s['hidden']}, "
               f"FFN {s['ffn']}, heads {s['heads']}/{s['kv_heads']} kv; kept blocks {rec['kept_layers']}")


def _interleave(texts: list[str], chunk: int = 2000) -> list[str]:
    """Round-robin pieces of each text, so the first N tokens cover all of them."""
    pieces = [[t[i : i + chunk] for i in range(0, len(t), chunk)] for t in texts]
    out = []
    for k in range(max(len(p) for p in pieces)):
        out += [p[k] for p in pieces if k < len(p)]
    return out
