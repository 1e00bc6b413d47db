"""Device kits: the bench measured on the device itself, and folded back into the report.

Made by `bench --kit KIT` (and by `run`, one per profile): the folder holds
    kit.json        the profile's name, the plan every bundle is measured on (bench.runner.Plan: the timed prompt,
                    the fidelity sequences as token ids, the graded items), each candidate's row as the build
                    machine measured it and its folder here, the reference's graded answers or the teacher's text
                    answers, the build machine, and the size and sha256 of every other file in the kit
    profile.yaml    the device profile
    reference.npz   the reference's top-k log-probabilities at every scored position (token-level fidelity needs no
                    teacher on the device); absent when fidelity is on the teacher's text
    build.json      the build machine's report (bench.json)
    bundles/NAME/   the candidates (each manifest carries its own checksums)
    install/        edgedistill's own wheel, requirements.txt, constraints.txt and, with --kit-offline, wheels/:
                    every package to install with no network (runtime_venv.install_folder)
    RUN.txt         what to run on the device: install from install/, then `kit run`
Run on the device by `kit run KIT --out RESULTS` with the runtime extra only (no torch, no transformers, no
network): every candidate through bench.runner.measure under the profile (its threads, at most the cores this
process may use), the raw results written to RESULTS after each bundle (a run that was stopped resumes there), and
the device recorded (CPU model and features, cores, memory, OS, runtime versions).
Merged by `kit merge KIT RESULTS... --out REPORT`: the device's raw results become rows (bench.runner.fill), the
budgets and the choice use the device's figures where present and the build machine's elsewhere (each row says
which), and the report shows both machines side by side.

Integrity: the kit's id is the sha256 of kit.json, which holds every other file's sha256; `run` and `merge` check
every file first; results carry the kit id, and results of another kit are refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from edgedistill.errors import EdgeDistillError
from edgedistill.runinfo import available_cores
from edgedistill.runtime.bundle import sha256_file

log = logging.getLogger(__name__)
KIT_FORMAT = "edgedistill-device-kit-v1"
RESULTS_FORMAT = "edgedistill-device-results-v1"


class KitError(EdgeDistillError):
    """A kit or results file that is not what it should be: changed, incomplete, or from another kit."""


def _slug(name: str, taken: set) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "bundle"
    slug, n = base, 1
    while slug in taken:
        n += 1
        slug = f"{base}-{n}"
    taken.add(slug)
    return slug


def _copy_tree(src: Path, dst: Path) -> None:
    """A bundle folder into the kit: hard links where the file system allows (the files are checked by hash, and
    nothing in edgedistill writes a bundle's files in place), copies elsewhere."""

    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link)


def check_kit_out(kit: Path, out_dir: Path, bundles: list[Path], max_size: str) -> None:
    """Before any measurement: the kit's folder is new and writable, not the report's, and the bundles fit the
    size limit (the whole kit is checked again when written)."""
    from edgedistill.paths import check_writable_dir

    if kit.exists():
        raise KitError(f"--kit {kit} exists; remove it or give a new folder for the device kit")
    if kit.resolve() == Path(out_dir).resolve():
        raise KitError("--kit must be another folder than --out (the report)")
    check_writable_dir(kit.parent, "--kit")
    if problem := size_problem(bundles, max_size):
        raise KitError(problem)


def size_problem(bundles: list[Path], max_size: str) -> str | None:
    """Why `bundles` would not fit a kit of at most max_size, or None."""
    from edgedistill.paths import dir_size
    from edgedistill.targets import parse_bytes

    size = sum(dir_size(Path(b)) for b in bundles)
    if size > parse_bytes(max_size, "max_kit_size"):
        return (f"the kit's bundles take {size / 1e6:.0f} MB, over --max-kit-size {max_size}: bench fewer variants "
                "into the kit or raise --max-kit-size")
    return None


def write_kit(kit: Path, report: dict, plan, rows: list, target, top_k: Path | None, text_ref: dict | None,
              settings) -> Path:
    """The kit for `report`'s candidates (and comparisons): written to a temporary folder beside `kit`, then
    renamed (a kit is whole or absent)."""
    from edgedistill.paths import atomic_dir
    from edgedistill.targets import parse_bytes

    ref = next((r for r in rows if r.reference), None)
    measured = [r for r in rows if not r.reference and not r.adapter]  # the kit carries whole bundles only
    with atomic_dir(Path(kit), "--kit") as tmp:
        taken: set = set()
        folders = {r.name: f"bundles/{_slug(r.name, taken)}" for r in measured}
        local = _places(rows, folders, target)
        entries = []
        for r in measured:
            _copy_tree(Path(r.bundle), tmp / folders[r.name])
            entries.append({"name": r.name, "folder": folders[r.name], "row": _portable(r.as_dict(), local)})
        if top_k is not None:
            shutil.copy2(top_k, tmp / "reference.npz")
        shutil.copy2(target.source, tmp / "profile.yaml")
        build = _portable(json.loads(json.dumps(report, default=str)), local)  # as bench.json is, minus local folders
        (tmp / "build.json").write_text(json.dumps(build, indent=2) + "\n")
        import platform

        from edgedistill.runtime_venv import install_folder

        here = platform.machine().lower()
        same_arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(here, here) == (target.cpu_arch or here)
        if settings.kit_offline and not same_arch:
            raise KitError(f"--kit-offline: the profile's device is {target.cpu_arch} and this machine {here}: the "
                           "wheels would not install there; drop --kit-offline (the device then installs from the "
                           "registry and compiles llama.cpp for itself)")
        install = install_folder(tmp / "install", wheels=settings.kit_offline)
        own = next(install.glob("edgedistill-*.whl")).name
        (tmp / "RUN.txt").write_text(_run_txt(own, settings.kit_offline) + (
            "It may be stopped and run again: it resumes after the last bundle measured. Bring results.json back "
            "and, on the machine that made this kit:\n\n"
            "    edgedistill kit merge KIT results.json --out REPORT\n"))
        files = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        size = sum(f["bytes"] for f in files.values())
        if size > parse_bytes(settings.max_kit_size, "max_kit_size"):
            raise KitError(f"the kit would take {size / 1e6:.0f} MB, over --max-kit-size {settings.max_kit_size}: "
                           "lower --kit-top-k or bench fewer variants into it")
        kit_json = {"format": KIT_FORMAT, "profile": target.name, "made": report.get("date"),
                    "build_machine": report["machine"], "edgedistill_version": report.get("edgedistill_version"),
                    "plan": asdict(plan), "bandwidth_bytes_per_s": report["bandwidth_bytes_per_s"],
                    "top_k": settings.kit_top_k if top_k is not None else None, "bundles": entries,
                    "reference": ({"name": ref.name, "answers": ref.answers} if ref else None),
                    "text_reference": text_ref, "files": files}
        (tmp / "kit.json").write_text(json.dumps(kit_json, indent=1, default=str) + "\n")
    log.info("device kit for %s written to %s (%.0f MB)", target.name, kit, size / 1e6)
    return Path(kit)


def _places(rows: list, folders: dict[str, str], target) -> dict[str, str]:
    """Folders of the build machine a report names -> what the kit calls them: a carried bundle its folder in the
    kit, any other its own name, the profile profile.yaml, the cache and the home folder by their variables."""
    from edgedistill import paths

    places = {str(paths.home()): "$EDGEDISTILL_HOME", str(Path.home()): "~"}
    if target.source:
        places[str(target.source)] = places[str(Path(target.source).resolve())] = "profile.yaml"
    for r in rows:
        for b in {str(r.bundle), str(Path(r.bundle).resolve())}:
            places[b] = folders.get(r.name, Path(r.bundle).name)
    return places


def _portable(value, places: dict[str, str]):
    """`value` (JSON) with every folder of `places` in its strings replaced, longest first: a kit leaves the build
    machine and names none of its folders."""
    if isinstance(value, str):
        for p in sorted(places, key=len, reverse=True):
            if p in value:
                value = value.replace(p, places[p])
        return value
    if isinstance(value, dict):
        return {k: _portable(v, places) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v, places) for v in value]
    return value


def _run_txt(own: str, offline: bool) -> str:
    """The install commands of a kit's RUN.txt: offline from install/wheels (--kit-offline), else from the registry
    with llama.cpp compiled on the device."""
    head = ("On the device, in this folder (Python 3.11; no project checkout, no teacher; edgedistill itself comes "
            "from the wheel in install/, never from a registry, where a package of that name would be someone "
            "else's):\n\n    python3.11 -m venv venv\n")
    if offline:
        return head + (
            f"    venv/bin/pip install --no-index --find-links install/wheels --no-deps install/{own}\n"
            "    venv/bin/pip install --no-index --find-links install/wheels llama-cpp-python "
            "-r install/requirements.txt -c install/constraints.txt\n"
            "    venv/bin/edgedistill kit run . --out results.json\n\n"
            "No network is needed. install/wheels holds llama.cpp as compiled on the build machine (its fixed CPU "
            "level, never -march=native); where the device's CPU lacks that level the runtime says so in one line: "
            "compile it there (a C/C++ compiler, cmake and the package registry) with\n\n"
            "    venv/bin/pip install \"$(venv/bin/python -m edgedistill.formats.llamacpp_build wheel -c "
            "install/constraints.txt)\" -c install/constraints.txt\n\n")
    return head + (
        f"    venv/bin/pip install --no-deps install/{own}\n"
        "    venv/bin/pip install \"$(venv/bin/python -m edgedistill.formats.llamacpp_build wheel "
        "-c install/constraints.txt)\" -r install/requirements.txt -c install/constraints.txt\n"
        "    venv/bin/edgedistill kit run . --out results.json\n\n"
        "The runtime's packages come from the package registry and llama.cpp is compiled on the device (a C/C++ "
        "compiler and cmake) for its fixed CPU level, never -march=native. A kit made with --kit-offline carries "
        "every wheel instead (a device of the build machine's architecture, no network).\n\n")


def open_kit(kit: Path) -> tuple[dict, str]:
    """kit.json and the kit's id, after every file listed in it was checked against its size and sha256."""
    kit = Path(kit)
    path = kit / "kit.json"
    if not path.is_file():
        raise KitError(f"{kit}: not a device kit (no kit.json); make one with `edgedistill bench --kit` or "
                       "`edgedistill run`")
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except ValueError:
        raise KitError(f"{path} is not JSON: the kit is damaged; copy it again from the machine that made it") from None
    if data.get("format") != KIT_FORMAT:
        raise KitError(f"{path}: format {data.get('format')!r}, expected {KIT_FORMAT}: make the kit again with "
                       "this edgedistill")
    for name, f in data["files"].items():
        p = kit / name
        if not p.is_file() or p.stat().st_size != f["bytes"] or sha256_file(p) != f["sha256"]:
            raise KitError(f"{kit}: {name} is missing or differs from what kit.json lists (the kit was changed "
                           "after it was made); copy the kit again")
    return data, hashlib.sha256(raw).hexdigest()


def _plan(data: dict):
    from edgedistill.bench.runner import Plan

    return Plan(**data["plan"])


def runtime_versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("edgedistill", "llama-cpp-python", "onnxruntime", "onnxruntime-genai", "tokenizers", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _read_results(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise KitError(f"{path}: not a results file of a device kit ({e.__class__.__name__})") from None
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        raise KitError(f"{path}: not a results file of a device kit (made by `edgedistill kit run`)")
    return data


def run_kit(kit: Path, out: Path, progress=None) -> dict:
    """Measure every bundle of the kit on this machine under the kit's profile; write RESULTS (`out`) after each
    bundle, resuming from what `out` already holds for this kit."""
    from edgedistill.bench.runner import measure
    from edgedistill.paths import remove_scratch, scratch_dir
    from edgedistill.runinfo import machine, write_result
    from edgedistill.targets import load_target

    kit, out = Path(kit), Path(out)
    data, kit_id = open_kit(kit)
    target = load_target(kit / "profile.yaml")
    plan = _plan(data)
    plan.threads = min(target.threads, available_cores())
    if out.exists():
        results = _read_results(out)
        if results["kit_id"] != kit_id:
            raise KitError(f"{out} holds results of another kit ({results['kit_id'][:12]}, this one is "
                           f"{kit_id[:12]}); give another --out")
        if results["machine"] != machine() or results["threads"] != plan.threads:
            raise KitError(f"{out} was begun on another machine ({results['machine']['cpu']}, {results['threads']} "
                           "threads); give another --out: one results file holds one device's figures")
        log.info("resuming: %d of %d bundles measured before", len(results["bundles"]), len(data["bundles"]))
    else:
        results = {"format": RESULTS_FORMAT, "kit_id": kit_id, "profile": data["profile"], "machine": machine(),
                   "runtimes": runtime_versions(), "threads": plan.threads, "cores_available": available_cores(),
                   "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "bundles": {}, "complete": False}
    reference = {"reference_top_k": str(kit / "reference.npz")} if data.get("top_k") else {}
    work = scratch_dir(Path(tempfile.gettempdir()), ".edgedistill-kit-")
    todo = [b for b in data["bundles"] if b["name"] not in results["bundles"]]
    task = progress.add_task("kit", total=len(todo)) if progress else None
    try:
        for b in todo:
            if progress:
                progress.update(task, description=f"kit {b['name']}")
            info = {"bundle": str(kit / b["folder"]), "format": b["row"]["format"]}
            log.info("%s: %d threads, %.0f MB budget", b["name"], plan.threads, plan.memory_budget / 1e6)
            role = "comparison" if b["row"].get("comparison") else "candidate"
            results["bundles"][b["name"]] = measure(plan, info, role, work, reference)
            results["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            write_result(out, results)  # after each bundle: a stopped run resumes after it
            if progress:
                progress.advance(task)
    finally:
        remove_scratch(work)
    results["complete"] = True
    write_result(out, results)
    return results


def merge_kit(kit: Path, results_paths: list[Path], out_dir: Path, scorer=None) -> dict:
    """The build machine's report with the device's figures filled in (bench.runner.fill) and the choice made on
    them; bench.json, bench.md and the charts written to out_dir."""
    from edgedistill.bench.rows import Row
    from edgedistill.bench.runner import fill, finish
    from edgedistill.paths import check_writable_dir
    from edgedistill.runinfo import run_record
    from edgedistill.targets import load_target

    kit = Path(kit)
    data, kit_id = open_kit(kit)
    check_writable_dir(Path(out_dir), "--out")
    device: dict = {}
    machine = None
    for path in results_paths:
        res = _read_results(path)
        if res["kit_id"] != kit_id:
            raise KitError(f"{path} was measured from another kit ({res['kit_id'][:12]}; {kit} is {kit_id[:12]}): "
                           "merge it with the kit it came from")
        if machine is not None and res["machine"] != machine:
            raise KitError(f"{path} comes from another device than the results before it: merge one device's "
                           "results into one report")
        machine = res["machine"]
        for name, raw in res["bundles"].items():
            if name in device:
                raise KitError(f"{name} was measured in two results files; pass one of them")
            device[name] = (raw, res)
    if not device:
        raise KitError("the results hold no measured bundle: run `edgedistill kit run` on the device first")
    build = json.loads((kit / "build.json").read_text())
    target = load_target(kit / "profile.yaml")
    plan = _plan(data)
    first = next(iter(device.values()))[1]
    plan.threads = first["threads"]
    folders = {b["name"]: b["folder"] for b in data["bundles"]}
    ref_row = None
    if data.get("reference"):
        ref_row = Row.from_dict(next(v for v in build["variants"] if v["reference"]))
        ref_row.answers = data["reference"]["answers"]
    rows = []
    for v in build["variants"]:
        row = Row.from_dict(v)
        if row.name in device and not row.reference:
            row.build = {k: v.get(k) for k in ("status", "speed", "quality", "llama_bench")}
            row.bundle = str(kit / folders[row.name])
            row.speed = row.quality = row.llama_bench = row.runtime = None
            fill(row, device[row.name][0], plan, data["bandwidth_bytes_per_s"], ref_row, data.get("text_reference"),
                 scorer)
            row.measured_on = "device"
        elif not row.reference:
            row.measured_on = "build machine"
        rows.append(row)
    head = {**run_record(), "machine": machine, "threads": plan.threads, "machine_cores": first["cores_available"],
            "runtimes": first["runtimes"], "build_machine": build["machine"], "build_threads": build["threads"],
            "kit": {"id": kit_id, "path": str(kit), "made": data.get("made"), "top_k": data.get("top_k"),
                    "results": [str(p) for p in results_paths]},
            **{k: build[k] for k in ("bandwidth_bytes_per_s", "bandwidth_source", "settings", "quality_reference",
                                     "eval_items", "budgets_left_out")},
            "fidelity": {**build["fidelity"]} | ({"device_reference_form": f"the reference's top {data['top_k']} per "
                                                  "position and the rest of its mass (k + 1 bins; KL a lower bound "
                                                  "of the full one)"} if data.get("top_k") else {})}
    graded = bool(plan.items) and (ref_row is not None or data.get("text_reference") is not None)
    return finish(rows, target, Path(out_dir), head, graded)
