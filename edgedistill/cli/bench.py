"""edgedistill bench BUNDLE... --target NAME"""

from __future__ import annotations

from pathlib import Path

import click

from edgedistill.bench import BenchSettings
from edgedistill.cli.options import old_flag, settings_from, settings_options


def expand_bundles(paths) -> list[Path]:
    """A bundle folder, or a folder of bundles (what `edgedistill export --out` writes)."""
    from edgedistill.errors import EdgeDistillError

    out = []
    for p in map(Path, paths):
        if (p / "manifest.json").is_file():
            out.append(p)
        elif p.is_dir() and (found := sorted(d for d in p.iterdir() if (d / "manifest.json").is_file())):
            out.extend(found)
        else:
            raise EdgeDistillError(f"{p}: no bundle here (no manifest.json in it or in its sub-folders); "
                                   "make one with `edgedistill export`")
    return out


@click.command("bench")
@click.argument("bundles", nargs=-1, required=True, type=click.Path())
@click.option("--target", "target_name", required=True, help="Device profile: a shipped name or a .yaml file.")
@click.option("--reference", type=click.Path(), default=None,
              help="Reference bundle for quality (an exact export of the teacher: gguf:f16 or onnx:fp32).")
@old_flag("--teacher", "--reference", type=click.Path())
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-report"), show_default=True,
              help="Folder for bench.json, bench.md, the charts and settings.yaml.")
@click.option("--kit", type=click.Path(path_type=Path), default=None,
              help="Also write a device kit to this new folder: the candidates, the measurement plan and the "
                   "reference's top-k, for `edgedistill kit run` on the device (see `edgedistill kit --help`).")
@settings_options(BenchSettings)
def bench_cmd(bundles, target_name, reference, teacher_was, out, kit, **flags) -> None:
    """Measure bundles in their real runtimes under a device profile's limits, one process each.

    Reports load time, peak RSS (a variant over the memory budget is stopped), time to first token, prefill and
    decode tokens/s, per-token p50/p95, roofline share, and quality against --reference; checks every budget and
    names the best variant that meets them all. Needs only `pip install 'edgedistill[runtime]'`.
    """
    from edgedistill.bench import bench
    from edgedistill.progress import byte_progress
    from edgedistill.targets import load_target

    settings = settings_from(BenchSettings, flags)  # before the profile: a bad setting fails first
    target = load_target(target_name)
    paths = expand_bundles(bundles)
    teacher = reference or teacher_was
    if teacher:
        teacher = expand_bundles([teacher])[0]
        paths = [p for p in paths if p.resolve() != Path(teacher).resolve()]
    with byte_progress() as progress:
        report = bench(paths, target, out, settings, teacher=teacher, progress=progress, kit=kit)
    _show(report, out)
    if kit:
        click.echo(f"device kit: {kit} (on the device: edgedistill kit run {kit.name} --out results.json)")
    if report["chosen"] is None:
        raise SystemExit(1)


def _show(report: dict, out: Path) -> None:
    click.echo((out / "bench.md").read_text())
    click.echo(f"report: {out}/bench.json, bench.md" + (", quality_vs_speed.png, quality_vs_memory.png"
                                                        if (out / "quality_vs_speed.png").exists() else ""))


@click.group("kit")
def kit_group() -> None:
    """The bench on the device itself: run a kit there, merge its results here.

    A kit is made by `edgedistill bench ... --kit KIT` or by `edgedistill run` (one per profile, beside the
    report). On the device, with `pip install 'edgedistill[runtime]'` only: `edgedistill kit run KIT --out
    results.json`. Back here: `edgedistill kit merge KIT results.json --out REPORT`.
    """


@kit_group.command("run")
@click.argument("kit", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("results.json"), show_default=True,
              help="Results file, written after each bundle; run again to resume.")
def kit_run_cmd(kit, out) -> None:
    """Measure a kit's bundles on this machine under the kit's profile (runtime extra only)."""
    from edgedistill.bench.kit import run_kit
    from edgedistill.progress import byte_progress

    with byte_progress() as progress:
        results = run_kit(kit, out, progress=progress)
    m = results["machine"]
    click.echo(f"{len(results['bundles'])} bundles measured on {m['cpu']} ({results['threads']} threads); "
               f"results: {out} (merge it where the kit was made: edgedistill kit merge KIT {out.name} --out REPORT)")


@kit_group.command("merge")
@click.argument("kit", type=click.Path(path_type=Path))
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("device-report"), show_default=True,
              help="Folder for the merged bench.json, bench.md and charts.")
def kit_merge_cmd(kit, results, out) -> None:
    """Fold a device's results into the kit's report: the choice on the device's figures, both machines side by
    side."""
    from edgedistill.bench.kit import merge_kit

    report = merge_kit(kit, list(results), out)
    _show(report, out)
    if report["chosen"] is None:
        raise SystemExit(1)
