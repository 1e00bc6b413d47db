"""edgedistill targets list|show|validate"""

from __future__ import annotations

import json

import click


@click.group("targets")
def targets() -> None:
    """Device profiles: the hardware, its budgets and the floors a variant must meet (targets/*.yaml)."""


@targets.command("list")
def list_cmd() -> None:
    """The shipped profiles."""
    from edgedistill.targets import load_target, shipped

    for name in shipped():
        t = load_target(name)
        click.echo(f"{name:<16} {t.cpu_arch:<8} {t.threads:>2} threads  {t.memory_budget_bytes / 1e9:>4.1f} GB  "
                   f"{t.description}")


@targets.command("show")
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable, units resolved (bytes, seconds).")
def show_cmd(target: str, as_json: bool) -> None:
    """One profile (a shipped name or a .yaml file), with units resolved."""
    from edgedistill.targets import as_dict, load_target

    t = load_target(target)
    if as_json:
        click.echo(json.dumps(as_dict(t), indent=2))
        return
    click.echo(f"{t.name}: {t.description}  ({t.source})")
    click.echo(f"  cpu {t.cpu_arch}, {t.threads} threads, network {'yes' if t.network else 'no'}")
    click.echo(f"  memory budget {t.memory_budget_bytes / 1e9:.2f} GB, bandwidth {t.memory_bandwidth_bytes_per_s / 1e9:.1f} GB/s, "
               f"context {t.context_length}")
    click.echo(f"  formats, preferred first: {', '.join(t.formats)}")
    click.echo(f"  latency: first token <= {1000 * t.latency.time_to_first_token_s:.0f} ms, decode >= "
               f"{t.latency.min_decode_tokens_per_s:g} tokens/s")
    q = t.quality_floor
    click.echo(f"  quality floor, in-domain: mean KL <= {q.max_mean_kl:g}, top-1 >= {100 * q.min_top1_agreement:.0f}%, "
               f"answers agree with the teacher's >= {100 * q.min_answer_agreement:.0f}%")
    if q.general_max_mean_kl is not None or q.general_min_top1_agreement is not None:
        click.echo("  quality floor, general text: " + ", ".join(
            x for x in (f"mean KL <= {q.general_max_mean_kl:g}" if q.general_max_mean_kl is not None else "",
                        f"top-1 >= {100 * q.general_min_top1_agreement:.0f}%"
                        if q.general_min_top1_agreement is not None else "") if x))
    click.echo(f"  objective: {t.objective} (among the variants that meet every budget and floor)")
    if t.safety_floor:
        click.echo(f"  safety floor: refusal >= {100 * t.safety_floor.min_refusal_rate:.0f}%, over-refusal <= "
                   f"{100 * t.safety_floor.max_over_refusal:.0f}%")


@targets.command("validate")
@click.argument("files", nargs=-1, required=True)
def validate_cmd(files) -> None:
    """Check profile files; every problem of a file is listed with its key. Exit 2 if any file is invalid."""
    from edgedistill.errors import EdgeDistillError
    from edgedistill.targets import TargetError, load_target

    failed = 0
    for f in files:
        try:
            t = load_target(f)
            click.echo(f"ok      {f} ({t.name})")
        except TargetError as e:
            failed += 1
            click.echo(f"invalid {e}", err=True)
    if failed:
        raise EdgeDistillError(f"{failed} of {len(files)} profile(s) invalid")
