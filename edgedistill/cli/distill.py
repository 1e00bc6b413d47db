"""edgedistill prune | cache-logits | distill: flags from each stage's settings, one library call each."""

from __future__ import annotations

import click

from edgedistill.cli.options import settings_from, settings_options
from edgedistill.distill.stage import CacheSettings, DistillSettings, PruneSettings


@click.command("prune")
@click.argument("teacher_arg", metavar="[TEACHER]", required=False)
@settings_options(PruneSettings)
def prune_cmd(teacher_arg, **flags):
    """Derive a smaller student from --teacher by depth and width pruning, chosen by measured importance. (The
    teacher as a first argument still works for one release.)"""
    from edgedistill.distill.stage import prune
    from edgedistill.progress import byte_progress
    from edgedistill.settings import deprecated

    if teacher_arg is not None:
        deprecated("prune TEACHER (the model as an argument)", "prune --teacher TEACHER")
        flags["teacher"] = flags.get("teacher") or teacher_arg
    s = settings_from(PruneSettings, flags)
    with byte_progress() as progress:
        rec = prune(s, progress=progress)
    sh = rec["shape"]
    click.echo(f"student in {s.out}: {rec['student_parameters'] / 1e6:.1f}M parameters "
               f"(teacher {rec['teacher_parameters'] / 1e6:.1f}M); layers {sh['layers']}, hidden {sh['hidden']}, "
               f"FFN {sh['ffn']}, heads {sh['heads']}/{sh['kv_heads']} kv; kept blocks {rec['kept_layers']}")


@click.command("distill")
@settings_options(DistillSettings)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
def distill_cmd(resume, **flags):
    """Train STUDENT to imitate TEACHER on teacher generations: logit distillation where the two share a tokenizer,
    sequence-level on the teacher's text where they do not (decided first and printed). To re-apply
    safety afterwards: `edgedistill safety reapply --student OUT/student`."""
    from edgedistill.distill.pairing import WORDS
    from edgedistill.distill.stage import distill, validation_line
    from edgedistill.progress import training_progress

    s = settings_from(DistillSettings, flags)
    with training_progress() as progress:
        report = distill(s, resume=resume, progress=progress, echo=lambda m: click.echo(m, err=True))
    click.echo(f"student in {s.out / 'student'} after {report['steps']} steps of "
               f"{WORDS[report['pairing']['kind']]}; "
               + validation_line(report.get("validation")))


@click.command("cache-logits")
@settings_options(CacheSettings)
def cache_logits_cmd(**flags):
    """Run the teacher once and store its top-k log-probabilities per response token for offline KD."""
    from edgedistill.distill.stage import cache_logits
    from edgedistill.progress import byte_progress

    s = settings_from(CacheSettings, flags)
    with byte_progress() as progress:
        meta = cache_logits(s, progress=progress)
    click.echo(f"{s.out}: {meta['tokens']} tokens of {meta['sequences']} sequences, {meta['bytes_per_token']:.0f} "
               f"bytes/token ({meta['file_bytes'] / 1e6:.1f} MB); the top {s.k} hold "
               f"{100 * meta['teacher_mass_in_top_k']:.1f}% of the teacher's probability mass on average")
