"""The distillation loop, built on transformers' Trainer so the same code runs in one process or under
`accelerate launch` / `torchrun` on several GPUs or nodes (DDP/FSDP), with checkpoints and resume.

Per micro-batch: the teacher (frozen, no gradients) and the student see the same tokens; the loss is the
registered divergence on the response tokens (plus cross-entropy on the target tokens, by kd_weight),
summed, and divided by the number of response tokens in the whole gradient-accumulation step across all
processes: Trainer counts them (`num_items_in_batch`) before the step starts.

On-policy (GKD, Agarwal et al. 2024): with probability λ an accumulation step replaces the responses by
continuations sampled from the student itself, which the teacher then scores. Those micro-batches are
normalised by their own token count (the sampled lengths are not known when the step starts).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import time
from pathlib import Path

import torch

from edgedistill.checked import read_json
from edgedistill.distill.dataset import examples_fingerprint
from edgedistill.tensors import IGNORE, collate, left_pad
from edgedistill.distill.losses import masked_sum, per_token_objective, shared_rows
from edgedistill.distill.settings import PRECISIONS, LossSettings, TrainSettings
from edgedistill.errors import EdgeDistillError
from edgedistill.paths import write_text_atomic

log = logging.getLogger(__name__)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cpu_has_native_bf16() -> bool:
    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, f, lambda: False)()) for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


BF16_MIN_SPEEDUP = 2.0  # auto takes bf16 on a CPU only where its matmuls are at least this much faster than fp32


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup(repeats: int = 3) -> float:
    """How much faster this CPU multiplies matrices in bf16 than in fp32, with torch's threads: a 256 x 256 check
    first, which ends the probe where bf16 is less than half as fast (emulated in software, as on AMD EPYC without
    AVX512-BF16), then best of `repeats` at 1024 x 1024, large enough that timer noise and thread wake-ups do
    not decide it (Intel Xeon with AMX: 6x to 12x, 3x to 4x with llama.cpp's threads in the same process; at 512
    the same machine read anywhere from 3x to 25x)."""
    def best(n: int, dtype: torch.dtype, reps: int) -> float:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b  # warm-up: the first call picks (and may compile) the kernel
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        return min(times)

    small = best(256, torch.float32, repeats) / max(best(256, torch.bfloat16, repeats), 1e-9)
    if small < 0.5:  # emulated bf16 is far slower; native bf16 at this size read 0.9x to 2x here (timer noise)
        return small
    return best(1024, torch.float32, repeats) / max(best(1024, torch.bfloat16, repeats), 1e-9)


def resolve_precision(asked: str, device_type: str | None = None) -> tuple[str, str]:
    """(precision, why): auto -> bf16 on a GPU that has it, bf16 autocast on a CPU whose bf16 matmuls a short probe
    measures at least BF16_MIN_SPEEDUP times faster than fp32 (AMX), else fp32; an explicit choice the device cannot
    run is refused in one line (before any model loads). device_type: "cuda" or "cpu" (default: cuda when one is
    visible)."""
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device_type == "cuda"
    gpu_bf16 = cuda and torch.cuda.is_bf16_supported()
    if asked == "auto" and cuda:
        return ("bf16", "auto: this GPU has bf16") if gpu_bf16 else ("fp32", "auto: this GPU has no bf16")
    if asked == "auto":
        ratio = cpu_bf16_speedup() if _cpu_has_native_bf16() else 0.0
        if ratio >= BF16_MIN_SPEEDUP:
            return "bf16", (f"auto: bf16 autocast, as this CPU's bf16 matmul measured {ratio:.1f}x fp32's speed "
                            f"(>= {BF16_MIN_SPEEDUP:g}x); weights, optimizer and divergences stay float32")
        why = (f"its bf16 matmul measured {ratio:.2f}x fp32's speed (< {BF16_MIN_SPEEDUP:g}x)" if ratio else
               "it has no native bf16 (no AVX512-BF16 or AMX)")
        return "fp32", f"auto: fp32, as this CPU is faster in fp32: {why}"
    if asked == "fp16" and not cuda:
        raise EdgeDistillError("--precision fp16 needs a CUDA GPU (mixed fp16 training does not run on CPU); use "
                               "--precision fp32 or auto")
    if asked == "bf16" and cuda and not gpu_bf16:
        raise EdgeDistillError("--precision bf16: this GPU has no bf16 (it needs compute capability 8.0 or newer); "
                               "use --precision fp16 or fp32")
    if asked == "bf16" and not cuda and not _cpu_has_native_bf16():
        raise EdgeDistillError("--precision bf16: this CPU has no native bf16 (no AVX512-BF16 or AMX), where it runs "
                               "about 100x slower than fp32; use --precision fp32 or auto")
    if asked not in PRECISIONS:
        raise EdgeDistillError(f"--precision {asked!r}: choose auto, {', '.join(PRECISIONS)}")
    return asked, "asked for"


def check_launch(env=None) -> None:
    """Under a launcher (accelerate launch, torchrun), the processes it started must fit this machine: a GPU
    process per visible GPU at most, and GPU configs only where there are GPUs. One line, before any model loads."""
    env = os.environ if env is None else env
    local = int(env.get("LOCAL_WORLD_SIZE") or 0)
    if local <= 1 and int(env.get("WORLD_SIZE") or 1) <= 1:
        return
    use_cpu = str(env.get("ACCELERATE_USE_CPU", "")).lower() in ("1", "true", "yes")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus == 0 and not use_cpu and env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        raise EdgeDistillError("the accelerate config asks for FSDP but this machine has no GPU (accelerate runs FSDP "
                               "only across accelerators); on CPU run DDP: torchrun --nproc_per_node N -m edgedistill "
                               "distill ...")
    if gpus and local > gpus:
        raise EdgeDistillError(f"the launcher started {local} processes on this node but it has {gpus} GPU(s); set "
                               f"num_processes to at most {gpus} per node in the accelerate config")


def check_compatible(teacher, t_tok, student, s_tok, teacher_vocab: int | None = None) -> None:
    """One tokenizer for both, or distillation compares different tokens. The models' output rows may differ
    past the tokenizer (embeddings padded to a round size, as in Qwen2.5: 151,936 or 152,064 rows for one
    tokenizer): the logits are compared on the rows both have (`shared_rows`), which must cover the tokenizer."""
    # Without a teacher model or cache (cross-entropy alone) no logits are compared: only the tokenizers must agree.
    tv = teacher_vocab or (teacher.config.vocab_size if teacher is not None else None)
    sv = student.config.vocab_size
    if t_tok.get_vocab() != s_tok.get_vocab():
        raise EdgeDistillError(
            f"teacher and student tokenizers differ ({len(t_tok)} and {len(s_tok)} tokens, not the same ones): "
            "distillation needs one tokenizer; pass a student built from the teacher (edgedistill prune) or save "
            "the student with the teacher's tokenizer files"
        )
    short = [f"{who} has {rows} output rows" for who, rows in (("teacher", tv), ("student", sv))
             if rows is not None and rows < len(s_tok)]
    if short:
        raise EdgeDistillError(f"the tokenizer has {len(s_tok)} tokens but the {' and the '.join(short)}: the model "
                               "cannot produce every token; resize its embeddings to the tokenizer")


def kd_objective(model, ids, mask, labels, loss_cfg: LossSettings, *, teacher=None, topk=None, chunk: int = 0,
                 unwrapped=None):
    """One micro-batch's summed objective over its response tokens -> (total, the student's output). The teacher
    is a live model, a cached top-k pair ((B, T, k) log-probs, ids), or neither (cross-entropy alone). chunk > 0:
    the output heads are applied that many response positions at a time, so neither model's full-vocabulary
    logits exist (losses.chunked); `unwrapped` is the student module under its wrapper (DDP)."""
    from edgedistill.distill.losses import chunked

    if chunk > 0:
        view = topk
        if teacher is not None:
            with torch.no_grad():
                t_head, t_cap = chunked.head_of(teacher)
                t_hidden, _ = chunked.final_hidden(teacher, t_head, input_ids=ids, attention_mask=mask)
            view = (t_head, t_cap, t_hidden)  # the teacher's head is applied per chunk too
        s_head, s_cap = chunked.head_of(unwrapped if unwrapped is not None else model)
        hidden, out = chunked.final_hidden(model, s_head, input_ids=ids, attention_mask=mask)
        return chunked.chunked_objective(loss_cfg, per_token_objective, s_head, s_cap, hidden, view, labels,
                                         labels != IGNORE, chunk), out
    view = topk
    if teacher is not None:
        with torch.no_grad():
            view = teacher(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
    out = model(input_ids=ids, attention_mask=mask)
    per_token = per_token_objective(loss_cfg, out.logits, view, labels)  # (B, T), float32
    return masked_sum(per_token, labels != IGNORE), out


def _make_trainer_class():
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """The generic distillation step. A method with an objective of its own (safety.reapply's SafetyTrainer)
        subclasses it and overrides `objective`; normalisation, on-policy sampling and the token count stay here."""

        def __init__(self, *args, teacher, loss_cfg: LossSettings, cfg: TrainSettings, pad_id: int, eos_ids: list[int],
                     cache=None, **kw):
            super().__init__(*args, **kw)
            self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
            if self.teacher is not None and cfg.shard_teacher and self.is_fsdp_enabled:
                # sharded like the student, gathered layer by layer in its forward; frozen, so no optimizer state
                self.teacher = self.accelerator.prepare_model(self.teacher, evaluation_mode=True)
            self.cache = cache
            self.loss_cfg, self.cfg, self.pad_id, self.eos_ids = loss_cfg, cfg, pad_id, set(eos_ids)
            self.policy_loss_cfg = loss_cfg.replace(kd_weight=1.0)  # on the student's own samples: divergence alone
            self.model_accepts_loss_kwargs = True  # we use num_items_in_batch ourselves (see compute_loss)
            self.tokens_seen = 0
            self._policy_step, self._policy_on = -1, False

        def _load_optimizer_and_scheduler(self, checkpoint):
            """transformers maps a resumed optimizer to args.device when several processes train; on CPU that is
            "cpu:N", a location torch.load cannot restore to. Several CPU processes load it to "cpu" instead."""
            if (checkpoint is None or self.args.world_size == 1 or self.args.device.type != "cpu"
                    or self.is_fsdp_enabled):
                return super()._load_optimizer_and_scheduler(checkpoint)
            from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME

            folder = Path(checkpoint)
            if (folder / OPTIMIZER_NAME).is_file() and (folder / SCHEDULER_NAME).is_file():
                self.optimizer.load_state_dict(torch.load(folder / OPTIMIZER_NAME, map_location="cpu",
                                                          weights_only=True))
                self.lr_scheduler.load_state_dict(torch.load(folder / SCHEDULER_NAME, weights_only=True))

        def _on_policy_now(self) -> bool:
            """Decided once per optimizer step, from a seeded RNG, identically on every process."""
            if self.cfg.on_policy <= 0:
                return False
            step = self.state.global_step
            if step != self._policy_step:
                self._policy_step = step
                self._policy_on = random.Random(f"{self.cfg.seed}-{step}").random() < self.cfg.on_policy
            return self._policy_on

        @torch.no_grad()
        def _student_samples(self, model, inputs):
            """Replace each response by the student's own sampled continuation of the prompt.

            The micro-batch's prompts are sampled together, left-padded (one generate call, not one per row).
            """
            unwrapped = self.accelerator.unwrap_model(model)
            was_training = unwrapped.training
            unwrapped.eval()
            prompts = []
            for ids, labels in zip(inputs["input_ids"], inputs["labels"]):
                resp = (labels != IGNORE).nonzero()
                start = int(resp[0]) + 1 if len(resp) else int((ids != self.pad_id).sum())
                prompts.append(ids[:start].tolist())
            device = unwrapped.device  # the model's, whatever device the batch came on
            left, mask = left_pad(prompts, self.pad_id, device)
            width = left.shape[1]
            room = max(1, min(self.cfg.on_policy_max_new_tokens, self.cfg.max_length - width))
            out = unwrapped.generate(left, attention_mask=mask, max_new_tokens=room, do_sample=True,
                                     temperature=self.cfg.on_policy_temperature, top_k=0, top_p=1.0,
                                     pad_token_id=self.pad_id, eos_token_id=list(self.eos_ids))
            examples = []
            for row, p in enumerate(prompts):
                new = out[row, width:].tolist()
                stop = next((n for n, t in enumerate(new) if t in self.eos_ids), None)
                if stop is not None:
                    new = new[: stop + 1]
                full = p + new
                lab = [IGNORE] * len(full)
                for t in range(len(p) - 1, len(full) - 1):
                    lab[t] = full[t + 1]
                examples.append({"input_ids": full, "labels": lab})
            if was_training:
                unwrapped.train()
            batch = collate(examples, self.pad_id)
            return {k: v.to(device) for k, v in batch.items()}

        def objective(self, model, inputs, on_policy: bool):
            """Summed loss over the micro-batch's response tokens -> (total, student outputs). The registered
            divergence against the teacher (live, or its top-k from the cache) mixed with cross-entropy by kd_weight;
            on the student's own samples the divergence alone (their labels are the student's guesses)."""
            ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
            loss_cfg = self.policy_loss_cfg if on_policy else self.loss_cfg
            topk = teacher = None
            if loss_cfg.kd_weight == 0:
                pass  # cross-entropy only: the teacher's logits are not needed
            elif self.cache is not None and not on_policy:
                lp, tid = self.cache.teacher_for(inputs["cache_index"].tolist(), labels.cpu())
                topk = (lp.to(ids.device), tid.to(ids.device))  # top-k (B, T, k) from the cache
            else:
                teacher = self.teacher
            return kd_objective(model, ids, mask, labels, loss_cfg, teacher=teacher, topk=topk,
                                chunk=self.cfg.kd_chunk if self.chunked else 0,
                                unwrapped=self.accelerator.unwrap_model(model))

        @property
        def chunked(self) -> bool:
            """Under FSDP the head's weight is resharded after forward: the full-logits path is used there."""
            return self.cfg.kd_chunk > 0 and not self.is_fsdp_enabled

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            on_policy = model.training and self._on_policy_now()
            if on_policy:
                inputs = self._student_samples(model, inputs)
            total, out = self.objective(model, inputs, on_policy)
            if on_policy or num_items_in_batch is None:
                n = (inputs["labels"] != IGNORE).sum().clamp(min=1)
                loss = total / n / (self.current_gradient_accumulation_steps if model.training else 1)
            else:
                loss = total / num_items_in_batch
                if self.args.average_tokens_across_devices:
                    # DDP averages gradients over processes; num_items_in_batch already counts every process.
                    loss = loss * self.accelerator.num_processes
            if model.training:
                self.tokens_seen += int(inputs["attention_mask"].sum())
            return (loss, out) if return_outputs else loss

    return DistillTrainer


def _callbacks(cfg: TrainSettings, metrics_path: Path, progress, trainer_ref: dict):
    from transformers import TrainerCallback

    class Budget(TrainerCallback):
        """Stop (with a checkpoint) once the wall-time budget is spent."""

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.monotonic()

        def on_step_end(self, args, state, control, **kw):
            if cfg.max_time is not None and time.monotonic() - self.t0 > cfg.max_time:
                log.info("time budget of %.0f s spent at step %d", cfg.max_time, state.global_step)
                control.should_training_stop = True
                control.should_save = True

    class Metrics(TrainerCallback):
        """metrics.jsonl in the run folder, and the progress bar (loss, tokens/s, ETA)."""

        def on_train_begin(self, args, state, control, **kw):
            self.t0, self.tok0 = time.monotonic(), trainer_ref["t"].tokens_seen
            self.task = progress.add_task("distilling", total=state.max_steps, completed=state.global_step,
                                          loss="-", tps=0.0) if progress else None

        def on_step_end(self, args, state, control, **kw):
            if progress:
                dt = time.monotonic() - self.t0
                tps = (trainer_ref["t"].tokens_seen - self.tok0) / dt if dt > 0 else 0.0
                progress.update(self.task, completed=state.global_step, tps=tps)

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs:
                return
            dt = time.monotonic() - self.t0
            rec = {"step": state.global_step, "time_s": round(dt, 2),
                   "tokens_per_s": round((trainer_ref["t"].tokens_seen - self.tok0) / dt, 1) if dt > 0 else None,
                   **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if progress and ("loss" in logs or "train_loss" in logs):  # the run's mean at the end
                progress.update(self.task, loss=f"{logs.get('loss', logs.get('train_loss')):.4f}")

    return [Budget(), Metrics()]


def train(teacher_pair, student_pair, train_examples: list[dict], run_dir: Path, loss_cfg: LossSettings,
          cfg: TrainSettings, *, resume: bool = False, progress=None, extra_callbacks=(), cache=None,
          trainer_factory=None, collator=None, inputs: dict | None = None):
    """Distill into the student; checkpoints in run_dir/checkpoints, metrics in run_dir/metrics.jsonl.
    With `cache` (a LogitCache for exactly these examples, in this order) the teacher model may be None; so may it
    for cross-entropy alone (kd_weight 0, no on-policy steps), where t_tok still has to match the student's
    tokenizer. `trainer_factory(cls)` returns a subclass of the DistillTrainer to use (a method with its own
    objective) and a dict of its extra arguments; `collator(examples, pad_id)` replaces `collate`.
    `inputs` (e.g. the teacher's and student's fingerprints) joins what a --resume must find unchanged (see
    _check_resume). Returns (trained student, trainer)."""
    from transformers import TrainingArguments, set_seed

    teacher, t_tok = teacher_pair
    student, s_tok = student_pair
    precision, _why = resolve_precision(cfg.precision)
    cfg = cfg.replace(precision=precision, kd_chunk=cfg.chunk)  # what this run trains with, auto resolved
    ce_alone = loss_cfg.kd_weight == 0 and cfg.on_policy == 0
    if teacher is None and cache is None and not ce_alone:
        raise EdgeDistillError("distillation needs a teacher model or a teacher-logit cache")
    if cache is not None and teacher is None and cfg.on_policy > 0:
        raise EdgeDistillError("on-policy steps need the live teacher to score the student's samples; drop "
                               "--on-policy or pass the teacher model as well as the cache")
    check_compatible(teacher, t_tok, student, s_tok, teacher_vocab=cache.meta["vocab_size"] if cache else None)
    if not train_examples:
        raise EdgeDistillError("no training examples")
    if cache is not None:
        if cache.meta["sequences"] != len(train_examples):
            raise EdgeDistillError(f"the cache holds {cache.meta['sequences']} sequences, training has "
                                   f"{len(train_examples)}; rebuild the cache")
        train_examples = [{**ex, "cache_index": n} for n, ex in enumerate(train_examples)]
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints"
    if ckpt.exists() and any(ckpt.glob("checkpoint-*")) and not resume:
        raise EdgeDistillError(f"{run_dir} already holds checkpoints; pass --resume to continue it or choose another --out")
    if resume and not any(ckpt.glob("checkpoint-*")):
        raise EdgeDistillError(f"--resume: no checkpoint in {ckpt}")
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_resume(run_dir, resume, {**(inputs or {}), **_run_inputs(train_examples, loss_cfg, cfg, cache)})
    (run_dir / "config.json").write_text(json.dumps({"loss": loss_cfg.to_dict(), "train": cfg.to_dict()}, indent=2) + "\n")
    set_seed(cfg.seed)
    pad = s_tok.pad_token_id if s_tok.pad_token_id is not None else s_tok.eos_token_id
    args = TrainingArguments(
        output_dir=str(ckpt),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup,
        lr_scheduler_type="cosine",
        max_steps=cfg.steps,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
        bf16=cfg.precision == "bf16",  # autocast; the student's weights and the optimizer stay float32
        fp16=cfg.precision == "fp16",
        gradient_checkpointing=bool(cfg.gradient_checkpointing),
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        **_fsdp_args(cfg, student),
    )
    if cfg.lora_rank:
        student = with_lora(student, cfg)
    trainer_ref: dict = {}
    cls, extra_kw = _make_trainer_class(), {}
    if trainer_factory is not None:
        cls, extra_kw = trainer_factory(cls, args.device)
    collate_fn = collator or collate
    from edgedistill.models.families import end_of_generation_ids

    trainer = cls(
        model=student,
        args=args,
        train_dataset=train_examples,
        data_collator=lambda batch: collate_fn(batch, pad),
        # the frozen teacher in the training precision (no master weights needed); divergences are float32
        teacher=teacher.to(args.device, dtype=DTYPES[cfg.precision]) if teacher is not None else None,
        cache=cache,
        loss_cfg=loss_cfg,
        cfg=cfg,
        pad_id=pad,
        eos_ids=end_of_generation_ids(student, s_tok),
        callbacks=_callbacks(cfg, run_dir / "metrics.jsonl", progress, trainer_ref) + list(extra_callbacks),
        **extra_kw,
    )
    trainer_ref["t"] = trainer
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our Metrics callback writes metrics.jsonl and the progress bar
    last = None
    if resume:
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(str(ckpt)) if ckpt.exists() else None
        if last is None:
            raise EdgeDistillError(f"--resume: no checkpoint in {ckpt}")
    trainer.train(resume_from_checkpoint=last)
    return trainer.accelerator.unwrap_model(trainer.model), trainer


def with_lora(student, cfg: TrainSettings):
    """The student wrapped in peft's LoRA adapters (rank cfg.lora_rank, scale cfg.lora_alpha / rank, no dropout) on
    every projection its family names (models.families: lora_targets); its own weights frozen."""
    from peft import LoraConfig, get_peft_model

    from edgedistill.models.families import family_of

    family = family_of(student.config, "LoRA")
    linear = {name.rsplit(".", 1)[-1] for name, m in student.named_modules() if isinstance(m, torch.nn.Linear)}
    targets = [t for t in family.lora_targets if t in linear]
    if not targets:
        raise EdgeDistillError(f"this {family.name} student has none of the projections LoRA adapts "
                               f"({', '.join(family.lora_targets)}); train it in full with --lora-rank 0")
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.resolved_lora_alpha, target_modules=targets,
                        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(student, config)


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _fsdp_args(cfg: TrainSettings, student) -> dict:
    """FSDP version 2, wrapped by decoder layer (the model's own no-split modules), when asked."""
    if not cfg.fsdp:
        return {}
    layers = list(getattr(student, "_no_split_modules", None) or [])
    config = {"version": 2, "reshard_after_forward": "full_shard" in cfg.fsdp.split()}
    if layers:
        config["transformer_layer_cls_to_wrap"] = layers
    return {"fsdp": cfg.fsdp, "fsdp_config": config}


# Budget fields may change on --resume (to train longer), and the precision's reason holds a measured speed ratio;
# everything else must be what the checkpoints were made with.
_BUDGET = ("steps", "max_time", "save_steps", "logging_steps")


def _run_inputs(examples: list[dict], loss_cfg: LossSettings, cfg: TrainSettings, cache) -> dict:
    return {"data": examples_fingerprint(examples), "loss": loss_cfg.to_dict(),
            "train": {k: v for k, v in cfg.to_dict().items() if k not in _BUDGET},
            "logit_cache": cache.meta["teacher_fingerprint"] + "/" + cache.meta["data_fingerprint"] if cache else None}


def _check_resume(run_dir: Path, resume: bool, inputs: dict) -> None:
    """A fresh run records its inputs in run_dir/inputs.json; --resume refuses to continue checkpoints made from
    other inputs (another teacher or student at the same path, other data, other settings), naming both values."""
    plain = json.loads(json.dumps(inputs, default=str))
    path = run_dir / "inputs.json"
    if not (resume and path.exists()):
        if os.environ.get("RANK", "0") == "0":  # under a launcher every process gets here; one writes
            write_text_atomic(path, json.dumps(plain, indent=2) + "\n")
        return
    old = read_json(path, "run inputs")
    old = old if isinstance(old, dict) else {}
    diff = [f"{k}: checkpoints {old.get(k)!r}, now {plain.get(k)!r}" for k in sorted(set(old) | set(plain))
            if old.get(k) != plain.get(k)]
    if diff:
        raise EdgeDistillError(f"--resume: {run_dir} was trained from other inputs ({'; '.join(diff)}); resume "
                               "with the same ones or choose another --out")


@torch.inference_mode()
def agreement_with_teacher(teacher, student, examples: list[dict], pad_id: int, batch_size: int = 8) -> dict:
    """Held-out mean forward KL(teacher || student) per response token and top-1 agreement. Each batch goes to
    the device of the model that reads it."""
    student.eval()
    kl_sum, agree, n = 0.0, 0, 0
    for i in range(0, len(examples), batch_size):
        b = collate(examples[i : i + batch_size], pad_id)
        ids, mask = b["input_ids"], b["attention_mask"]
        t = teacher(input_ids=ids.to(teacher.device), attention_mask=mask.to(teacher.device)).logits
        s = student(input_ids=ids.to(student.device), attention_mask=mask.to(student.device)).logits
        s, t = shared_rows(s, t)
        t, s = torch.log_softmax(t.float().cpu(), -1), torch.log_softmax(s.float().cpu(), -1)
        m = b["labels"] != IGNORE  # (B, T)
        kl = (t.exp() * (t - s)).sum(-1)  # (B, T)
        kl_sum += float(kl[m].sum())
        agree += int((t.argmax(-1) == s.argmax(-1))[m].sum())
        n += int(m.sum())
    if n == 0:
        raise EdgeDistillError("no response tokens to compare")
    return {"mean_kl": kl_sum / n, "top1_agreement": agree / n, "tokens": n}
