"""run: the whole trip for one device profile, stage by stage, reusing every stage whose inputs are unchanged.

    pull -> generate -> cache (the teacher's top-k log-probs) -> prune -> distill -> export (every variant the
    profile allows, of the student and of the teacher, plus the teacher's exact reference file) -> bench ->
    choose -> final bundle + report

Each stage writes into its own folder under the run folder with a stage.json holding a key: the hash of the
stage's inputs (upstream keys, data, options). A stage whose folder holds a complete result with the same key is
skipped; a changed key reruns it and every stage after it.
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
from edgedistill.engines import EngineSettings
from edgedistill.errors import EdgeDistillError, UnsupportedError
from edgedistill.models.registry import DEFAULT_TEACHER
from edgedistill.paths import check_writable_dir, write_text_atomic
from edgedistill.quantize import refusal
from edgedistill.settings import Settings, setting
from edgedistill.settings import write as write_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSettings(EngineSettings):
    teacher_engine: str = setting("llama.cpp", "What writes the teacher's answers: llama.cpp (its GGUF in process, "
                                               "the fastest here: benchmarks/results/distill/teacher_engines), torch "
                                               "or openai (the same teacher served elsewhere).",
                                  choices=("torch", "llama.cpp", "openai"))
    target: str = setting(None, "Device profile: a shipped name or a .yaml file.", required=True)
    out: Path | None = setting(None, "Run folder [default: runs/<target>]. Stages whose inputs are unchanged are "
                                     "reused from it.")
    teacher: str = setting(DEFAULT_TEACHER, "Registry name or Hugging Face folder.")
    train_prompts: int | None = setting(8, "Train prompts per domain the teacher answers (null in a file: all).",
                                        min=1)
    val_prompts: int | None = setting(4, "Validation prompts per domain.", min=1)
    max_new_tokens: int = setting(128, "Length of the teacher's answers.", min=1, max=4096)
    layers: int = setting(10, "Student depth.", min=1)
    hw_friendly: bool = setting(True, "Student widths in multiples of 256 (real K-quants) or the teacher's widths.",
                                flag="--hw-friendly/--teacher-width")
    loss: str = setting("forward_kl", "The divergence.", cli=False)
    loss_params: dict = setting({}, "Its parameters, e.g. {beta: 0.5} for jsd.", cli=False)
    kd_weight: float = setting(0.5, "Forward-KL weight; the rest is cross-entropy on the teacher's tokens (the best "
                                    "of the measured objectives).", min=0, max=1)
    steps: int = setting(40, "Distillation steps.", min=1)
    logit_cache: bool = setting(True, "Distill from the teacher's top-64 log-probs of its answers, scored once by "
                                      "the teacher engine (torch or llama.cpp), instead of running the teacher at "
                                      "every step (openai: always live).", flag="--logit-cache/--live-teacher")
    max_time_s: float | None = setting(None, "Distillation time budget, e.g. 20m.", min=0, min_open=True,
                                       kind="duration", flag="--max-time")
    batch_size: int = setting(4, "Sequences per micro-batch.", min=1, cli=False)
    grad_accum: int = setting(2, "Micro-batches per optimizer step.", min=1, cli=False)
    lr: float = setting(5e-4, "Peak learning rate.", min=0, min_open=True, max=1)
    reference: str = setting("gguf:f16", "The teacher's exact export: the quality reference in the bench.",
                             cli=False)
    bench_repeats: int = setting(3, "Timed generations per variant.", min=1)
    bench_new_tokens: int = setting(64, "Tokens per timed generation.", min=1, cli=False)
    eval_every: int = setting(6, "Graded eval on every n-th item in the bench (0: none).", min=0)
    fidelity_prompts: int | None = setting(None, "Test prompts per domain for in-domain fidelity in the bench "
                                                 "[default: all].", min=1)
    teacher_variants: bool = setting(True, "Also export and bench the teacher's own quantized files the profile "
                                           "allows, as candidates beside the student's.",
                                     flag="--teacher-variants/--students-only")
    data_dir: Path | None = setting(None, "calibration_data folder.", exists="dir", flag="--data")


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Stages:
    """Runs stages in `root`, skipping those whose stage.json key matches."""

    def __init__(self, root: Path, echo: Callable[[str], None]):
        self.root, self.echo, self.record = Path(root), echo, {}

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
        tmp = folder / ".stage.json.tmp"
        tmp.write_text(json.dumps(rec, indent=2, default=str) + "\n")
        tmp.replace(stamp)  # written last: a stage killed half way has no stamp and reruns
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


def run_pipeline(settings: RunSettings, *, echo=print, progress_factory=None) -> dict:
    """The whole trip for settings.target; returns the run summary (also written to OUT/run.json, the settings to
    OUT/settings.yaml)."""
    from edgedistill.bench import BenchSettings, bench
    from edgedistill.data import default_data_dir
    from edgedistill.models.fingerprint import model_fingerprint
    from edgedistill.data.stage import GenerateSettings, generate_data, select_prompts
    from edgedistill.engines import identity
    from edgedistill.distill.stage import DistillSettings, PruneSettings, distill, prune
    from edgedistill.export.pipeline import ExportSettings, export_model
    from edgedistill.models.locate import load_model, resolve
    from edgedistill.progress import training_progress
    from edgedistill.targets import as_dict, load_target

    target = load_target(settings.target)
    out = Path(settings.out) if settings.out else Path("runs") / target.name
    if out.exists() and not out.is_dir():
        raise EdgeDistillError(f"--out {out} is a file; give a folder for the run")
    data_dir = Path(settings.data_dir) if settings.data_dir else default_data_dir()
    st = Stages(out, echo)
    progress = progress_factory or (lambda: _NoProgress())
    check_writable_dir(out, "--out")  # before anything loads

    # 1. pull
    ref = resolve(settings.teacher, pull=True)
    if ref.kind != "hf_dir":
        raise EdgeDistillError(f"run needs a registry teacher or a Hugging Face model folder, not {settings.teacher!r}")
    teacher_dir = Path(ref.path)
    t_key = model_fingerprint(teacher_dir)
    _claim(out / "teacher.json", {"teacher": settings.teacher, "fingerprint": t_key})
    write_settings(settings, out / "settings.yaml")
    teacher_pair = None
    # what the teacher's family cannot be exported to is known now: skipped with its reason, not an abort later
    # (a student has the teacher's architecture)
    skipped = {k: why for k in target.formats if (why := refusal(k, teacher_dir)) is not None}
    for k, why in skipped.items():
        echo(f"   skipping {k}: {why}")
    formats = [k for k in target.formats if k not in skipped]
    if not formats:
        raise UnsupportedError(f"the {target.name} profile allows only {', '.join(target.formats)}, and this teacher "
                               f"can be exported to none of them ({next(iter(skipped.values()))})")
    reference = _follow_family(settings.reference, ["gguf:f16", "onnx:fp32"], teacher_dir)

    def teacher():
        nonlocal teacher_pair
        if teacher_pair is None:
            teacher_pair = load_model(str(teacher_dir))
        return teacher_pair

    # 2. generate (the prompts are read once, here: they key the stage and are what the teacher answers)
    gen_settings = {split: GenerateSettings(teacher=str(teacher_dir), split=split, limit=n, data_dir=data_dir,
                                            out=Path("teacher-" + split + ".jsonl"),
                                            max_new_tokens=settings.max_new_tokens)
                    for split, n in (("train", settings.train_prompts), ("validation", settings.val_prompts))}
    engine = {f.name: getattr(settings, f.name) for f in fields(EngineSettings)}
    gen_settings = {split: s.replace(**engine) for split, s in gen_settings.items()}
    prompts = {split: select_prompts(s) for split, s in gen_settings.items()}
    g_key = _key("generate", t_key, {s: [(p.id, p.messages) for p in v] for s, v in prompts.items()},
                 settings.max_new_tokens, identity(gen_settings["train"].engine_spec(str(teacher_dir)))[2])
    echo(f"   teacher data from the {_engine_words(settings)}")

    def gen(folder: Path) -> dict:
        info = {}
        for split, s in gen_settings.items():
            s = s.replace(out=folder / s.out)
            with progress() as p:
                r = generate_data(s, teacher=teacher(), prompts=prompts[split], progress=p)
            info[split] = {"prompts": len(prompts[split]), "written": r.written, "hit_max_tokens": r.hit_max_tokens}
        return info

    data_folder, _ = st.run("generate", g_key, gen)

    # 2b. the teacher's top-64 log-probs of its train answers, scored once by the same engine
    use_cache = settings.logit_cache and settings.teacher_engine != "openai"
    c_key = _key("cache", g_key, settings.teacher_engine, settings.teacher_gguf_type)

    def run_cache(folder: Path) -> dict:
        from edgedistill.distill.stage import CacheSettings, cache_logits

        s = CacheSettings(teacher=str(teacher_dir), data=[data_folder / "teacher-train.jsonl"], out=folder / "cache",
                          k=64, max_length=512, teacher_engine=settings.teacher_engine,
                          teacher_gguf_type=settings.teacher_gguf_type)
        with progress() as p:
            meta = cache_logits(s, progress=p)
        return {k: meta.get(k) for k in ("k", "tokens", "bytes_per_token", "teacher_mass_in_top_k")}

    cache_folder = st.run("cache", c_key, run_cache)[0] if use_cache else None

    # 3. prune: the hardware-friendly shape at the given depth, or the teacher's widths
    p_key = _key("prune", t_key, settings.layers, settings.hw_friendly, str(data_dir))

    def run_prune(folder: Path) -> dict:
        s = PruneSettings(teacher=str(teacher_dir), out=folder / "student", layers=settings.layers,
                          hw_friendly=settings.hw_friendly, data_dir=data_dir, max_tokens=8192)
        with progress() as p:
            return prune(s, teacher=teacher(), progress=p)["shape"]

    prune_folder, shape = st.run("prune", p_key, run_prune)

    # 4. distill
    d_key = _key("distill", p_key, g_key, c_key if use_cache else None, settings.loss, settings.loss_params,
                 settings.kd_weight, settings.steps, settings.max_time_s, settings.batch_size, settings.grad_accum,
                 settings.lr)

    def run_distill(folder: Path) -> dict:
        s = DistillSettings(teacher=str(teacher_dir), student=str(prune_folder / "student"),
                            data=[data_folder / "teacher-train.jsonl"],
                            validation=[data_folder / "teacher-validation.jsonl"], out=folder, loss=settings.loss,
                            beta=settings.loss_params.get("beta"), alpha=settings.loss_params.get("alpha"),
                            kd_weight=settings.kd_weight, max_steps=settings.steps, max_time=settings.max_time_s,
                            batch_size=settings.batch_size, grad_accum=settings.grad_accum, lr=settings.lr,
                            save_steps=100_000, warmup_steps=min(6, settings.steps // 4), keep_checkpoints=False,
                            logit_cache=cache_folder / "cache" if cache_folder else None)
        with training_progress() as p:
            report = distill(s, teacher=teacher(), progress=p)
        return {k: report[k] for k in ("steps", "parameters", "validation")}

    distill_folder, distilled = st.run("distill", d_key, run_distill)
    student = distill_folder / "student"
    echo(f"   student: {distilled['parameters'] / 1e6:.1f}M parameters after {distilled['steps']} steps, "
         f"held-out KL {distilled['validation']['mean_kl']:.3f}, top-1 {100 * distilled['validation']['top1_agreement']:.1f}%")

    # 5. export: the student and the teacher in every variant the profile allows (forced: the profile's floor
    #    decides, in the bench), and the teacher's exact reference file. The teacher's files are exported once
    #    per run folder and profile, whatever the student.
    teacher_formats = [k for k in formats if k != reference] if settings.teacher_variants else []
    tx_key = _key("export-teacher", t_key, teacher_formats, reference, str(data_dir))
    x_key = _key("export", d_key, formats, str(data_dir))

    def export_teacher(folder: Path) -> dict:
        teach = export_model(str(teacher_dir), folder, ExportSettings(variants=[reference, *teacher_formats],
                                                                      force=True, target=target.name,
                                                                      data_dir=data_dir))
        return {r.key: r.passed for r in teach}

    def export(folder: Path) -> dict:
        res = export_model(str(student), folder / "student", ExportSettings(variants=formats, force=True,
                                                                          target=target.name, data_dir=data_dir))
        return {r.key: r.passed for r in res}

    teacher_folder, _ = st.run("export-teacher", tx_key, export_teacher)
    export_folder, exported = st.run("export", x_key, export)

    # 6. bench
    b_settings = BenchSettings(repeats=settings.bench_repeats, new_tokens=settings.bench_new_tokens,
                               eval_every=settings.eval_every, data_dir=data_dir,
                               fidelity_prompts=settings.fidelity_prompts)
    b_key = _key("bench", x_key, tx_key, as_dict(target), asdict(b_settings))
    teacher_ref = teacher_folder / reference.replace(":", "-")
    candidates = sorted(d for d in (export_folder / "student").iterdir() if (d / "manifest.json").exists())
    candidates += sorted(teacher_folder / k.replace(":", "-") for k in teacher_formats
                         if (teacher_folder / k.replace(":", "-") / "manifest.json").exists())

    def run_bench(folder: Path) -> dict:
        with progress() as p:
            report = bench(candidates, target, folder, b_settings, teacher=teacher_ref, progress=p)
        return {"chosen": report["chosen"]}

    bench_folder, _ = st.run("bench", b_key, run_bench)
    report = json.loads((bench_folder / "bench.json").read_text())

    # 7. choose: the final bundle and the run report
    rows = {r["name"]: r for r in report["variants"]}
    chosen = rows.get(report["chosen"]) if report["chosen"] else None
    summary = {"target": target.name, "run_folder": str(out), "stages": st.record, "student": distilled,
               "chosen": None, "verdict": report["verdict"], "bench": str(bench_folder / "bench.md"),
               "skipped_variants": skipped}
    final = out / "final"
    shutil.rmtree(final, ignore_errors=True)
    if chosen:
        shutil.copytree(chosen["bundle"], final / Path(chosen["bundle"]).name)
        summary["chosen"] = {"name": chosen["name"], "bundle": str(final / Path(chosen["bundle"]).name),
                             "teacher_variant": chosen.get("teacher_variant", False)}
    if chosen and target.safety_floor is not None:
        summary["safety"] = _safety_gate(st, _key("safety", b_key, chosen["name"], asdict(target.safety_floor)),
                                         final / Path(chosen["bundle"]).name, chosen, target, str(settings.target),
                                         data_dir)
    (out / "run.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _follow_family(wanted: str, fallbacks: list[str], teacher_dir: Path) -> str:
    """`wanted` when the teacher's family can be exported to it, else the first of `fallbacks` it can."""
    for key in [wanted, *fallbacks]:
        if refusal(key, teacher_dir) is None:
            return key
    raise UnsupportedError(f"the teacher can be exported to none of {', '.join([wanted, *fallbacks])}: "
                           f"{refusal(wanted, teacher_dir)}")


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

    _, info = st.run("safety", key, run_safety)
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["deployment"] = {"target": target.name, "deployable": info["deployable"], "safety": info["checks"]}
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path)
    return info


class _NoProgress:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False

