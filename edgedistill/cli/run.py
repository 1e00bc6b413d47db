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
    bench them under its limits, and keep the best-quality variant that meets every budget.

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
    if summary["chosen"]:
        click.echo(f"chosen for {target_name}: {summary['chosen']['name']} -> {summary['chosen']['bundle']}")
        v = summary["versus_teacher"]
        if v:
            click.echo(f"versus the teacher's {v['teacher_file']}: decode x{v['decode_speedup']:.2f}, "
                       f"peak RSS x{v['peak_rss_ratio']:.2f}")
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
    c = summary.get("closest")
    detail = ("; closest: " + c["name"] + " misses " + ", ".join(
        f"{k} ({_num(m['value'])} vs {_num(m['limit'])})" for k, m in c["misses"].items())) if c else ""
    click.echo(f"no variant meets every budget of {target_name}{detail}", err=True)
    raise SystemExit(1)


def _num(v) -> str:
    if v is None:
        return "not measured"
    return f"{v:.3g}"
