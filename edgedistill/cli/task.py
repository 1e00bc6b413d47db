"""edgedistill task validate | eval | distill: a task file checked, a model scored on it, a student made for it."""

from __future__ import annotations

from pathlib import Path

import click

from edgedistill.cli.options import settings_from, settings_options
from edgedistill.task.stage import TaskEvalSettings, TaskSettings


@click.group("task")
def task_group():
    """A task as a file (task.yaml: instructions, output kind, seeds, inputs, gold test items): check it, score a
    model on it, distill a student for it."""


@task_group.command("validate")
@click.argument("task_file", type=click.Path(path_type=Path))
def validate_cmd(task_file: Path):
    """Check TASK_FILE and its data; every problem is listed with its key."""
    from edgedistill.task.spec import load_task

    t = load_task(task_file)
    gold = sum("output" in r for r in t.test)
    click.echo(f"{task_file}: task {t.name!r}, output {t.output['kind']} (metric: {t.kind.metric}); "
               f"{len(t.seeds)} seeds, {len(t.inputs)} inputs, {len(t.test)} test items ({gold} with gold)")


@task_group.command("eval")
@click.argument("model")
@settings_options(TaskEvalSettings)
@click.option("--out", "answers_out", type=click.Path(path_type=Path), required=True,
              help="JSONL file for the model's answers (resumable: a rerun scores what is there).")
def eval_cmd(model, answers_out, **flags):
    """Score MODEL (registry name, Hugging Face folder or .gguf, run by llama.cpp) on the task's test items."""
    from edgedistill.progress import byte_progress
    from edgedistill.task.stage import task_eval

    s = settings_from(TaskEvalSettings, flags)
    with byte_progress() as progress:
        r = task_eval(s, model, answers_out, progress=progress)
    click.echo(_row(model, r))


@task_group.command("distill")
@settings_options(TaskSettings)
def distill_cmd(**flags):
    """The teacher labels the task's inputs, the student learns its valid answers, and the teacher, the student
    before (zero-shot and few-shot) and after are scored on the held-out items (OUT/task.json)."""
    from edgedistill.progress import training_progress
    from edgedistill.task.stage import task_distill

    s = settings_from(TaskSettings, flags)
    with training_progress() as progress:
        r = task_distill(s, echo=lambda m: click.echo(m, err=True), progress=progress)
    for name, row in r["rows"].items():
        click.echo(_row(name, row))
    click.echo(f"report: {s.out / 'task.json'}")


def _ci(m: dict) -> str:
    lo, hi = m["ci"]
    return f"{100 * m['value']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _row(name: str, r: dict) -> str:
    parts = [f"valid {_ci(r['valid'])}"]
    for ref in ("gold", "teacher"):
        for k, m in (r.get(ref) or {}).items():
            parts.append(f"{k} vs {ref} " + (_ci(m) if isinstance(m, dict) else f"{100 * m:.1f}%"))
    return f"{name}: " + ", ".join(parts) + f" ({r['items']} items, {r['tokens_per_answer']} tokens an answer)"
