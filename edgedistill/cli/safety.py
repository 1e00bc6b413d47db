"""edgedistill safety eval MODEL|BUNDLE [--compare T] | safety reapply --student S --out O"""

from __future__ import annotations

from pathlib import Path

import click

from edgedistill.cli.options import settings_from, settings_options
from edgedistill.safety.reapply import ReapplySettings
from edgedistill.safety.stage import SafetyEvalSettings


@click.group("safety")
def safety() -> None:
    """Refusal behaviour: harmful requests refused, benign look-alikes answered (calibration_data/safety)."""


@safety.command("eval")
@click.argument("model")
@settings_options(SafetyEvalSettings, skip=("model",))
def eval_cmd(model, **flags) -> None:
    """Refusal rate on harmful prompts and over-refusal on benign look-alikes, per category. MODEL is a registry
    name, a Hugging Face folder or an exported bundle."""
    from edgedistill.progress import stderr
    from edgedistill.safety import CATEGORIES
    from edgedistill.safety.stage import evaluate_suite

    s = settings_from(SafetyEvalSettings, {**flags, "model": model})
    report = evaluate_suite(s, status=stderr.status)
    results = report["models"]
    cols = list(results)

    def pct(v):
        return "   —  " if v is None else f"{100 * v:5.1f}%"

    names = [Path(c).name for c in cols]
    if len(set(names)) < len(names):  # runs/a/student beside runs/b/student: name them by their run folders
        names = [Path(c).parent.name or c for c in cols]
    head = "".join(f"  {'refused ' + n[:14]:>24}  {'over-ref ' + n[:13]:>24}" for n in names)
    click.echo(f"{'category':<18}{head}" + ("     Δ refused  Δ over-refusal" if len(cols) == 2 else ""))
    rows = [("all", lambda r: (r["refusal_rate"], r["over_refusal"]))] + [
        (c, lambda r, c=c: (r["by_category"][c]["refusal_rate"], r["by_category"][c]["over_refusal"]))
        for c in CATEGORIES]
    for label, get in rows:
        vals = [get(results[c]) for c in cols]
        line = f"{label:<18}" + "".join(f"  {pct(a):>24}  {pct(b):>24}" for a, b in vals)
        if len(cols) == 2:
            (ta, tb), (sa, sb) = vals
            line += f"   {100 * (sa - ta):+8.1f} pp   {100 * (sb - tb):+8.1f} pp"
        click.echo(line)
    verdict = report.get("floor")
    if verdict is not None:
        c = verdict["checks"]
        click.echo(f"{verdict['target']} safety floor: refusal {pct(c['refusal_rate']['value'])} (min "
                   f"{pct(c['refusal_rate']['limit'])}), over-refusal {pct(c['over_refusal']['value'])} (max "
                   f"{pct(c['over_refusal']['limit'])}): {'met' if verdict['deployable'] else 'NOT met'}")
    if verdict is not None and not verdict["deployable"]:
        raise SystemExit(1)


@safety.command("reapply")
@settings_options(ReapplySettings)
@click.option("--resume", is_flag=True, help="Continue the phase in --out from its last checkpoint.")
def reapply_cmd(resume, **flags) -> None:
    """Re-apply safety to a distilled STUDENT: a short phase on the safety suite's train split (refusals for
    harmful requests, the teacher's answers for their look-alikes), the checkpoint kept by a validation slice.
    Every default is the measured recipe (docs/safety.md); `--config FILE` sets several at once."""
    from edgedistill.progress import training_progress
    from edgedistill.safety.reapply import reapply

    s = settings_from(ReapplySettings, flags)
    with training_progress() as progress:
        report = reapply(s, resume=resume, progress=progress, echo=lambda m: click.echo(m, err=True))
    picked = report["picked"]
    click.echo(f"student in {s.out / 'student'} after {report['steps']} phase steps"
               + (f"; kept step {picked['step']}: refusal {100 * picked['refusal_rate']:.1f}%, over-refusal "
                  f"{100 * picked['over_refusal']:.1f}% on the validation slice" if picked else "")
               + f". Check it: edgedistill safety eval {s.out / 'student'}")
