"""Task distillation as one job: a task file in, a student that does the teacher's job on it out, scored side by side.

  1. split    the test items (the task's test file, else a held-out share of its inputs); training inputs that are
              near-duplicates of a test item are dropped (data/dedup.py, the check of `data stats`)
  2. label    the teacher answers every training input under the task's instructions (data/generate.py: resumable,
              one teacher per file); each answer is read by its kind and the invalid ones are dropped and counted
  3. distill  the student learns the valid answers (distill/stage.py: LoRA for a pretrained student, logit KD
              where the teacher is local and shares the tokenizer, the teacher's text otherwise)
  4. evaluate on the test items: the teacher, the student before (zero-shot, and with seeds as few-shot examples)
              and after; validity, the kind's metric against gold (where the test has it) and against the
              teacher's answers, with 95% intervals

`task_eval` scores one model on a task's test items (step 4 alone).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from edgedistill.distill.settings import LossSettings, TrainSettings
from edgedistill.engines import EngineSettings, EngineSpec
from edgedistill.errors import EdgeDistillError
from edgedistill.models.registry import DEFAULT_TEACHER
from edgedistill.data.generate import DecodeSettings
from edgedistill.export.pipeline import ExportSettings
from edgedistill.settings import Settings, like, setting
from edgedistill.task.spec import Task, TaskError, load_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskEvalSettings(Settings):
    """What every scoring of a task's test items shares (task eval, task distill)."""

    task: Path = setting(None, "The task file (task.yaml).", required=True, exists="file")
    # None: the output kind's own length (label 16, code 512, others 256), as docs/task.md says
    max_new_tokens: int | None = like(DecodeSettings, "max_new_tokens", None)
    test_share: float = setting(0.5, "Without a test file in the task: the share of its inputs held out for "
                                     "evaluation (against the teacher's answers).", min=0, max=0.9, min_open=True)
    test_limit: int | None = setting(None, "Score at most this many test items (the first ones).", min=1)


@dataclass(frozen=True)
class TaskSettings(TaskEvalSettings, EngineSettings, TrainSettings, LossSettings):
    """task distill: the teacher, the student, the training loop, and the folder everything goes to."""

    teacher: str | None = setting(DEFAULT_TEACHER, "The teacher: registry name, Hugging Face folder or .gguf (a served "
                                                   "teacher: --teacher-url and --teacher-model).")
    student: str = setting(None, "The student: registry name, Hugging Face folder, or a folder cut by `prune`.",
                           required=True)
    out: Path = setting(None, "Run folder: teacher answers, the student, task.json.", required=True)
    few_shot: int = setting(3, "Seeds shown as examples to the student before training (its few-shot baseline; 0: "
                               "zero-shot only).", min=0, max=32)
    # the student's exported files scored as well (none unless asked: each costs an export and the test items again)
    variants: list[str] = like(ExportSettings, "variants", [])

    def extra_problems(self) -> list[str]:
        from edgedistill.quantize import get

        problems = []
        for v in self.variants:
            try:
                scheme = get(v)
            except EdgeDistillError as e:
                problems.append(str(e))
                continue
            if scheme.format != "gguf":
                problems.append(f"--variant {v}: task distill scores GGUF variants (llama.cpp answers them); score "
                                "ONNX ones with `edgedistill bench`")
        return problems


@dataclass(frozen=True)
class Split:
    train: tuple[dict, ...]
    test: tuple[dict, ...]
    gold: bool  # the test items carry gold answers
    dropped_near_duplicates: int


def split(task: Task, share: float, limit: int | None = None) -> Split:
    """Training inputs (the task's inputs and its seeds' inputs) and test items, no training input a near-duplicate
    of a test item. Without a test file, a share of the inputs (whole near-duplicate groups, by a hash of the
    group's first id) is held out."""
    import hashlib

    from edgedistill.data.dedup import groups, near_duplicate_pairs

    pool = list(task.inputs) + [{k: v for k, v in s.items() if k != "output"} for s in task.seeds]
    if task.test:
        test, gold = list(task.test), True
    else:
        if not task.inputs:
            raise TaskError(f"{task.path}: no test file and no inputs: give `test` (records with gold output) or "
                            "`inputs` to hold some out")
        texts = [task.text_of(r) for r in task.inputs]
        label = groups(texts)

        def held(i: int) -> bool:
            h = hashlib.sha256(task.inputs[label[i]]["id"].encode()).digest()
            return int.from_bytes(h[:4], "big") / 2**32 < share

        test = [r for i, r in enumerate(task.inputs) if held(i)]
        held_ids = {r["id"] for r in test}
        pool = [r for r in pool if r["id"] not in held_ids]
        gold = False
    test = test[:limit] if limit else test
    texts = [task.text_of(r) for r in test] + [task.text_of(r) for r in pool]
    near = {j - len(test) for i, j, _ in near_duplicate_pairs(texts) if i < len(test) <= j}
    train = tuple(r for k, r in enumerate(pool) if k not in near)
    if not test:
        raise TaskError(f"{task.path}: no test items (raise --test-share or give a test file)")
    if not train:
        raise TaskError(f"{task.path}: no training inputs left once the test items and their near-duplicates are "
                        "set aside; add inputs")
    return Split(train, tuple(test), gold, len(near))


def _prompts(task: Task, records, *, system: bool = True, shots: tuple[dict, ...] = ()):
    from edgedistill.data.load import Prompt

    return [Prompt(id=r["id"], messages=task.messages(r, system=system, shots=shots), domain=task.name)
            for r in records]


def _answers(path: Path) -> dict[str, dict]:
    from edgedistill.checked import jsonl

    return {rec["id"]: rec for _, rec, problem in jsonl(path, "answers") if problem is None}


def answer(task: Task, records, engine: EngineSpec, out: Path, max_new_tokens: int, *, shots=(), progress=None,
           label: str = "") -> tuple[dict[str, dict], dict]:
    """`engine`'s answers to `records` under the task (resumable file `out`): id -> record, and the calls made."""
    from edgedistill.data.generate import DecodeSettings, generate

    prompts = _prompts(task, records, shots=shots)
    if out.exists():  # answers kept from an earlier run must answer these very prompts (the task file may have changed)
        asked = {p.id: list(p.messages) for p in prompts}
        stale = [rid for rid, rec in _answers(out).items() if rid in asked and rec.get("messages") != asked[rid]]
        if stale:
            raise TaskError(f"{out} holds answers to other prompts than this task's (e.g. {stale[0]!r}: the task file "
                            "changed since): choose another --out or delete that file")
    rep = generate(engine.model or "", prompts, out, DecodeSettings(max_new_tokens=max_new_tokens), engine=engine,
                   progress=progress)
    if rep.skipped_too_long:
        log.warning("%s: %d prompts longer than the model's context were skipped", label or out, rep.skipped_too_long)
    return _answers(out), {"written": rep.written, "reused": rep.already_done, "cut": rep.hit_max_tokens,
                           **({"calls": rep.calls} if rep.calls else {})}


def score(task: Task, test, answers: dict[str, dict], *, gold: bool, teacher: dict[str, dict] | None = None) -> dict:
    """Validity and the kind's metrics of `answers` on `test`: against gold (when the test has it) and against the
    teacher's valid answers (agreement), each a mean with its 95% bootstrap interval over the items. An item with
    no answer (its prompt was too long) counts as invalid."""
    from edgedistill.data.text_fidelity import mean_ci

    kind, out = task.kind, task.output
    valid, values, why = [], [], {}
    per_gold: dict[str, list[float]] = {}
    per_teacher: dict[str, list[float]] = {}
    gold_values, teacher_pairs = [], ([], [])
    for r in test:
        text = answers.get(r["id"], {}).get("response")
        p = kind.parse(text, out, r) if text is not None else None
        ok = bool(p and p.valid)
        valid.append(float(ok))
        values.append(p.value if ok else None)
        if not ok:
            reason = p.why if p else "no answer (prompt too long)"
            why[reason] = why.get(reason, 0) + 1
        if gold:
            g = task.gold(r)
            gold_values.append(g.value)
            for k, v in (kind.score(p.value, g.value, out, r) if ok else kind.zero()).items():
                per_gold.setdefault(k, []).append(v)
        if teacher is not None and kind.agreement and r["id"] in teacher:
            t = kind.parse(teacher[r["id"]]["response"], out, r)
            if t.valid:
                s = kind.score(p.value, t.value, out, r) if ok else kind.zero()
                for k, v in s.items():
                    per_teacher.setdefault(k, []).append(v)
                teacher_pairs[0].append(p.value if ok else None)
                teacher_pairs[1].append(t.value)
    result = {"items": len(test), "valid": mean_ci(valid),
              "invalid_why": dict(sorted(why.items(), key=lambda kv: -kv[1])[:5])}
    if per_gold:
        result["gold"] = {k: mean_ci(v) for k, v in per_gold.items()}
        result["gold"].update(kind.summary(values, gold_values, out))
    if per_teacher:
        result["teacher"] = {k: mean_ci(v) for k, v in per_teacher.items()}
        result["teacher"].update(kind.summary(*teacher_pairs, out))
    tokens = [a.get("response_tokens", 0) for a in answers.values()]
    result["tokens_per_answer"] = round(sum(tokens) / len(tokens), 1) if tokens else 0
    return result


def _local(model: str) -> EngineSpec:
    """A student (or any local model) answering through llama.cpp in process: its F16 GGUF, or the .gguf given."""
    return EngineSpec("llama.cpp", model, gguf_type="f16")


def task_eval(s: TaskEvalSettings, model: str, out: Path, *, engine: EngineSpec | None = None, progress=None) -> dict:
    """`model` (or a served one: `engine`) answering the task's test items, scored; answers kept in `out` (a
    resumable JSONL file)."""
    task = load_task(s.task)
    sp = split(task, s.test_share, s.test_limit)
    answers, _ = answer(task, sp.test, engine or _local(model), Path(out), _max_tokens(s, task), progress=progress)
    return {"task": task.name, "kind": task.output["kind"], "model": model, **score(task, sp.test, answers,
                                                                                      gold=sp.gold)}


def _max_tokens(s: TaskEvalSettings, task: Task) -> int:
    return s.max_new_tokens or task.kind.max_new_tokens


def _training_records(task: Task, answers: dict[str, dict], train, out: Path) -> tuple[Path, dict]:
    """The teacher's valid answers as distill's input (the records as generate wrote them), and what was dropped."""
    from edgedistill.paths import write_text_atomic

    kept, dropped = [], {}
    by_id = {r["id"]: r for r in train}
    for rid, rec in answers.items():
        if rid not in by_id:
            continue
        p = task.kind.parse(rec["response"], task.output, by_id[rid])
        if p.valid and rec.get("finish_reason") != "length":
            kept.append(rec)
        else:
            reason = p.why if not p.valid else "cut at --max-new-tokens"
            dropped[reason] = dropped.get(reason, 0) + 1
    if not kept:
        raise TaskError(f"the teacher gave no valid {task.kind.name} answer to the {len(train)} training inputs "
                        f"({', '.join(f'{n}: {w}' for w, n in dropped.items())}); check the instructions with "
                        "`edgedistill task eval`")
    path = out / "train.jsonl"
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    return path, {"answered": len(answers), "kept": len(kept), "dropped": sum(dropped.values()),
                  "dropped_why": dropped}


def task_distill(s: TaskSettings, *, echo=print, progress=None) -> dict:
    """The whole job (module docstring); everything goes to s.out, the report to s.out/task.json (returned).
    A rerun with the same settings reuses the answers and the student already made."""
    from edgedistill.distill.stage import DistillSettings, distill
    from edgedistill.paths import check_writable_dir, write_text_atomic

    task = load_task(s.task)
    out = check_writable_dir(Path(s.out), "--out")
    sp = split(task, s.test_share, s.test_limit)
    max_new = _max_tokens(s, task)
    teacher = s.engine_spec(s.teacher)
    echo(f"task {task.name} ({task.output['kind']}): {len(sp.train)} training inputs, {len(sp.test)} test items "
         f"({'gold answers' if sp.gold else 'held out, scored against the teacher'})"
         + (f"; {sp.dropped_near_duplicates} training inputs dropped as near-duplicates of test items"
            if sp.dropped_near_duplicates else ""))
    # 2. the teacher labels the training inputs
    t_train, t_train_calls = answer(task, sp.train, teacher, out / "teacher" / "train.jsonl", max_new,
                                    progress=progress, label="teacher, training inputs")
    train_file, data = _training_records(task, t_train, sp.train, out / "data")
    echo(f"teacher answers: {data['kept']} valid of {data['answered']}"
         + (f" ({data['dropped']} dropped: " + ", ".join(f"{n} {w}" for w, n in data["dropped_why"].items()) + ")"
            if data["dropped"] else ""))
    # 4a. the teacher and the student before, on the test items
    rows: dict[str, dict] = {}
    t_test, t_test_calls = answer(task, sp.test, teacher, out / "eval" / "teacher.jsonl", max_new, progress=progress)
    rows["teacher"] = score(task, sp.test, t_test, gold=sp.gold)
    before = _local(s.student)
    a, _ = answer(task, sp.test, before, out / "eval" / "student-before.jsonl", max_new, progress=progress)
    rows["student before, zero-shot"] = score(task, sp.test, a, gold=sp.gold, teacher=t_test)
    if s.few_shot:
        shots = task.seeds[: s.few_shot]
        a, _ = answer(task, sp.test, before, out / "eval" / f"student-before-{len(shots)}shot.jsonl", max_new,
                      shots=shots, progress=progress)
        rows[f"student before, {len(shots)}-shot"] = score(task, sp.test, a, gold=sp.gold, teacher=t_test)
    # 3. distill
    d = _student(s, train_file, out, echo, progress, distill, DistillSettings)
    # 4b. the student after
    a, _ = answer(task, sp.test, _local(d["student"]), out / "eval" / "student-after.jsonl", max_new,
                  progress=progress)
    rows["student after"] = score(task, sp.test, a, gold=sp.gold, teacher=t_test)
    for name, gguf in _variants(s, d["student"], out / "export", echo):
        a, _ = answer(task, sp.test, _local(str(gguf)), out / "eval" / f"student-after-{name}.jsonl", max_new,
                      progress=progress)
        rows[f"student after, {name}"] = score(task, sp.test, a, gold=sp.gold, teacher=t_test)
    report = {"task": task.name, "kind": task.output["kind"], "task_fingerprint": task.fingerprint,
              "teacher": s.teacher_model if s.teacher_engine == "openai" else s.teacher, "student": s.student,
              "test": {"items": len(sp.test), "gold": sp.gold, "source": task.sources.get("test", "held-out inputs")},
              "data": data, "teacher_calls": {"train": t_train_calls.get("calls"), "test": t_test_calls.get("calls")},
              "distill": {k: d.get(k) for k in ("pairing", "steps", "train_s", "train_tokens", "train_sequences",
                                                "lora", "peak_rss_mb", "precision")},
              "student_after": d["student"], "rows": rows}
    write_text_atomic(out / "task.json", json.dumps(report, indent=2) + "\n")
    return report


def _variants(s: TaskSettings, student: str, out: Path, echo) -> list[tuple[str, Path]]:
    """The student's GGUF variants (s.variants), exported once into `out` (a bundle each, validated as `export`
    validates), as (name, .gguf file)."""
    from edgedistill.export.pipeline import ExportSettings, export_model
    from edgedistill.quantize import get

    made = []
    for v in s.variants:
        key = get(v).key
        folder = out / key.replace(":", "-")
        if not (folder / "manifest.json").is_file():
            for r in export_model(student, out, ExportSettings(variants=[v]), on_step=echo):
                if not r.passed:
                    raise EdgeDistillError(f"the student's {key} failed its validation: {r.error}")
        made.append((key.split(":", 1)[1].upper(), next(folder.glob("*.gguf"))))
    return made


def _student(s: TaskSettings, train_file: Path, out: Path, echo, progress, distill, DistillSettings) -> dict:
    """distill on the teacher's valid answers into out/distill; a finished student made from the same data and
    settings is reused, one made otherwise is refused."""
    import hashlib
    import tempfile
    from dataclasses import fields

    from edgedistill.paths import write_text_atomic
    from edgedistill.settings import write as write_settings

    names = {f.name for f in fields(DistillSettings)}
    ds = DistillSettings(**{f.name: getattr(s, f.name) for f in fields(TrainSettings) + fields(LossSettings)
                            if f.name in names},
                         teacher=None if s.teacher_engine == "openai" else s.teacher, student=s.student,
                         generations=[train_file], out=out / "distill")
    with tempfile.TemporaryDirectory() as tmp:
        key = hashlib.sha256(write_settings(ds, Path(tmp) / "s.yaml").read_bytes()
                             + train_file.read_bytes()).hexdigest()
    done, stamp = out / "distill" / "student" / "distill.json", out / "distill" / "task-key"
    if done.is_file():
        if stamp.is_file() and stamp.read_text().strip() == key:
            echo(f"student: reusing {done.parent} (same data and settings)")
            return {**json.loads(done.read_text()), "student": str(done.parent)}
        raise EdgeDistillError(f"{done.parent} holds a student made from other data or settings: choose another "
                               "--out or delete that folder")
    d = distill(ds, progress=progress, echo=echo)
    write_text_atomic(stamp, key + "\n")
    return d
