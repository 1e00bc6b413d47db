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

from edgedistill.engines import EngineSettings
from edgedistill.errors import EdgeDistillError
from edgedistill.models.registry import DEFAULT_TEACHER
from edgedistill.settings import Settings, setting
from edgedistill.settings import write as write_settings

log = logging.getLogger(__name__)


def _loss_names() -> tuple[str, ...]:
    from edgedistill.distill.losses import losses

    return tuple(losses())


# ---------------------------------------------------------------------------------------------------- prune


@dataclass(frozen=True)
class PruneSettings(Settings):
    teacher: str = setting(DEFAULT_TEACHER, "The model to cut the student from.")
    out: Path = setting(None, "New student folder.", required=True)
    layers: int | None = setting(None, "Blocks to keep (the most important ones).", min=1)
    hidden: int | None = setting(None, "Hidden size.", min=1)
    ffn: int | None = setting(None, "FFN intermediate size.", min=1)
    heads: int | None = setting(None, "Query heads.", min=1)
    kv_heads: int | None = setting(None, "Key/value heads (groups).", min=1)
    hw_friendly: bool = setting(False, "Largest widths whose rows are multiples of 256 (real llama.cpp K-quants); "
                                       "explicit sizes win.")
    calibration: Path | None = setting(None, "Text file or folder of .txt [default: every domain's texts/ in the "
                                             "data folder].", exists="any")
    data_dir: Path | None = setting(None, "Data folder whose */texts are the default calibration [default: the "
                                          "project's calibration_data].", exists="dir", flag="--data")
    max_tokens: int = setting(16384, "Calibration tokens used to measure importance.", min=256)


def prune(s: PruneSettings, *, teacher=None, progress=None) -> dict:
    """A student cut from the teacher by measured importance, in s.out (atomically) with pruning.json and
    settings.yaml. `teacher`: an already loaded (model, tokenizer). Returns pruning.json's content."""
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
    shape = StudentShape(s.layers, s.hidden, s.ffn, s.heads, s.kv_heads)
    if s.hw_friendly:
        hw = hardware_friendly(loaded[0], s.layers)
        shape = StudentShape(s.layers, s.hidden or hw.hidden, s.ffn or hw.ffn, s.heads or hw.heads,
                             s.kv_heads or hw.kv_heads)
    derive_student(s.teacher, shape, interleave_texts(texts), out, max_tokens=s.max_tokens, progress=progress,
                   loaded=loaded, extra_files={"settings.yaml": lambda p: write_settings(s, p)})
    return json.loads((out / "pruning.json").read_text())


# ---------------------------------------------------------------------------------------------- cache-logits


@dataclass(frozen=True)
class CacheSettings(EngineSettings):
    teacher: str = setting(DEFAULT_TEACHER, "The teacher whose log-probabilities are stored (torch and llama.cpp "
                                            "engines; with openai they come from the data's records).")
    data: list[Path] = setting([], "Teacher generations (the same files, in the same order, as for distill).",
                               required=True, exists="file")
    out: Path = setting(None, "New cache folder.", required=True)
    k: int = setting(64, "Log-probabilities kept per token (openai: at most what the records hold).", min=1)
    max_length: int = setting(512, "Tokens per sequence, as for distill.", min=8)
    batch_size: int = setting(4, "Sequences per teacher pass (torch engine).", min=1)
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
    records = load_generations(s.data)
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
class DistillSettings(Settings):
    teacher: str = setting(DEFAULT_TEACHER, "The teacher (registry name, Hugging Face folder or .gguf).")
    student: str = setting(None, "Student model with the teacher's tokenizer, e.g. from `edgedistill prune`.",
                           required=True)
    data: list[Path] = setting([], "Teacher generations (JSONL from `edgedistill generate`); repeatable.",
                               required=True, exists="file")
    validation: list[Path] = setting([], "Held-out generations for the final mean KL / top-1 agreement report; "
                                         "repeatable.", exists="file")
    out: Path = setting(None, "Run folder; the student is written to OUT/student.", required=True)
    loss: str = setting("forward_kl", "A registered divergence: forward_kl, reverse_kl, jsd, skew_kl, "
                                      "skew_reverse_kl, tvd.", choices=_loss_names)
    beta: float | None = setting(None, "JSD interpolation (jsd only).")
    alpha: float | None = setting(None, "Skew (skew_kl / skew_reverse_kl only).")
    kd_weight: float = setting(1.0, "Share of the distillation loss; the rest is cross-entropy on the teacher's "
                                    "tokens.", min=0, max=1)
    loss_temperature: float = setting(1.0, "Softens both distributions inside the loss (not a sampling "
                                           "temperature).", min=0.05, max=20)
    on_policy: float = setting(0.0, "λ: share of steps on the student's own samples (those use the divergence "
                                    "alone).", min=0, max=1)
    on_policy_max_new_tokens: int = setting(128, "Length of the student's samples on on-policy steps.", min=1)
    max_steps: int = setting(200, "Optimizer steps.", min=1)
    max_time: float | None = setting(None, "Stop (and save) after this long, e.g. 20m.", min=0, min_open=True,
                                     kind="duration")
    batch_size: int = setting(4, "Sequences per micro-batch, per process.", min=1)
    grad_accum: int = setting(4, "Micro-batches per optimizer step.", min=1)
    lr: float = setting(2e-4, "Peak learning rate (cosine schedule).", min=0, min_open=True, max=1)
    warmup_steps: int = setting(10, "Learning-rate warm-up steps.", min=0)
    max_length: int = setting(512, "Tokens per sequence; longer ones are truncated (and counted).", min=8)
    seed: int = setting(0, "Seed of initialisation-free randomness: data order, on-policy steps.")
    save_steps: int = setting(50, "Checkpoint every N steps (for --resume).", min=1, key=False)
    keep_checkpoints: bool = setting(True, "Keep OUT/checkpoints after the student is written.", key=False)
    logit_cache: Path | None = setting(None, "Train from the teacher's cached top-k log-probs (edgedistill "
                                             "cache-logits) instead of running it.", exists="dir")
    precision: str = setting("auto", "Training precision: auto (bf16 on a GPU that has it and on a CPU where a short "
                                     "probe measures bf16 matmuls at least 2x faster than fp32, e.g. AMX; else fp32), "
                                     "fp32, bf16, fp16 (GPU only). The teacher runs in it too; weights, optimizer "
                                     "state and divergences stay float32.",
                             choices=("auto", "fp32", "bf16", "fp16"))
    gradient_checkpointing: bool = setting(False, "Recompute the student's activations in the backward pass (less "
                                                  "memory, about a third more compute).")
    kd_chunk: int | None = setting(None, "Apply the output heads this many response positions of a micro-batch at a "
                                         "time, so full-vocabulary logits never exist whole (0: full logits; ignored "
                                         "under FSDP). Default: 256, or a micro-batch's positions if fewer.", min=0)
    fsdp: str = setting("", "FSDP options for a run under torchrun on GPUs, e.g. 'full_shard auto_wrap' (FSDP2, wrapped "
                            "by decoder layer); under `accelerate launch` its config file decides instead.")
    shard_teacher: bool = setting(False, "Under FSDP, shard the teacher as well (default: each process holds a whole "
                                         "copy).")
    attention: str | None = setting(None, "Attention implementation passed to transformers (e.g. sdpa, eager, "
                                          "flash_attention_2); default: transformers' choice.")

    def loss_config(self):
        from edgedistill.distill.losses import LossConfig

        return LossConfig(self.loss, self.loss_params, temperature=self.loss_temperature, kd_weight=self.kd_weight)

    @property
    def loss_params(self) -> dict:
        return {k: v for k, v in (("beta", self.beta), ("alpha", self.alpha)) if v is not None}

    def train_config(self):
        from edgedistill.distill.train import TrainConfig, resolve_precision

        precision, why = resolve_precision(self.precision)
        return TrainConfig(max_steps=self.max_steps, max_time_s=self.max_time, batch_size=self.batch_size,
                           grad_accum=self.grad_accum, learning_rate=self.lr, warmup_steps=self.warmup_steps,
                           max_length=self.max_length, seed=self.seed, save_steps=self.save_steps,
                           on_policy=self.on_policy, on_policy_max_new_tokens=self.on_policy_max_new_tokens,
                           kd_chunk=self.chunk, precision=precision, precision_reason=why,
                           gradient_checkpointing=self.gradient_checkpointing, fsdp=self.fsdp,
                           shard_teacher=self.shard_teacher)

    @property
    def chunk(self) -> int:
        return min(256, self.batch_size * self.max_length) if self.kd_chunk is None else self.kd_chunk

    def extra_problems(self) -> list[str]:
        from edgedistill.distill.losses import check_params, get, losses

        if self.loss not in losses():
            return []  # reported by the field's own check
        problems = []
        try:
            check_params(get(self.loss), self.loss_params)
        except EdgeDistillError as e:
            problems.append(str(e))
        if self.kd_chunk is not None and self.kd_chunk > self.batch_size * self.max_length:
            problems.append(f"--kd-chunk {self.kd_chunk} exceeds a micro-batch's {self.batch_size} x {self.max_length} "
                            "positions (--batch-size x --max-length); choose at most that (the last chunk may be "
                            "shorter, so it need not divide it)")
        return problems


def distill(s: DistillSettings, *, teacher=None, resume: bool = False, progress=None, echo=None) -> dict:
    """Train the student to imitate the teacher on its generations; the student goes to OUT/student (atomically)
    with distill.json (steps, parameters, held-out mean KL and top-1 agreement) and settings.yaml; checkpoints and
    metrics.jsonl stay in OUT. `teacher`: an already loaded (model, tokenizer) of s.teacher. Returns distill.json's
    content."""
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
    loss_cfg, cfg = s.loss_config(), s.train_config()
    records = load_generations(s.data)
    meta = lc.describe(s.logit_cache) if s.logit_cache is not None else None
    if meta is not None and lc.served(meta):  # a served teacher: the cache is all there is of it
        if s.on_policy or s.validation:
            raise EdgeDistillError(f"{s.logit_cache} holds a served teacher's log-probabilities: on-policy steps and "
                                   "--validation need a local teacher; drop them or pass that teacher's own model")
        if {r.get("teacher_fingerprint") for r in records} != {meta["teacher_fingerprint"]}:
            raise lc.StaleCacheError(f"{s.logit_cache} was made from {meta['teacher']!r}'s records, and --data holds "
                                     "other teachers' answers; pass the records the cache was made from")
        s_pair = load_model(s.student, attn_implementation=s.attention)
        t_pair, teacher_fp = (None, s_pair[1]), meta["teacher_fingerprint"]
    else:
        if teacher is not None:
            t_pair = teacher
        elif meta is not None and s.on_policy == 0 and not s.validation:
            t_pair = (None, load_tokenizer(s.teacher))  # the cache stands in for the teacher model
        else:
            t_pair = load_model(s.teacher, attn_implementation=s.attention)
        s_pair = load_model(s.student, attn_implementation=s.attention)
        teacher_fp = spec_fingerprint(s.teacher)
    train_set = encode(t_pair[1], records, s.max_length)  # what a logit cache was built on
    inputs = {"teacher": teacher_fp, "student_init": spec_fingerprint(s.student)}
    cache = None
    if s.logit_cache is not None:
        cache = lc.load(s.logit_cache, train_set, inputs["teacher"])
    say(f"precision {cfg.precision} ({cfg.precision_reason})")
    say(f"{len(train_set.examples)} training sequences, {train_set.response_tokens} response tokens"
        + (f", {train_set.truncated} truncated to {s.max_length} tokens" if train_set.truncated else ""))
    t0 = time.perf_counter()
    model, trainer = train(t_pair, s_pair, train_set.examples, out, loss_cfg, cfg, resume=resume, progress=progress,
                           cache=cache, inputs=inputs)
    report = {"teacher": s.teacher, "student_init": s.student, "steps": trainer.state.global_step,
              "train_s": round(time.perf_counter() - t0, 2), "train_tokens": int(trainer.tokens_seen),
              "logit_cache": str(s.logit_cache) if s.logit_cache else None,
              "train_sequences": len(train_set.examples), "truncated": train_set.truncated,
              "parameters": model.num_parameters()}
    if s.validation:
        val = encode(t_pair[1], load_generations(s.validation), s.max_length)
        report["validation"] = agreement_with_teacher(t_pair[0], model, val.examples, t_pair[1].pad_token_id)
    import torch.distributed as dist

    if dist.is_initialized():  # under torchrun / accelerate launch: only rank 0 writes; shut down cleanly
        rank0 = trainer.is_world_process_zero()
        dist.barrier()
        dist.destroy_process_group()
        if not rank0:
            return report
    report["loss"], report["train"] = loss_cfg.__dict__, cfg.__dict__
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(s_pair[1], tmp)
        (tmp / "distill.json").write_text(json.dumps(report, indent=2) + "\n")
        write_settings(s, tmp / "settings.yaml")
    write_settings(s, out / "settings.yaml")
    if not s.keep_checkpoints:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return report
