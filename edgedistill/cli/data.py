"""edgedistill generate | eval | data split | data stats"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgedistill.cli.options import old_flag, settings_from, settings_options
from edgedistill.data.stage import GenerateSettings
from edgedistill.models.registry import DEFAULT_TEACHER

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("generate")
@settings_options(GenerateSettings)
def generate_cmd(**flags):
    """The teacher answers every prompt: training data for sequence-level distillation.

    Example, the train prompts of all domains in one go: edgedistill generate --split train --out gen/train.jsonl
    """
    from edgedistill.data.stage import generate_data
    from edgedistill.progress import byte_progress

    s = settings_from(GenerateSettings, flags)
    with byte_progress() as progress:
        r = generate_data(s, progress=progress, echo=lambda m: click.echo(m, err=True))
    click.echo(r.line())


@click.command("eval")
@click.argument("model", default=DEFAULT_TEACHER)
@click.option("--compare", default=None, help="Also score this model and show it beside MODEL.")
@old_flag("--teacher", "--compare")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder with <domain>/eval.jsonl (default: the project's calibration_data/).")
@click.option("--domain", "domains", multiple=True, help="Only these domains (repeatable).")
@click.option("--limit", type=click.IntRange(1), default=None, help="N items per domain, spread over the file (a quick look).")
@click.option("--answer-batch", type=click.IntRange(1, 1024), default=None,
              help="Prompts the model answers together.  [default: 8]")
@old_flag("--batch-size", "--answer-batch", type=click.IntRange(1, 1024))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write every item's response and grade to this JSON file.")
@old_flag("--json-out", "--out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--by-likelihood", is_flag=True,
              help="Score only the items that list choices, by which choice the model finds most likely (no "
                   "generation); separates small models whose generated answers are all wrong.")
def eval_cmd(model, compare, teacher_was, data_dir, domains, limit, answer_batch, batch_size_was, out, json_out_was,
             by_likelihood):
    """Score MODEL on the graded eval sets: accuracy per domain and per task type."""
    from rich.console import Console
    from rich.table import Table

    from edgedistill.progress import byte_progress
    from edgedistill.data import default_data_dir
    from edgedistill.data.evaluate import choice_accuracy, evaluate, find_eval_sets, load_eval_items

    teacher, json_out = compare or teacher_was, out or json_out_was
    batch_size = answer_batch or batch_size_was or 8
    if json_out:
        from edgedistill.paths import ensure_writable_file

        ensure_writable_file(json_out, "--out")
    items = load_eval_items(find_eval_sets(data_dir or default_data_dir(), domains), limit)
    title = "graded eval"
    if by_likelihood:
        items = [it for it in items if it.choices]
        if not items:
            raise click.UsageError("none of the selected eval items lists its choices; drop --by-likelihood")
        chance = sum(1 / len(it.choices) for it in items) / len(items)
        title = f"choices by likelihood, chance {100 * chance:.1f}%;"
    results = []
    with byte_progress() as progress:
        for spec in [model] + ([teacher] if teacher else []):
            results.append(choice_accuracy(spec, items, progress=progress) if by_likelihood
                           else evaluate(spec, items, batch_size=batch_size, progress=progress))
    table = Table(title=f"{title} ({len(items)} items)" + (" [--limit: not a full score]" if limit else ""))
    table.add_column("domain")
    table.add_column("task")
    table.add_column("n", justify="right")
    for r in results:
        table.add_column(r.model if len(r.model) < 30 else "…" + r.model[-28:], justify="right")
    rows = [x.as_dict() for x in results]
    for i, row in enumerate(rows[0]["by_domain_task"]):
        table.add_row(row["domain"], row["task"], str(row["n"]), *[f"{100 * x['by_domain_task'][i]['accuracy']:.1f}%" for x in rows])
    for d in sorted(rows[0]["by_domain"]):
        table.add_row(f"[bold]{d}", "[bold]all", "", *[f"[bold]{100 * x['by_domain'][d]:.1f}%" for x in rows])
    table.add_row("[bold]all", "[bold]all", str(len(items)), *[f"[bold]{100 * x['overall']:.1f}%" for x in rows])
    Console().print(table)
    if json_out:
        from edgedistill.runinfo import run_record

        report = {**run_record(), "limit": limit, "items": len(items), "models": rows}
        from edgedistill.paths import write_text_atomic

        write_text_atomic(json_out, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        click.echo(f"wrote {json_out}")


@click.group("data")
def data() -> None:
    """Split prompt files and describe the calibration data."""


@data.command("split")
@click.argument("prompts_path", type=_FILE)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for train/validation/test.jsonl.  [required]")
@old_flag("--out-dir", "--out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--fractions", default="0.8,0.1,0.1", show_default=True, help="train,validation,test shares.")
@click.option("--threshold", type=click.FloatRange(0.05, 1.0), default=0.5, show_default=True,
              help="Word-trigram Jaccard similarity at which two prompts count as near-duplicates.")
def split_cmd(prompts_path, out, out_dir_was, fractions, threshold):
    """Write train/validation/test.jsonl; near-duplicate prompts always land in the same split."""
    from edgedistill.data.split import split_prompts
    from edgedistill.errors import EdgeDistillError

    out_dir = out or out_dir_was
    if out_dir is None:
        raise click.UsageError("Missing option '--out'.")
    try:
        fr = tuple(float(x) for x in fractions.split(","))
    except ValueError:
        raise EdgeDistillError(f"--fractions {fractions!r} must be three numbers like 0.8,0.1,0.1") from None
    r = split_prompts(prompts_path, out_dir, fr, threshold)
    click.echo(" ".join(f"{k}={v}" for k, v in r.counts.items()) + f" ({r.duplicate_groups} near-duplicate groups kept together)")


@data.command("stats")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None)
@click.option("--tokenizer", default=DEFAULT_TEACHER, show_default=True, help="Model whose tokenizer counts tokens.")
@click.option("--json", "as_json", is_flag=True)
def stats_cmd(data_dir, tokenizer, as_json):
    """Counts per domain: prompts per split, eval items per task, text tokens; and any cross-split leaks."""
    from edgedistill.data import default_data_dir
    from edgedistill.data.stats import data_stats

    s = data_stats(data_dir or default_data_dir(), tokenizer)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    for d, v in s["domains"].items():
        click.echo(f"{d}: prompts {v['prompts']} ({v['prompt_tokens']} tokens), eval {v['eval']}, "
                   f"texts {v['text_files']} files / {v['text_tokens']} tokens")
    click.echo(f"near-duplicate pairs across splits: {len(s['leaks'])}")
