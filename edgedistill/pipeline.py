"""run: the whole trip for one device profile, stage by stage, reusing every stage whose inputs are unchanged.

    pull -> generate -> prune -> distill -> export (every variant the profile allows, plus the teacher's
    reference and comparison files) -> bench -> choose -> final bundle + report

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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgedistill.errors import EdgeDistillError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSettings:
    teacher: str = "smollm2-135m-instruct"
    train_prompts: int | None = 8  # per domain (None: all)
    val_prompts: int | None = 4  # per domain
    max_new_tokens: int = 128  # teacher answers
    layers: int = 10
    hw_friendly: bool = True  # widths in multiples of 256 (real K-quants)
    loss: str = "forward_kl"
    loss_params: dict = field(default_factory=dict)
    kd_weight: float = 0.5  # forward KL + cross-entropy: the best of the measured objectives
    steps: int = 40
    max_time_s: float | None = None  # distillation time budget
    batch_size: int = 4
    grad_accum: int = 2
    lr: float = 5e-4
    comparison: str = "gguf:q4_k_m"  # the teacher's own file the chosen student is measured against
    reference: str = "gguf:f16"  # the teacher's exact export: the quality reference in the bench
    bench_repeats: int = 3
    bench_new_tokens: int = 64
    eval_every: int = 6
    data_dir: Path | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.layers < 1:
            problems.append(f"layers={self.layers} must be at least 1")
        if self.steps < 1:
            problems.append(f"steps={self.steps} must be at least 1")
        if not 0 <= self.kd_weight <= 1:
            problems.append(f"kd_weight={self.kd_weight} must be in [0, 1]")
        if problems:
            raise EdgeDistillError("; ".join(problems))


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


def run_pipeline(target_name: str, out: Path, settings: RunSettings = RunSettings(), *, echo=print,
                 progress_factory=None) -> dict:
    """The whole trip for `target_name`; returns the run summary (also written to out/run.json)."""
    from edgedistill.bench import BenchSettings, bench
    from edgedistill.cli.progress import training_progress
    from edgedistill.data import default_data_dir, load_texts
    from edgedistill.data.generate import GenerationSettings, generate, model_fingerprint
    from edgedistill.data.load import load_prompts
    from edgedistill.data.stats import domains
    from edgedistill.export.pipeline import ExportSettings, export_model
    from edgedistill.models.locate import load_model, resolve
    from edgedistill.targets import as_dict, load_target

    target = load_target(target_name)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgeDistillError(f"--out {out} is a file; give a folder for the run")
    data_dir = Path(settings.data_dir) if settings.data_dir else default_data_dir()
    st = Stages(out, echo)
    progress = progress_factory or (lambda: _NoProgress())

    # 1. pull
    ref = resolve(settings.teacher, pull=True)
    if ref.kind != "hf_dir":
        raise EdgeDistillError(f"run needs a registry teacher or a Hugging Face model folder, not {settings.teacher!r}")
    teacher_dir = Path(ref.path)
    t_key = model_fingerprint(teacher_dir)
    teacher_pair = None

    def teacher():
        nonlocal teacher_pair
        if teacher_pair is None:
            teacher_pair = load_model(str(teacher_dir))
        return teacher_pair

    # 2. generate
    prompts = {}
    for split, n in (("train", settings.train_prompts), ("validation", settings.val_prompts)):
        got = []
        for d in domains(data_dir):
            got += load_prompts(d / "prompts" / f"{split}.jsonl")[0][:n]
        prompts[split] = got
    g_key = _key("generate", t_key, {s: [(p.id, p.messages) for p in v] for s, v in prompts.items()},
                 settings.max_new_tokens)

    def gen(folder: Path) -> dict:
        info = {}
        for split, ps in prompts.items():
            with progress() as p:
                r = generate(str(teacher_dir), ps, folder / f"teacher-{split}.jsonl",
                             GenerationSettings(max_new_tokens=settings.max_new_tokens), loaded=teacher(), progress=p)
            info[split] = {"prompts": len(ps), "written": r.written, "hit_max_tokens": r.hit_max_tokens}
        return info

    data_folder, _ = st.run("generate", g_key, gen)

    # 3. prune
    p_key = _key("prune", t_key, settings.layers, settings.hw_friendly, str(data_dir))

    def prune(folder: Path) -> dict:
        from edgedistill.distill.prune import interleave_texts
        from edgedistill.distill.prune import StudentShape, derive_student, hardware_friendly

        shape = hardware_friendly(teacher()[0], settings.layers) if settings.hw_friendly else StudentShape(
            layers=settings.layers)
        texts = interleave_texts([t for d in sorted(data_dir.glob("*/texts")) for _, t in load_texts(d)])
        with progress() as p:
            derive_student(str(teacher_dir), shape, texts, folder / "student", max_tokens=8192, loaded=teacher(),
                           progress=p)
        return json.loads((folder / "student" / "pruning.json").read_text())["shape"]

    prune_folder, shape = st.run("prune", p_key, prune)

    # 4. distill
    d_key = _key("distill", p_key, g_key, settings.loss, settings.loss_params, settings.kd_weight, settings.steps,
                 settings.max_time_s, settings.batch_size, settings.grad_accum, settings.lr)

    def distill(folder: Path) -> dict:
        from edgedistill.distill.dataset import encode, load_generations
        from edgedistill.distill.losses import LossConfig
        from edgedistill.distill.train import TrainConfig, agreement_with_teacher, train

        t_model, tok = teacher()
        train_set = encode(tok, load_generations([data_folder / "teacher-train.jsonl"]), 512)
        val_set = encode(tok, load_generations([data_folder / "teacher-validation.jsonl"]), 512)
        loss = LossConfig(settings.loss, dict(settings.loss_params), kd_weight=settings.kd_weight)
        cfg = TrainConfig(max_steps=settings.steps, max_time_s=settings.max_time_s, batch_size=settings.batch_size,
                          grad_accum=settings.grad_accum, learning_rate=settings.lr, max_length=512,
                          save_steps=100_000, warmup_steps=min(6, settings.steps // 4))
        with training_progress() as p:
            model, trainer = train((t_model, tok), load_model(str(prune_folder / "student")), train_set.examples,
                                   folder / "train", loss, cfg, progress=p)
        val = agreement_with_teacher(t_model, model, val_set.examples, tok.pad_token_id)
        model.save_pretrained(folder / "student", safe_serialization=True)
        tok.save_pretrained(folder / "student")
        shutil.rmtree(folder / "train" / "checkpoints", ignore_errors=True)
        return {"steps": trainer.state.global_step, "parameters": model.num_parameters(), "validation": val}

    distill_folder, distilled = st.run("distill", d_key, distill)
    student = distill_folder / "student"
    echo(f"   student: {distilled['parameters'] / 1e6:.1f}M parameters after {distilled['steps']} steps, "
         f"held-out KL {distilled['validation']['mean_kl']:.3f}, top-1 {100 * distilled['validation']['top1_agreement']:.1f}%")

    # 5. export: the student in every variant the profile allows (forced: the profile's floor decides, in the
    #    bench), and the teacher's reference and comparison files.
    x_key = _key("export", d_key, target.formats, settings.reference, settings.comparison)

    def export(folder: Path) -> dict:
        res = export_model(str(student), folder / "student", ExportSettings(variants=list(target.formats), force=True,
                                                                          target=target.name, data_dir=data_dir))
        teach = export_model(str(teacher_dir), folder / "teacher",
                           ExportSettings(variants=[settings.reference, settings.comparison], data_dir=data_dir))
        return {"student": {r.key: r.passed for r in res}, "teacher": {r.key: r.passed for r in teach}}

    export_folder, exported = st.run("export", x_key, export)

    # 6. bench
    b_settings = BenchSettings(repeats=settings.bench_repeats, new_tokens=settings.bench_new_tokens,
                               eval_every=settings.eval_every, data_dir=data_dir)
    b_key = _key("bench", x_key, as_dict(target), asdict(b_settings))
    teacher_ref = export_folder / "teacher" / settings.reference.replace(":", "-")
    comparison = export_folder / "teacher" / settings.comparison.replace(":", "-")
    candidates = sorted(d for d in (export_folder / "student").iterdir() if (d / "manifest.json").exists())

    def run_bench(folder: Path) -> dict:
        with progress() as p:
            report = bench(candidates, target, folder, b_settings, teacher=teacher_ref, comparison=[comparison],
                           progress=p)
        return {"chosen": report["chosen"]}

    bench_folder, _ = st.run("bench", b_key, run_bench)
    report = json.loads((bench_folder / "bench.json").read_text())

    # 7. choose: the final bundle and the run report
    rows = {r["name"]: r for r in report["variants"]}
    chosen = rows.get(report["chosen"]) if report["chosen"] else None
    comp = next((r for r in report["variants"] if r.get("comparison")), None)
    summary = {"target": target.name, "run_folder": str(out), "stages": st.record, "student": distilled,
               "chosen": None, "versus_teacher": None, "bench": str(bench_folder / "bench.md")}
    final = out / "final"
    shutil.rmtree(final, ignore_errors=True)
    if chosen:
        shutil.copytree(chosen["bundle"], final / Path(chosen["bundle"]).name)
        summary["chosen"] = {"name": chosen["name"], "bundle": str(final / Path(chosen["bundle"]).name)}
        if comp and comp.get("speed") and comp["speed"].get("decode_tokens_per_s"):
            summary["versus_teacher"] = {
                "teacher_file": comp["name"],
                "decode_speedup": chosen["speed"]["decode_tokens_per_s"] / comp["speed"]["decode_tokens_per_s"],
                "peak_rss_ratio": chosen["speed"]["peak_rss_bytes"] / comp["speed"]["peak_rss_bytes"],
            }
    else:
        summary["closest"] = _closest(report)
    if chosen and target.safety_floor is not None:
        summary["safety"] = _safety_gate(st, _key("safety", b_key, chosen["name"], asdict(target.safety_floor)),
                                         final / Path(chosen["bundle"]).name, chosen, target, data_dir)
    (out / "run.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _safety_gate(st: Stages, key: str, bundle: Path, chosen: dict, target, data_dir: Path) -> dict:
    """Refusal behaviour of the chosen bundle on the safety test split against the profile's floor; the verdict
    goes into run.json and into the final bundle's manifest ("deployment")."""
    from edgedistill.safety import evaluate, load_suite, meets_floor

    def run_safety(folder: Path) -> dict:
        res = evaluate(chosen["bundle"], load_suite("test", data_dir))
        (folder / "safety.json").write_text(json.dumps(res, indent=2) + "\n")
        verdict = meets_floor(res, target.safety_floor)
        return {"refusal_rate": res["refusal_rate"], "over_refusal": res["over_refusal"],
                "by_category": res["by_category"], **verdict}

    _, info = st.run("safety", key, run_safety)
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["deployment"] = {"target": target.name, "deployable": info["deployable"], "safety": info["checks"]}
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path)
    return info


def _closest(report: dict) -> dict | None:
    """The candidate that misses the fewest budgets, and by how much (for the message when none meets all)."""
    cands = [r for r in report["variants"] if r["budgets"] and r["allowed"] and not r.get("comparison")]
    if not cands:
        return None
    best = min(cands, key=lambda r: sum(not c["pass"] for c in r["budgets"].values()))
    return {"name": best["name"], "misses": {k: {"value": c["value"], "limit": c["limit"]}
                                             for k, c in best["budgets"].items() if not c["pass"]}}


class _NoProgress:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False

