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

import contextlib
import dataclasses

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from edgedistill.distill.dataset import IGNORE, collate, left_pad
from edgedistill.distill.hint import (capturing, default_layers, fit_hint_map, hidden_after, last_prompt_index,
                                     prompt_mask)
from edgedistill.distill.losses import LossConfig, masked_sum, per_token_objective
from edgedistill.errors import EdgeDistillError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """How long and how hard to train. Flags override a YAML/JSON config, which overrides these defaults."""

    max_steps: int = 200  # optimizer steps
    max_time_s: float | None = None  # stop (and save) after this much wall time, whichever comes first
    batch_size: int = 4  # sequences per micro-batch, per process
    grad_accum: int = 4  # micro-batches per optimizer step
    learning_rate: float = 2e-4
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_length: int = 512  # tokens per sequence; longer ones are truncated (and counted)
    seed: int = 0
    save_steps: int = 50  # checkpoint every N steps (for resume)
    logging_steps: int = 5
    on_policy: float = 0.0  # λ: share of steps trained on the student's own samples
    on_policy_max_new_tokens: int = 128
    on_policy_temperature: float = 1.0  # sampling temperature of the student (not the loss temperature)
    avoid_weight: float = 10.0  # an example's unlikelihood term (see below) counts as this many response tokens
    # The first `decision_tokens` response tokens of a ce_only (safety) record weigh `decision_weight` times as much
    # as the rest: under greedy decoding they decide between refusing and answering. 1 leaves the loss unchanged.
    decision_weight: float = 1.0
    decision_tokens: int = 4
    # Those first tokens weigh refusal_weight times more again on a refusal (a harmful safety record) than on a
    # look-alike's answer: a class weight that moves where the student starts refusing; >1 towards refusing.
    refusal_weight: float = 1.0
    shuffle: bool = True  # False: batches follow the examples' order (safety_phase's harmful/look-alike pairs)
    # Hidden-state hint on the prompt tokens of ce_only (safety) records (distill.hint): the squared error per
    # prompt token, times hint_weight, counts like a response token's loss. hint_layers: (student, teacher) blocks;
    # None: each at distill.hint.DEPTH of its model. Needs the live teacher.
    hint_weight: float = 0.0
    hint_layers: tuple[int, int] | None = None
    # The decision hint (distill.hint.decision_basis): the same blocks and map, compared at each safety record's
    # last prompt token along the directions that separate the kinds of safety prompt in the teacher's state; the
    # mean squared error there, times this weight, counts like a response token's loss. Needs the live teacher.
    hint_decision_weight: float = 0.0

    @property
    def hinted(self) -> bool:
        """Either hint is on: the student-to-teacher map is fitted and the live teacher is needed."""
        return self.hint_weight > 0 or self.hint_decision_weight > 0

    def __post_init__(self) -> None:
        problems = []
        for name, lo in (("max_steps", 1), ("batch_size", 1), ("grad_accum", 1), ("max_length", 8), ("save_steps", 1),
                         ("logging_steps", 1), ("on_policy_max_new_tokens", 1), ("decision_tokens", 1)):
            if getattr(self, name) < lo:
                problems.append(f"{name}={getattr(self, name)} must be at least {lo}")
        if not 0 < self.learning_rate < 1:
            problems.append(f"learning_rate={self.learning_rate} must be in (0, 1)")
        if not 0 <= self.on_policy <= 1:
            problems.append(f"on_policy={self.on_policy} must be in [0, 1]")
        if self.max_time_s is not None and self.max_time_s <= 0:
            problems.append(f"max_time_s={self.max_time_s} must be positive")
        if self.avoid_weight < 0:
            problems.append(f"avoid_weight={self.avoid_weight} must not be negative")
        if self.decision_weight < 0:
            problems.append(f"decision_weight={self.decision_weight} must not be negative")
        if self.refusal_weight < 0:
            problems.append(f"refusal_weight={self.refusal_weight} must not be negative")
        if self.hint_weight < 0:
            problems.append(f"hint_weight={self.hint_weight} must not be negative")
        if self.hint_decision_weight < 0:
            problems.append(f"hint_decision_weight={self.hint_decision_weight} must not be negative")
        if not 0 < self.on_policy_temperature <= 5:
            problems.append(f"on_policy_temperature={self.on_policy_temperature} must be in (0, 5]")
        if problems:
            raise EdgeDistillError("; ".join(problems))


def check_compatible(teacher, t_tok, student, s_tok, teacher_vocab: int | None = None) -> None:
    """One tokenizer for both, or distillation compares different tokens."""
    # Without a teacher model or cache (cross-entropy alone) no logits are compared: only the tokenizers must agree.
    tv = teacher_vocab or (teacher.config.vocab_size if teacher is not None else None)
    sv = student.config.vocab_size
    if tv is not None and tv != sv:
        raise EdgeDistillError(
            f"teacher vocab {tv} != student vocab {sv}: distillation needs one tokenizer; pass a student built "
            "from the teacher (edgedistill prune) or one trained with the teacher's tokenizer"
        )
    if t_tok.get_vocab() != s_tok.get_vocab():
        raise EdgeDistillError(
            "teacher and student tokenizers have the same size but different tokens: distillation needs one "
            "tokenizer; save the student with the teacher's tokenizer files"
        )


def _make_trainer_class():
    from transformers import Trainer

    class DistillTrainer(Trainer):
        def __init__(self, *args, teacher, loss_cfg: LossConfig, cfg: TrainConfig, pad_id: int, eos_id: int,
                     cache=None, hint=None, **kw):
            super().__init__(*args, **kw)
            self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
            self.hint = hint  # a distill.hint.HintMap, or None
            self.cache = cache
            self.loss_cfg, self.cfg, self.pad_id, self.eos_id = loss_cfg, cfg, pad_id, eos_id
            self.model_accepts_loss_kwargs = True  # we use num_items_in_batch ourselves (see compute_loss)
            self.tokens_seen = 0
            self._policy_step, self._policy_on = -1, False

        def _get_train_sampler(self, *args, **kw):
            if self.cfg.shuffle:
                return super()._get_train_sampler(*args, **kw)
            from torch.utils.data import SequentialSampler

            return SequentialSampler(self.train_dataset)

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
            device = inputs["input_ids"].device
            left, mask = left_pad(prompts, self.pad_id, device)
            width = left.shape[1]
            room = max(1, min(self.cfg.on_policy_max_new_tokens, self.cfg.max_length - width))
            out = unwrapped.generate(left, attention_mask=mask, max_new_tokens=room, do_sample=True,
                                     temperature=self.cfg.on_policy_temperature, top_k=0, top_p=1.0,
                                     pad_token_id=self.pad_id, eos_token_id=self.eos_id)
            examples = []
            for row, p in enumerate(prompts):
                new = out[row, width:].tolist()
                if self.eos_id in new:
                    new = new[: new.index(self.eos_id) + 1]
                full = p + new
                lab = [IGNORE] * len(full)
                for t in range(len(p) - 1, len(full) - 1):
                    lab[t] = full[t + 1]
                examples.append({"input_ids": full, "labels": lab})
            if was_training:
                unwrapped.train()
            batch = collate(examples, self.pad_id)
            return {k: v.to(device) for k, v in batch.items()}

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            on_policy = model.training and self._on_policy_now()
            if on_policy:
                inputs = self._student_samples(model, inputs)
            ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
            # On the student's own samples the labels are its tokens, not the teacher's: a cross-entropy part
            # would reinforce the student's guesses, so those batches use the divergence alone.
            loss_cfg = dataclasses.replace(self.loss_cfg, kd_weight=1.0) if on_policy else self.loss_cfg
            ce_only = inputs.get("ce_only")
            safety_rows = ce_only is not None and not on_policy and bool(ce_only.any())
            hinted = self.hint is not None and safety_rows
            t_hidden = None  # the teacher's state for the hint, when its full pass below runs anyway
            if loss_cfg.kd_weight == 0:
                teacher_view = None  # cross-entropy only: the teacher's logits are not needed
            elif self.cache is not None and not on_policy:
                lp, tid = self.cache.teacher_for(inputs["cache_index"].tolist(), labels.cpu())
                teacher_view = (lp.to(ids.device), tid.to(ids.device))  # top-k (B, T, k) from the cache
            else:
                grab = capturing(self.teacher, self.hint.teacher_layer) if hinted else contextlib.nullcontext({})
                with torch.no_grad(), grab as t_captured:
                    teacher_view = self.teacher(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
                t_hidden = t_captured.get("h")
            if hinted:
                with capturing(self.accelerator.unwrap_model(model), self.hint.student_layer) as student_hidden:
                    out = model(input_ids=ids, attention_mask=mask)
            else:
                out = model(input_ids=ids, attention_mask=mask)
            per_token = per_token_objective(loss_cfg, out.logits, teacher_view, labels)  # (B, T), float32
            if safety_rows:
                ce = per_token_objective(dataclasses.replace(loss_cfg, kd_weight=0.0), out.logits, None, labels)
                per_token = torch.where(ce_only.to(per_token.device)[:, None], ce, per_token)
            resp = labels != IGNORE
            total = masked_sum(per_token, resp)
            if (self.cfg.decision_weight != 1 or self.cfg.refusal_weight != 1) and safety_rows:
                # A safety record's answer is decided by its first tokens (refusal or not): weigh them more, so the
                # gradient goes to telling the kinds of prompt apart rather than to the rest of the text; on a
                # refusal, refusal_weight times more again.
                first = resp.int().argmax(1, keepdim=True)
                pos = torch.arange(labels.shape[1], device=labels.device)[None, :]
                head = resp & (pos < first + self.cfg.decision_tokens) & ce_only.to(labels.device)[:, None]
                weight = torch.full((labels.shape[0],), self.cfg.decision_weight, device=per_token.device)
                refuse = inputs.get("refuse")
                if refuse is not None:
                    weight = torch.where(refuse.to(weight.device), weight * self.cfg.refusal_weight, weight)
                total = total + masked_sum(per_token * (weight - 1)[:, None], head)
            if hinted:
                if t_hidden is None:
                    t_hidden = hidden_after(self.teacher, self.hint.teacher_layer, ids, mask)
                rows = ce_only.to(labels.device)
                if self.cfg.hint_weight:
                    where = prompt_mask(labels, mask) & rows[:, None]
                    total = total + self.cfg.hint_weight * self.hint.loss(student_hidden["h"], t_hidden, where)
                if self.cfg.hint_decision_weight:
                    last = last_prompt_index(labels, mask)
                    total = total + self.cfg.hint_decision_weight * self.hint.decision_loss(
                        student_hidden["h"], t_hidden, rows, last)
            avoid = inputs.get("avoid")
            if avoid is not None and not on_policy:
                # Unlikelihood (Welleck et al. 2020) at the point where the response and the text it must not
                # become part ways: -log(1 - p(that token)). safety.mix_records uses it to keep benign look-alikes
                # from starting the refusal that their harmful twins are taught.
                rows = (avoid[:, 0] >= 0).nonzero().squeeze(1).to(ids.device)
                if len(rows):
                    pos, tok = avoid[rows, 0].to(ids.device), avoid[rows, 1].to(ids.device)
                    p = out.logits[rows, pos].float().softmax(-1).gather(1, tok[:, None]).squeeze(1)
                    total = total - self.cfg.avoid_weight * torch.log1p(-p.clamp(max=1 - 1e-6)).sum()
            if on_policy or num_items_in_batch is None:
                n = resp.sum().clamp(min=1)
                loss = total / n / (self.current_gradient_accumulation_steps if model.training else 1)
            else:
                loss = total / num_items_in_batch
                if self.args.average_tokens_across_devices:
                    # DDP averages gradients over processes; num_items_in_batch already counts every process.
                    loss = loss * self.accelerator.num_processes
            if model.training:
                self.tokens_seen += int(mask.sum())
            return (loss, out) if return_outputs else loss

    return DistillTrainer


def _callbacks(cfg: TrainConfig, metrics_path: Path, progress, trainer_ref: dict):
    from transformers import TrainerCallback

    class Budget(TrainerCallback):
        """Stop (with a checkpoint) once the wall-time budget is spent."""

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.monotonic()

        def on_step_end(self, args, state, control, **kw):
            if cfg.max_time_s is not None and time.monotonic() - self.t0 > cfg.max_time_s:
                log.info("time budget of %.0f s spent at step %d", cfg.max_time_s, state.global_step)
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


def train(teacher_pair, student_pair, train_examples: list[dict], run_dir: Path, loss_cfg: LossConfig,
          cfg: TrainConfig, *, resume: bool = False, progress=None, extra_callbacks=(), cache=None):
    """Distill into the student; checkpoints in run_dir/checkpoints, metrics in run_dir/metrics.jsonl.
    With `cache` (a LogitCache for exactly these examples, in this order, leaving out the ce_only ones, which
    never need the teacher) the teacher model may be None; so may it for cross-entropy alone (kd_weight 0, no
    on-policy steps), where t_tok still has to match the student's tokenizer.
    Returns (trained student, trainer)."""
    from transformers import TrainingArguments, set_seed

    teacher, t_tok = teacher_pair
    student, s_tok = student_pair
    ce_alone = loss_cfg.kd_weight == 0 and cfg.on_policy == 0
    if teacher is None and cache is None and not ce_alone:
        raise EdgeDistillError("distillation needs a teacher model or a teacher-logit cache")
    if cfg.hinted and teacher is None:
        raise EdgeDistillError("the hidden-state hint needs the live teacher model (a logit cache holds no hidden states)")
    if cache is not None and teacher is None and cfg.on_policy > 0:
        raise EdgeDistillError("on-policy steps need the live teacher to score the student's samples; drop "
                               "--on-policy or pass the teacher model as well as the cache")
    check_compatible(teacher, t_tok, student, s_tok, teacher_vocab=cache.meta["vocab_size"] if cache else None)
    if not train_examples:
        raise EdgeDistillError("no training examples")
    if cache is not None:
        covered = sum(1 for ex in train_examples if not ex.get("ce_only"))
        if cache.meta["sequences"] != covered:
            raise EdgeDistillError(f"the cache holds {cache.meta['sequences']} sequences, training has "
                                   f"{covered} that need the teacher; rebuild the cache")
        rows = iter(range(covered))
        train_examples = [{**ex, "cache_index": -1 if ex.get("ce_only") else next(rows)} for ex in train_examples]
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints"
    if ckpt.exists() and any(ckpt.glob("checkpoint-*")) and not resume:
        raise EdgeDistillError(f"{run_dir} already holds checkpoints; pass --resume to continue it or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({"loss": asdict(loss_cfg), "train": asdict(cfg)}, indent=2) + "\n")
    set_seed(cfg.seed)
    pad = s_tok.pad_token_id if s_tok.pad_token_id is not None else s_tok.eos_token_id
    hint = None
    if cfg.hinted:
        hinted = [ex for ex in train_examples if ex.get("ce_only")]
        if not hinted:
            raise EdgeDistillError("the hidden-state hint works on the safety records; there are none in this run")
        layers = cfg.hint_layers or default_layers(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
        hint = fit_hint_map(teacher, student, hinted, pad, tuple(layers), decision=cfg.hint_decision_weight > 0)
        log.info("hint: student block %d -> teacher block %d, fitted on %d prompts", *layers, len(hinted))
    args = TrainingArguments(
        output_dir=str(ckpt),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type="cosine",
        max_steps=cfg.max_steps,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=2,
        save_safetensors=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
    )
    trainer_ref: dict = {}
    cls = _make_trainer_class()
    trainer = cls(
        model=student,
        args=args,
        train_dataset=train_examples,
        data_collator=lambda batch: collate(batch, pad),
        teacher=teacher.to(args.device) if teacher is not None else None,
        cache=cache,
        hint=hint.to(args.device) if hint is not None else None,
        loss_cfg=loss_cfg,
        cfg=cfg,
        pad_id=pad,
        eos_id=s_tok.eos_token_id,
        callbacks=_callbacks(cfg, run_dir / "metrics.jsonl", progress, trainer_ref) + list(extra_callbacks),
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


@torch.inference_mode()
def agreement_with_teacher(teacher, student, examples: list[dict], pad_id: int, batch_size: int = 8) -> dict:
    """Held-out mean forward KL(teacher || student) per response token and top-1 agreement."""
    student.eval()
    kl_sum, agree, n = 0.0, 0, 0
    for i in range(0, len(examples), batch_size):
        b = collate(examples[i : i + batch_size], pad_id)
        t = torch.log_softmax(teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float(), -1)
        s = torch.log_softmax(student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float(), -1)
        m = b["labels"] != IGNORE  # (B, T)
        kl = (t.exp() * (t - s)).sum(-1)  # (B, T)
        kl_sum += float(kl[m].sum())
        agree += int((t.argmax(-1) == s.argmax(-1))[m].sum())
        n += int(m.sum())
    if n == 0:
        raise EdgeDistillError("no response tokens to compare")
    return {"mean_kl": kl_sum / n, "top1_agreement": agree / n, "tokens": n}
