"""The distill stages as whole jobs, from settings to files on disk: `prune`, `cache_logits`, `distill`.

The CLI (`edgedistill prune | cache-logits | distill`), `edgedistill run` and the benchmarks call these; each
writes its result atomically and its resolved settings beside it (settings.yaml), so a run folder says how it
was made and `--config settings.yaml` repeats it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from edgedistill.distill.settings import LossSettings, TrainSettings
from edgedistill.engines import EngineSettings
from edgedistill.errors import EdgeDistillError
from edgedistill.models.registry import DEFAULT_TEACHER
from edgedistill.settings import Settings, like, setting
from edgedistill.settings import write as write_settings

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------- prune


@dataclass(frozen=True)
class PruneSettings(Settings):
    teacher: str = setting(DEFAULT_TEACHER, "The model to cut the student from.")
    out: Path = setting(None, "New student folder.", required=True)
    layers: int | None = setting(None, "Blocks to keep (the most important ones) [default: a third of the teacher's, "
                                       "10 of SmolLM2-135M's 30].", min=1)
    hidden: int | None = setting(None, "Hidden size.", min=1)
    ffn: int | None = setting(None, "FFN intermediate size.", min=1)
    heads: int | None = setting(None, "Query heads.", min=1)
    kv_heads: int | None = setting(None, "Key/value heads (groups).", min=1)
    hw_friendly: bool = setting(True, "Student widths in multiples of 256 (real llama.cpp K-quants; explicit sizes "
                                      "win) or the teacher's widths.", flag="--hw-friendly/--teacher-width")
    calibration: Path | None = setting(None, "Text file or folder of .txt [default: every domain's texts/ in the "
                                             "data folder].", exists="any")
    data_dir: Path | None = setting(None, "Data folder whose */texts are the default calibration [default: the "
                                          "project's calibration_data].", exists="dir", flag="--data")
    calibration_tokens: int = setting(8192, "Calibration tokens used to measure importance.", min=256,
                                      aliases=("max_tokens",))


def prune(s: PruneSettings, *, teacher=None, progress=None) -> dict:
    """A student cut from the teacher by measured importance, in s.out (atomically) with pruning.json and
    settings.yaml. `teacher`: an already loaded (model, tokenizer). Returns pruning.json's content and `student`,
    the folder written."""
    from edgedistill.data import default_data_dir, load_texts
    from edgedistill.distill.pruning import (StudentShape, check_prunable, derive_student, hardware_friendly,
                                             interleave_texts)
    from edgedistill.models.locate import load_model
    from edgedistill.paths import check_writable_dir

    out = Path(s.out)
    if out.exists():  # before loading the teacher and reading the calibration data
        raise EdgeDistillError(f"{out} already exists; choose another --out or delete it")
    check_writable_dir(out.parent, "--out folder")
    if s.calibration is None:
        data = Path(s.data_dir) if s.data_dir else default_data_dir()
        texts = [t for d in sorted(data.glob("*/texts")) for _, t in load_texts(d)]
    else:
        texts = [t for _, t in load_texts(s.calibration)]
    loaded = teacher or load_model(s.teacher)
    check_prunable(loaded[0])
    layers = s.layers or max(1, round(loaded[0].config.num_hidden_layers / 3))
    shape = StudentShape(layers, s.hidden, s.ffn, s.heads, s.kv_heads)
    if s.hw_friendly and None in (s.hidden, s.ffn, s.heads, s.kv_heads):  # explicit sizes win
        hw = hardware_friendly(loaded[0], layers)
        shape = StudentShape(layers, s.hidden or hw.hidden, s.ffn or hw.ffn, s.heads or hw.heads,
                             s.kv_heads or hw.kv_heads)
    derive_student(s.teacher, shape, interleave_texts(texts), out, max_tokens=s.calibration_tokens, progress=progress,
                   loaded=loaded, extra_files={"settings.yaml": lambda p: write_settings(s, p)})
    return {**json.loads((out / "pruning.json").read_text()), "student": str(out)}


# ---------------------------------------------------------------------------------------------- cache-logits


@dataclass(frozen=True)
class CacheSettings(EngineSettings):
    teacher: str = setting(DEFAULT_TEACHER, "The teacher whose log-probabilities are stored (torch and llama.cpp "
                                            "engines; with openai they come from the data's records).")
    generations: list[Path] = setting([], "Teacher generations (the same files, in the same order, as for distill).",
                                      required=True, exists="file", aliases=("data",))
    out: Path = setting(None, "New cache folder.", required=True)
    k: int = setting(64, "Log-probabilities kept per token (openai: at most what the records hold).", min=1)
    max_length: int = like(TrainSettings, "max_length")  # the cache is read by a distill with the same length
    batch_size: int = like(TrainSettings, "batch_size")
    allow_empty: bool = setting(False, "Keep teacher answers that are empty or only whitespace (refused by default: "
                                       "they teach the student to say nothing).")
    turns: str = setting("all", "Logged conversations (messages with assistant turns, no 'response'): train on every "
                                "assistant turn with the conversation before it, or only the last.",
                         choices=("all", "last"))
    shard_tokens: int = setting(1 << 20, "Response tokens per shard file (training memory-maps the shards and "
                                         "reads one batch's rows at a time).", min=1)


def cache_logits(s: CacheSettings, *, progress=None) -> dict:
    """The teacher's top-k log-probabilities per response token of the generations, in s.out (atomically, with
    settings.yaml): scored teacher-forced by the torch or llama.cpp engine, or, for a served teacher (openai),
    read from the records `generate --logprobs K` wrote. Returns cache.json's content."""
    from edgedistill.distill import logit_cache as lc
    from edgedistill.distill.dataset import encode, load_generations
    from edgedistill.engines import identity, open_engine
    from edgedistill.models.locate import load_tokenizer
    from edgedistill.paths import check_writable_dir

    if Path(s.out).exists():
        raise EdgeDistillError(f"{s.out} already exists; choose another --out or delete it")
    check_writable_dir(Path(s.out).parent, "--out folder")
    spec = s.engine_spec(s.teacher)
    records = load_generations(s.generations, allow_empty=s.allow_empty, turns=s.turns)
    extra = {"settings.yaml": lambda p: write_settings(s, p)}
    if s.teacher_engine == "openai":
        teacher_id, fingerprint, engine = identity(spec)
        if not s.tokenizer:
            raise EdgeDistillError("cache-logits --teacher-engine openai needs --tokenizer MODEL (the one the records "
                                   "were aligned to)")
        made_by = {r.get("teacher_fingerprint") for r in records}
        if made_by != {fingerprint}:
            raise lc.StaleCacheError(f"the records were generated by {sorted({str(r.get('teacher')) for r in records})}, "
                                     f"not by {teacher_id!r}: cache-logits reads the served teacher's own records")
        ks = {(r.get("settings") or {}).get("logprobs") for r in records}
        if None in ks or len(ks) != 1:
            raise EdgeDistillError("the records hold no teacher log-probabilities: generate them with "
                                   "`edgedistill generate --teacher-engine openai --logprobs K`")
        tok = load_tokenizer(s.tokenizer)
        data = encode(tok, records, s.max_length)
        k = min(s.k, ks.pop())
        rows, filled = lc.rows_from_records(records, data, k, len(tok))
        return lc.build(rows, teacher_id, fingerprint, data, Path(s.out), k=k, vocab=len(tok),
                        engine={**engine, "url": s.teacher_url, "from": "records"}, filled=filled, progress=progress,
                        extra_files=extra, shard_tokens=s.shard_tokens)
    e = open_engine(spec)
    try:
        data = encode(e.tokenizer, records, s.max_length)
        vocab = getattr(e, "n_vocab", None) or e.model.config.vocab_size
        rows = e.score(data.examples, s.k, batch_size=s.batch_size)
        return lc.build(rows, e.teacher_id, e.fingerprint, data, Path(s.out), k=s.k, vocab=vocab,
                        engine={"engine": e.name, **e.settings}, progress=progress, extra_files=extra,
                        shard_tokens=s.shard_tokens)
    finally:
        e.close()


# --------------------------------------------------------------------------------------------------- distill


@dataclass(frozen=True)
class DistillSettings(TrainSettings, LossSettings):
    """The objective and the loop (distill.settings, shared with `run`), plus what this stage reads and writes."""

    teacher: str = setting(DEFAULT_TEACHER, "The teacher (registry name, Hugging Face folder or .gguf).")
    student: str = setting(None, "Student model with the teacher's tokenizer, e.g. from `edgedistill prune`.",
                           required=True)
    generations: list[Path] = setting([], "Teacher generations (JSONL from `edgedistill generate`, or logged "
                                          "conversations with assistant turns); repeatable.",
                                      required=True, exists="file", aliases=("data",))
    validation: list[Path] = setting([], "Held-out generations for the final mean KL / top-1 agreement report; "
                                         "repeatable.", exists="file")
    out: Path = setting(None, "Run folder; the student is written to OUT/student.", required=True)
    keep_checkpoints: bool = setting(True, "Keep OUT/checkpoints after the student is written.", key=False)
    allow_empty: bool = like(CacheSettings, "allow_empty")
    turns: str = like(CacheSettings, "turns")
    logit_cache: Path | None = setting(None, "Train from the teacher's cached top-k log-probs (edgedistill "
                                             "cache-logits) instead of running it.", exists="dir")


def _same_teacher(teacher: str, fingerprint: str, records: list[dict], flag: str) -> None:
    """Records that name the teacher that wrote them (what `generate` writes) must name this one: text from one
    teacher and log-probabilities or validation KL from another are never mixed. Records that name no teacher
    (written by hand) are taken as they are."""
    other = sorted({f"{r.get('teacher')!r} (fingerprint {r['teacher_fingerprint']})" for r in records
                    if r.get("teacher_fingerprint") and r["teacher_fingerprint"] != fingerprint})
    if other:
        raise EdgeDistillError(f"{flag} were written by teacher {', '.join(other)}, not by --teacher {teacher!r} "
                               f"(fingerprint {fingerprint}); distilling would mix two teachers: pass --teacher naming "
                               "the model that wrote them, or generate them again with this one")


def distill(s: DistillSettings, *, teacher=None, resume: bool = False, progress=None, echo=None) -> dict:
    """Train the student to imitate the teacher on its generations; the student goes to OUT/student (atomically)
    with distill.json (steps, parameters, held-out mean KL and top-1 agreement) and settings.yaml; checkpoints and
    metrics.jsonl stay in OUT. `teacher`: an already loaded (model, tokenizer) of s.teacher. Returns distill.json's
    content and `student`, the folder written."""
    from edgedistill.models.fingerprint import spec_fingerprint
    from edgedistill.distill import logit_cache as lc
    from edgedistill.distill.dataset import encode, load_generations
    from edgedistill.distill.train import agreement_with_teacher, train
    from edgedistill.models.locate import load_model, load_tokenizer, save_tokenizer
    from edgedistill.paths import atomic_dir, check_writable_dir

    from edgedistill.distill.train import check_launch

    check_launch()  # under a launcher: its processes fit this machine
    say = echo or log.info
    out = Path(s.out)
    final = out / "student"
    if final.exists():
        raise EdgeDistillError(f"{final} already exists: this run is finished; choose another --out")
    check_writable_dir(out, "--out")  # before the models load
    if resume and not any((out / "checkpoints").glob("checkpoint-*")):
        raise EdgeDistillError(f"--resume: no checkpoint in {out / 'checkpoints'}; start the run without --resume")
    from edgedistill.distill.train import resolve_precision

    precision, why = resolve_precision(s.precision)  # an explicit choice this machine cannot run: refused now
    records = load_generations(s.generations, allow_empty=s.allow_empty, turns=s.turns)
    val_records = load_generations(s.validation, allow_empty=s.allow_empty, turns=s.turns) if s.validation else []
    meta = lc.describe(s.logit_cache) if s.logit_cache is not None else None
    if meta is not None and lc.served(meta):  # a served teacher: the cache is all there is of it
        if s.on_policy or s.validation:
            raise EdgeDistillError(f"{s.logit_cache} holds a served teacher's log-probabilities: on-policy steps and "
                                   "--validation need a local teacher; drop them or pass that teacher's own model")
        if {r.get("teacher_fingerprint") for r in records} != {meta["teacher_fingerprint"]}:
            raise lc.StaleCacheError(f"{s.logit_cache} was made from {meta['teacher']!r}'s records, and "
                                     "--generations holds other teachers' answers; pass the records the cache was "
                                     "made from")
        s = s.replace(teacher=str(meta["teacher"]))  # the teacher this run learns from, in its report and settings
        s_pair = load_model(s.student, attn_implementation=s.attention)
        t_pair, teacher_fp = (None, s_pair[1]), meta["teacher_fingerprint"]
    else:
        teacher_fp = spec_fingerprint(s.teacher)
        _same_teacher(s.teacher, teacher_fp, records, "--generations")  # before any model loads
        _same_teacher(s.teacher, teacher_fp, val_records, "--validation")
        if teacher is not None:
            t_pair = teacher
        elif meta is not None and s.on_policy == 0 and not s.validation:
            t_pair = (None, load_tokenizer(s.teacher))  # the cache stands in for the teacher model
        else:
            t_pair = load_model(s.teacher, attn_implementation=s.attention)
        s_pair = load_model(s.student, attn_implementation=s.attention)
    train_set = encode(t_pair[1], records, s.max_length)  # what a logit cache was built on
    inputs = {"teacher": teacher_fp, "student_init": spec_fingerprint(s.student)}
    cache = None
    if s.logit_cache is not None:
        cache = lc.load(s.logit_cache, train_set, inputs["teacher"])
    say(f"precision {precision} ({why})")
    say(f"{len(train_set.examples)} training sequences, {train_set.response_tokens} response tokens"
        + (f", {train_set.truncated} truncated to {s.max_length} tokens" if train_set.truncated else ""))
    t0 = time.perf_counter()
    model, trainer = train(t_pair, s_pair, train_set.examples, out, s, s, resume=resume, progress=progress,
                           cache=cache, inputs=inputs)
    report = {"teacher": s.teacher, "student_init": s.student, "steps": trainer.state.global_step,
              "train_s": round(time.perf_counter() - t0, 2), "train_tokens": int(trainer.tokens_seen),
              "logit_cache": str(s.logit_cache) if s.logit_cache else None,
              "train_sequences": len(train_set.examples), "truncated": train_set.truncated,
              "parameters": model.num_parameters()}
    if s.validation:
        val = encode(t_pair[1], val_records, s.max_length)
        report["validation"] = agreement_with_teacher(t_pair[0], model, val.examples, t_pair[1].pad_token_id)
    import torch.distributed as dist

    if dist.is_initialized():  # under torchrun / accelerate launch: only rank 0 writes; shut down cleanly
        rank0 = trainer.is_world_process_zero()
        dist.barrier()
        dist.destroy_process_group()
        if not rank0:
            return report
    report["precision"] = {"used": precision, "why": why}
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(s_pair[1], tmp)
        (tmp / "distill.json").write_text(json.dumps(report, indent=2) + "\n")
        write_settings(s, tmp / "settings.yaml")
    write_settings(s, out / "settings.yaml")
    if not s.keep_checkpoints:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return {**report, "student": str(final)}
