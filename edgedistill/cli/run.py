"""edgedistill run --target NAME"""

from __future__ import annotations

from pathlib import Path

import click

from edgedistill.cli.distill import _duration
from edgedistill.models.registry import DEFAULT_TEACHER


@click.command("run")
@click.option("--target", "target_name", required=True, help="Device profile: a shipped name or a .yaml file.")
@click.option("--teacher", default=DEFAULT_TEACHER, show_default=True, help="Registry name or Hugging Face folder.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run folder (default: runs/<target>). Stages whose inputs are unchanged are reused from it.")
@click.option("--train-prompts", type=click.IntRange(1), default=8, show_default=True,
              help="Train prompts per domain the teacher answers.")
@click.option("--all-prompts", is_flag=True, help="Every train prompt (overrides --train-prompts).")
@click.option("--val-prompts", type=click.IntRange(1), default=4, show_default=True, help="Per domain.")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=128, show_default=True,
              help="Length of the teacher's answers.")
@click.option("--layers", type=click.IntRange(1), default=10, show_default=True, help="Student depth.")
@click.option("--hw-friendly/--teacher-width", default=True, show_default=True,
              help="Student widths in multiples of 256 (real K-quants) or the teacher's widths.")
@click.option("--steps", type=click.IntRange(1), default=40, show_default=True, help="Distillation steps.")
@click.option("--max-time", callback=_duration, default=None, help="Distillation time budget, e.g. 20m.")
@click.option("--kd-weight", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Forward-KL weight; the rest is cross-entropy on the teacher's tokens.")
@click.option("--lr", type=float, default=5e-4, show_default=True)
@click.option("--bench-repeats", type=click.IntRange(1), default=3, show_default=True)
@click.option("--eval-every", type=click.IntRange(0), default=6, show_default=True,
              help="Graded eval on every n-th item in the bench (0: none).")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="calibration_data folder.")
def run_cmd(target_name, teacher, out, train_prompts, all_prompts, val_prompts, max_new_tokens, layers, hw_friendly,
            steps, max_time, kd_weight, lr, bench_repeats, eval_every, data_dir) -> None:
    """The whole trip for one device: pull, generate, prune, distill, export every variant the profile allows,
    bench them under its limits, and keep the best-quality variant that meets every budget.

    Each stage is reused when its inputs are unchanged, so a second run after a change redoes only what the
    change affects. Exit 1 when no variant meets the profile's budgets (the report says which is closest) or the
    chosen one misses the profile's safety floor (marked "not deployable" in run.json and its manifest).
    """
    from edgedistill.cli.progress import byte_progress
    from edgedistill.pipeline import RunSettings, run_pipeline
    from edgedistill.targets import load_target

    target = load_target(target_name)
    out = out or Path("runs") / target.name
    settings = RunSettings(teacher=teacher, train_prompts=None if all_prompts else train_prompts,
                           val_prompts=val_prompts, max_new_tokens=max_new_tokens, layers=layers,
                           hw_friendly=hw_friendly, steps=steps, max_time_s=max_time, kd_weight=kd_weight, lr=lr,
                           bench_repeats=bench_repeats, eval_every=eval_every, data_dir=data_dir)
    summary = run_pipeline(target_name, out, settings, echo=lambda m: click.echo(m, err=True),
                           progress_factory=byte_progress)
    click.echo((Path(summary["bench"])).read_text())
    if summary["chosen"]:
        click.echo(f"chosen for {target.name}: {summary['chosen']['name']} -> {summary['chosen']['bundle']}")
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
    click.echo(f"no variant meets every budget of {target.name}{detail}", err=True)
    raise SystemExit(1)


def _num(v) -> str:
    if v is None:
        return "not measured"
    return f"{v:.3g}"
