"""edgedistill run --target NAME"""

from __future__ import annotations

from pathlib import Path

import click

from edgedistill.cli.options import settings_from, settings_options
from edgedistill.pipeline import RunSettings


@click.command("run")
@settings_options(RunSettings)
@click.option("--all-prompts", is_flag=True, help="Every train prompt (overrides --train-prompts).")
def run_cmd(all_prompts, **flags) -> None:
    """The whole trip for one device: pull, generate, prune, distill, export every variant the profile allows,
    bench them (the teacher's own quantized files too) under its limits, and keep the variant the profile's
    objective ranks first among those that meet every budget and floor.

    Each stage is reused when its inputs are unchanged, so a second run after a change redoes only what the
    change affects. Exit 1 when no variant meets the profile's budgets (the report says which is closest) or the
    chosen one misses the profile's safety floor (marked "not deployable" in run.json and its manifest).
    """
    from edgedistill.pipeline import run_pipeline
    from edgedistill.progress import byte_progress

    settings = settings_from(RunSettings, flags)
    if all_prompts:
        settings = settings.replace(train_prompts=None)
    summary = run_pipeline(settings, echo=lambda m: click.echo(m, err=True), progress_factory=byte_progress)
    target_name = summary["target"]
    click.echo((Path(summary["bench"])).read_text())
    for line in summary["verdict"]:
        click.echo(line)
    if summary.get("device_kit"):
        click.echo(f"device kit for {target_name}: {summary['device_kit']} (on the device: edgedistill kit run KIT "
                   "--out results.json; here: edgedistill kit merge KIT results.json --out REPORT)")
    if summary["chosen"]:
        click.echo(f"chosen for {target_name}: {summary['chosen']['name']} -> {summary['chosen']['bundle']}")
        s = summary.get("safety")
        if s:
            c = s["checks"]
            click.echo(f"safety: refuses {100 * c['refusal_rate']['value']:.0f}% of harmful test prompts (min "
                       f"{100 * c['refusal_rate']['limit']:.0f}%), over-refuses {100 * c['over_refusal']['value']:.0f}% "
                       f"of benign look-alikes (max {100 * c['over_refusal']['limit']:.0f}%): "
                       + ("deployable" if s["deployable"] else "NOT DEPLOYABLE — "
                          + "; ".join(f"{k} misses by {100 * abs(x['margin']):.0f} points"
                                      for k, x in c.items() if not x["pass"])))
            if not s["deployable"]:
                raise SystemExit(1)
        return
    click.echo(f"no variant meets every budget and floor of {target_name}", err=True)
    raise SystemExit(1)
