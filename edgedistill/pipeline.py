"""run: the whole trip for one device profile, stage by stage, reusing every stage whose inputs are unchanged.

    pull -> generate -> cache (the teacher's top-k log-probs) -> prune -> distill -> export (every variant the
    profile allows, of the student and of the teacher, plus the teacher's exact reference file) -> bench ->
    choose -> final bundle + report

`plan_run` resolves the run's settings into each stage's own settings (StageSpec) before any model loads; each
stage's key is derived from them (every field that changes what the stage makes, defaults included) and from the
keys of what it reads (READS), never listed by hand. Each stage writes into its own folder under the run folder
with a stage.json holding its key. A stage whose folder holds a complete result with the same key is skipped; a
changed key reruns it and every stage that reads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from edgedistill.checked import read_json
from edgedistill.bench.settings import BenchSettings
from edgedistill.data.generate import DecodeSettings
from edgedistill.distill.settings import LossSettings, TrainSettings
from edgedistill.distill.stage import CacheSettings, PruneSettings, validation_line
from edgedistill.engines import EngineSettings
from edgedistill.errors import EdgeDistillError, UnsupportedError
from edgedistill.models.registry import DEFAULT_TEACHER
from edgedistill.paths import check_writable_dir, write_text_atomic
from edgedistill.quantize import unsupported_reason
from edgedistill.settings import Settings, default_of, like, setting
from edgedistill.settings import write as write_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSettings(EngineSettings, TrainSettings, LossSettings):
    """The stages' own knobs, inherited or taken by `like` from the stage that declares them (same help, range and
    default as the stage command's flag), plus what only the whole trip has."""

    target: str = setting(None, "Device profile: a shipped name or a .yaml file.", required=True)
    out: Path | None = setting(None, "Run folder [default: runs/<target>]. Stages whose inputs are unchanged are "
                                     "reused from it.", key=False)
    teacher: str = setting(DEFAULT_TEACHER, "Registry name or Hugging Face folder.")
    data_dir: Path | None = setting(None, "calibration_data folder.", exists="dir", flag="--data")
    train_prompts: int | None = setting(8, "Train prompts per domain the teacher answers (null in a file: all).",
                                        min=1)
    val_prompts: int | None = setting(4, "Validation prompts per domain.", min=1)
    max_new_tokens: int = like(DecodeSettings, "max_new_tokens")
    allow_empty: bool = like(CacheSettings, "allow_empty")
    layers: int | None = like(PruneSettings, "layers")
    hw_friendly: bool = like(PruneSettings, "hw_friendly")
    cached_teacher: bool = setting(True, "Distill from the teacher's top-64 log-probs of its answers, scored once by "
                                         "the teacher engine (torch or llama.cpp), instead of running the teacher at "
                                         "every step (openai: always live).", flag="--cached-teacher/--live-teacher",
                                   aliases=("logit_cache",))
    reference: str = setting("gguf:f16", "The teacher's exact export: the quality reference in the bench.",
                             cli=False)
    repeats: int = like(BenchSettings, "repeats")
    new_tokens: int = like(BenchSettings, "new_tokens")
    eval_every: int = like(BenchSettings, "eval_every")
    fidelity_prompts: int | None = like(BenchSettings, "fidelity_prompts")
    teacher_variants: bool = setting(True, "Also export and bench the teacher's own quantized files the profile "
                                           "allows, as candidates beside the student's.",
                                     flag="--teacher-variants/--students-only")


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Stages:
    """Runs stages in `root`, skipping those whose stage.json key matches."""

    def __init__(self, root: Path, echo: Callable[[str], None]):
        self.root, self.echo, self.record = Path(root), echo, {}

    def rel(self, path) -> str:
        """A stage's output as its stage.json records it: relative to the run folder, which may move."""
        return Path(path).relative_to(self.root).as_posix()

    def path(self, rel: str) -> Path:
        return self.root / rel

    def run(self, name: str, key: str, fn: Callable[[Path], dict | None]) -> tuple[Path, dict]:
        folder = self.root / name
        stamp = folder / "stage.json"
        if stamp.exists():
            old = json.loads(stamp.read_text())
            if old.get("key") == key:
                self.echo(f"== {name}: reused (inputs unchanged)")
                self.record[name] = {**old, "reused": True}
                return folder, old.get("info") or {}
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self.echo(f"== {name}")
        t = time.perf_counter()
        info = fn(folder) or {}
        rec = {"key": key, "seconds": round(time.perf_counter() - t, 1), "info": info}
        write_text_atomic(stamp, json.dumps(rec, indent=2, default=str) + "\n")  # last: a stage killed half way
        # has no stamp and reruns
        self.record[name] = {**rec, "reused": False}
        return folder, info


def _claim(path: Path, teacher: dict) -> None:
    """A run folder belongs to one teacher: its stages (data, students, bundles) are not mixed with, or replaced
    by, another model's, even one at the same path. Options may change; the teacher may not."""
    if not path.exists():
        write_text_atomic(path, json.dumps(teacher, indent=2) + "\n")
        return
    old = read_json(path, "run record")
    old = old if isinstance(old, dict) else {}
    if old.get("fingerprint") != teacher["fingerprint"]:
        raise EdgeDistillError(
            f"run folder {path.parent} was made with teacher {old.get('teacher')!r} (fingerprint "
            f"{old.get('fingerprint')}), this teacher {teacher['teacher']!r} has fingerprint "
            f"{teacher['fingerprint']}: choose another --out or delete the folder")


def _engine_words(s: RunSettings) -> str:
    if s.teacher_engine == "llama.cpp":
        return f"llama.cpp engine (the teacher's {s.teacher_gguf_type.upper()} GGUF, in process)"
    if s.teacher_engine == "openai":
        return f"openai engine ({s.teacher_model} at {s.teacher_url})"
    return "torch engine (the teacher in float32, in process)"


# What a stage.json records (2: the stage's outputs, relative to the run folder, which later stages read): part of
# every key, so a run folder written before reruns its stages instead of reading a record of another shape.
STAGE_RECORD = 2

# Which stages read which: a stage's key holds the keys of the stages it reads, so a change reruns it and every stage
# after it, and nothing else.
READS = {"generate": (), "cache": ("generate",), "prune": (), "distill": ("prune", "generate", "cache"),
         "export-teacher": (), "export": ("distill",), "bench": ("export", "export-teacher")}


@dataclass(frozen=True)
class StageSpec:
    """A stage's settings before it runs: its class and the fields `run` sets (built when the stage runs, once the
    files it reads exist). `resolved` is every field, defaults included: what the stage will run with."""

    cls: type
    given: dict

    def resolved(self) -> dict:
        """Every field that changes what the stage makes (setting(key=False) ones left out), defaults included."""
        return {f.name: self.given.get(f.name, default_of(f)) for f in fields(self.cls) if f.metadata.get("key", True)}

    def build(self) -> Settings:
        return self.cls(**self.given)


@dataclass
class Plan:
    """Everything `run` decides before any model loads: the profile, the teacher, the variants, the prompts, and per
    stage its settings (outputs in its own folder under the run folder) and reuse key."""

    target: object
    out: Path
    teacher_dir: Path
    teacher_key: str
    data_dir: Path
    formats: list[str]
    skipped: dict[str, str]
    reference: str
    teacher_formats: list[str]
    prompts: dict
    use_cache: bool
    stages: dict[str, StageSpec | dict]
    keys: dict[str, str]


def stage_key(name: str, stage: StageSpec | dict, upstream: list, plan_root: Path, teacher_dir: Path) -> str:
    """A stage's reuse key, derived (never listed by hand): the hash of every field of its resolved settings and
    of the keys of what it reads (`upstream`: the teacher's fingerprint, earlier stages). The output location is
    left out; paths inside the run folder are taken relative to it and the teacher's path is its fingerprint
    (upstream), so that moving the run folder or the cache reuses what it can."""

    def portable(v):
        if isinstance(v, StageSpec):
            return portable(v.resolved())
        if isinstance(v, Path):
            v = str(v)
        if isinstance(v, (list, tuple)):
            return [portable(x) for x in v]
        if isinstance(v, dict):
            return {k: portable(x) for k, x in v.items()}
        if isinstance(v, str) and v == str(teacher_dir):
            return "<teacher>"
        if isinstance(v, str) and v.startswith(str(plan_root) + "/"):
            return "<run>/" + v[len(str(plan_root)) + 1:]
        return v

    fields_ = stage.resolved() if isinstance(stage, StageSpec) else dict(stage)
    fields_.pop("out", None)
    return _key(name, upstream, portable(fields_), STAGE_RECORD)


def _fields_of(settings: Settings, *classes) -> dict:
    """The values `settings` holds for every field of `classes` (the knobs run inherits from a stage)."""
    return {f.name: getattr(settings, f.name) for cls in classes for f in fields(cls)}


def plan_run(settings: RunSettings) -> Plan:
    """Resolve `settings` into the stages' settings and keys, reading files (the profile, the teacher's fingerprint,
    the prompts) but loading no model."""
    from edgedistill.data import default_data_dir
    from edgedistill.data.stage import GenerateSettings, select_prompts
    from edgedistill.distill.stage import DistillSettings
    from edgedistill.engines import identity
    from edgedistill.export.pipeline import ExportSettings
    from edgedistill.models.fingerprint import model_fingerprint
    from edgedistill.models.locate import resolve
    from edgedistill.targets import as_dict, load_target

    target = load_target(settings.target)
    out = Path(settings.out) if settings.out else Path("runs") / target.name
    if out.exists() and not out.is_dir():
        raise EdgeDistillError(f"--out {out} is a file; give a folder for the run")
    data_dir = Path(settings.data_dir) if settings.data_dir else default_data_dir()
    check_writable_dir(out, "--out")  # before anything loads
    ref = resolve(settings.teacher, pull=True)
    if ref.kind != "hf_dir":
        raise EdgeDistillError(f"run needs a registry teacher or a Hugging Face model folder, not {settings.teacher!r}")
    teacher_dir = Path(ref.path)
    t_key = model_fingerprint(teacher_dir)
    # what the teacher's family cannot be exported to is known now: skipped with its reason, not an abort later
    # (a student has the teacher's architecture)
    skipped = {k: why for k in target.formats if (why := unsupported_reason(k, teacher_dir)) is not None}
    formats = [k for k in target.formats if k not in skipped]
    if not formats:
        raise UnsupportedError(f"the {target.name} profile allows only {', '.join(target.formats)}, and this teacher "
                               f"can be exported to none of them ({next(iter(skipped.values()))})")
    reference = _follow_family(settings.reference, ["gguf:f16", "onnx:fp32"], teacher_dir)
    teacher_formats = [k for k in formats if k != reference] if settings.teacher_variants else []
    use_cache = settings.cached_teacher and settings.teacher_engine != "openai"
    folder = {name: out / name for name in READS}

    # generate: the prompts are read once, here: they key the stage and are what the teacher answers
    engine, train = _fields_of(settings, EngineSettings), _fields_of(settings, TrainSettings, LossSettings)
    gen = {split: StageSpec(GenerateSettings, dict(teacher=str(teacher_dir), split=split, limit=n, data_dir=data_dir,
                                                   out=folder["generate"] / f"teacher-{split}.jsonl",
                                                   max_new_tokens=settings.max_new_tokens, **engine))
           for split, n in (("train", settings.train_prompts), ("validation", settings.val_prompts))}
    prompts = {split: select_prompts(s.build()) for split, s in gen.items()}
    train_data, val_data = gen["train"].given["out"], gen["validation"].given["out"]
    cache_dir = folder["cache"] / "cache"
    student_init = folder["prune"] / "student"
    stages: dict[str, Settings | dict] = {
        "generate": {"splits": gen, "prompts": {split: [(p.id, p.messages) for p in v] for split, v in prompts.items()},
                     "engine": identity(gen["train"].build().engine_spec(str(teacher_dir)))[2]},
        "cache": StageSpec(CacheSettings, dict(teacher=str(teacher_dir), generations=[train_data], out=cache_dir, k=64,
                                               max_length=settings.max_length, teacher_engine=settings.teacher_engine,
                                               teacher_gguf_type=settings.teacher_gguf_type,
                                               allow_empty=settings.allow_empty)),
        "prune": StageSpec(PruneSettings, dict(teacher=str(teacher_dir), out=student_init, layers=settings.layers,
                                               hw_friendly=settings.hw_friendly, data_dir=data_dir)),
        "distill": StageSpec(DistillSettings, dict(
            teacher=str(teacher_dir), student=str(student_init), generations=[train_data], validation=[val_data],
            out=folder["distill"], keep_checkpoints=False, logit_cache=cache_dir if use_cache else None,
            allow_empty=settings.allow_empty, **train)),
        "export-teacher": StageSpec(ExportSettings, dict(variants=[reference, *teacher_formats], force=True,
                                                         target=target.name, data_dir=data_dir)),
        "export": StageSpec(ExportSettings, dict(variants=formats, force=True, target=target.name, data_dir=data_dir)),
        "bench": {"settings": StageSpec(BenchSettings, dict(repeats=settings.repeats,
                                                            new_tokens=settings.new_tokens,
                                                            eval_every=settings.eval_every, data_dir=data_dir,
                                                            fidelity_prompts=settings.fidelity_prompts)),
                  "target": as_dict(target)},
    }
    keys: dict[str, str] = {}
    for name, reads in READS.items():
        if name == "cache" and not use_cache:
            continue
        upstream = [t_key, *(keys.get(r) for r in reads)]
        keys[name] = stage_key(name, stages[name], upstream, out, teacher_dir)
    return Plan(target, out, teacher_dir, t_key, data_dir, formats, skipped, reference, teacher_formats, prompts,
                use_cache, stages, keys)


def run_pipeline(settings: RunSettings, *, echo=print, progress_factory=None) -> dict:
    """The whole trip for settings.target; returns the run summary (also written to OUT/run.json, the settings to
    OUT/settings.yaml)."""
    from edgedistill.bench import bench
    from edgedistill.data.stage import generate_data
    from edgedistill.distill.stage import cache_logits, distill, prune
    from edgedistill.export.pipeline import export_model
    from edgedistill.models.locate import load_model
    from edgedistill.progress import training_progress

    plan = plan_run(settings)
    target, out, teacher_dir, keys, stages = plan.target, plan.out, plan.teacher_dir, plan.keys, plan.stages
    st = Stages(out, echo)
    progress = progress_factory or (lambda: _NoProgress())
    _claim(out / "teacher.json", {"teacher": settings.teacher, "fingerprint": plan.teacher_key})
    write_settings(settings, out / "settings.yaml")
    for k, why in plan.skipped.items():
        echo(f"   skipping {k}: {why}")
    teacher_pair = None

    def teacher():
        nonlocal teacher_pair
        if teacher_pair is None:
            teacher_pair = load_model(str(teacher_dir))
        return teacher_pair

    # 2. generate
    echo(f"   teacher data from the {_engine_words(settings)}")

    def gen(folder: Path) -> dict:
        info = {}
        for split, spec in stages["generate"]["splits"].items():
            with progress() as p:
                r = generate_data(spec.build(), teacher=teacher(), prompts=plan.prompts[split], progress=p)
            info[split] = {"prompts": len(plan.prompts[split]), "written": r.written,
                           "hit_max_tokens": r.hit_max_tokens, "empty": r.empty}
        return info

    st.run("generate", keys["generate"], gen)

    # 2b. the teacher's top-64 log-probs of its train answers, scored once by the same engine
    def run_cache(folder: Path) -> dict:
        with progress() as p:
            meta = cache_logits(stages["cache"].build(), progress=p)
        return {k: meta.get(k) for k in ("k", "tokens", "bytes_per_token", "teacher_mass_in_top_k")}

    if plan.use_cache:
        st.run("cache", keys["cache"], run_cache)

    # 3. prune: the hardware-friendly shape at the given depth, or the teacher's widths
    def run_prune(folder: Path) -> dict:
        with progress() as p:
            rec = prune(stages["prune"].build(), teacher=teacher(), progress=p)
        return {**rec["shape"], "student": st.rel(rec["student"])}

    st.run("prune", keys["prune"], run_prune)

    # 4. distill (its student folder is the one the plan gave it: the prune stage's, as planned)
    def run_distill(folder: Path) -> dict:
        with training_progress() as p:
            report = distill(stages["distill"].build(), teacher=teacher(), progress=p)
        return {**{k: report[k] for k in ("steps", "parameters", "validation")}, "student": st.rel(report["student"])}

    _, distilled = st.run("distill", keys["distill"], run_distill)
    student = st.path(distilled["student"])
    echo(f"   student: {distilled['parameters'] / 1e6:.1f}M parameters after {distilled['steps']} steps, "
         + validation_line(distilled.get("validation")))

    # 5. export: the student and the teacher in every variant the profile allows (forced: the profile's floor
    #    decides, in the bench), and the teacher's exact reference file. The teacher's files are exported once
    #    per run folder and profile, whatever the student.
    def exported(results) -> dict:
        """Each variant's outcome and, where written, its bundle (relative to the run folder)."""
        return {r.key: {"passed": r.passed, "bundle": st.rel(r.path) if r.path else None} for r in results}

    def export_teacher(folder: Path) -> dict:
        return exported(export_model(str(teacher_dir), folder, stages["export-teacher"].build()))

    def export(folder: Path) -> dict:
        return exported(export_model(str(student), folder / "student", stages["export"].build()))

    _, teacher_files = st.run("export-teacher", keys["export-teacher"], export_teacher)
    _, student_files = st.run("export", keys["export"], export)

    # 6. bench: the student's bundles and the teacher's own variants, against the teacher's reference file
    b_settings = stages["bench"]["settings"].build()
    teacher_ref = st.path(teacher_files[plan.reference]["bundle"])
    candidates = [st.path(v["bundle"]) for v in student_files.values() if v["bundle"]]
    candidates += [st.path(teacher_files[k]["bundle"]) for k in plan.teacher_formats if teacher_files[k]["bundle"]]

    def run_bench(folder: Path) -> dict:
        with progress() as p:
            report = bench(candidates, target, folder, b_settings, teacher=teacher_ref, progress=p)
        rows = {r["name"]: r for r in report["variants"]}
        chosen = rows[report["chosen"]] if report["chosen"] else None
        return {"verdict": report["verdict"], "report": st.rel(folder / "bench.md"),
                "chosen": chosen and {"name": chosen["name"], "bundle": st.rel(chosen["bundle"]),
                                      "teacher_variant": chosen.get("teacher_variant", False)}}

    _, benched = st.run("bench", keys["bench"], run_bench)

    # 7. choose: the final bundle and the run report
    chosen = benched["chosen"] and {**benched["chosen"], "bundle": st.path(benched["chosen"]["bundle"])}
    summary = {"target": target.name, "run_folder": str(out), "stages": st.record, "student": distilled,
               "chosen": None, "verdict": benched["verdict"], "bench": str(st.path(benched["report"])),
               "skipped_variants": plan.skipped}
    final = out / "final"
    shutil.rmtree(final, ignore_errors=True)
    if chosen:
        shutil.copytree(chosen["bundle"], final / Path(chosen["bundle"]).name)
        summary["chosen"] = {"name": chosen["name"], "bundle": str(final / Path(chosen["bundle"]).name),
                             "teacher_variant": chosen["teacher_variant"]}
    if chosen and target.safety_floor is not None:
        summary["safety"] = _safety_gate(st, _key("safety", keys["bench"], chosen["name"],
                                                  asdict(target.safety_floor)),
                                         final / Path(chosen["bundle"]).name, chosen, target, str(settings.target),
                                         plan.data_dir)
    write_text_atomic(out / "run.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _follow_family(wanted: str, fallbacks: list[str], teacher_dir: Path) -> str:
    """`wanted` when the teacher's family can be exported to it, else the first of `fallbacks` it can."""
    for key in [wanted, *fallbacks]:
        if unsupported_reason(key, teacher_dir) is None:
            return key
    raise UnsupportedError(f"the teacher can be exported to none of {', '.join([wanted, *fallbacks])}: "
                           f"{unsupported_reason(wanted, teacher_dir)}")


def _safety_gate(st: Stages, key: str, bundle: Path, chosen: dict, target, target_spec: str, data_dir: Path) -> dict:
    """Refusal behaviour of the chosen bundle on the safety test split against the profile's floor; the verdict
    goes into run.json and into the final bundle's manifest ("deployment")."""
    from edgedistill.safety.stage import SafetyEvalSettings, evaluate_suite

    def run_safety(folder: Path) -> dict:
        s = SafetyEvalSettings(model=str(chosen["bundle"]), target=target_spec, data_dir=data_dir,
                               out=folder / "safety.json")
        report = evaluate_suite(s)
        res, floor = report["models"][s.model], report["floor"]
        return {"refusal_rate": res["refusal_rate"], "over_refusal": res["over_refusal"],
                "by_category": res["by_category"], "deployable": floor["deployable"], "checks": floor["checks"]}

    from edgedistill.export.bundle import record_deployment

    _, info = st.run("safety", key, run_safety)
    record_deployment(bundle, target.name, info["deployable"], info["checks"])
    return info


class _NoProgress:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False

