"""The distillation knobs, each declared once: the objective (LossSettings) and the training loop (TrainSettings).

`distill` is these two plus its inputs and output (DistillSettings, in distill.stage); `run` inherits them as they
are; the safety phase takes TrainSettings' declarations with its own measured defaults (safety.reapply); the loop
(distill.train) and the losses read these classes themselves, so there is no second config to keep in step. The
defaults are the measured recipe (docs/distill.md): forward KL + cross-entropy at kd weight 0.5, learning rate
5e-4, 4 sequences x 2 accumulation. No torch here: `--help` stays fast.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from edgedistill.errors import EdgeDistillError
from edgedistill.data.generate import DecodeSettings
from edgedistill.settings import Settings, like, setting

PRECISIONS = ("fp32", "bf16", "fp16")
# LoRA's rank for a pretrained student when --lora-rank is not given (benchmarks/lora_vs_full.py)
DEFAULT_LORA_RANK = 16


def _loss_names() -> tuple[str, ...]:
    from edgedistill.distill.losses import losses

    return tuple(losses())


@dataclass(frozen=True)
class LossSettings(Settings):
    """objective = kd_weight · τ² · divergence(student/τ, teacher/τ) + (1 - kd_weight) · cross-entropy(targets)."""

    loss: str = setting("forward_kl", "A registered divergence: forward_kl, reverse_kl, jsd, skew_kl, "
                                      "skew_reverse_kl, tvd.", choices=_loss_names)
    beta: float | None = setting(None, "JSD interpolation (jsd only).")
    alpha: float | None = setting(None, "Skew (skew_kl / skew_reverse_kl only).")
    kd_weight: float = setting(0.5, "Share of the divergence; the rest is cross-entropy on the teacher's tokens "
                                    "(0.5: the best of the measured objectives; 1: pure distillation).", min=0, max=1)
    loss_temperature: float = setting(1.0, "Softens both distributions inside the loss (not a sampling "
                                           "temperature).", min=0.05, max=20)

    @functools.cached_property
    def params(self) -> dict:
        """The divergence's parameters, its defaults filled in (checked once: the loss reads them at every chunk)."""
        from edgedistill.distill.losses import check_params, get

        return check_params(get(self.loss), {k: v for k, v in (("beta", self.beta), ("alpha", self.alpha))
                                             if v is not None})

    def extra_problems(self) -> list[str]:
        if self.loss not in _loss_names():
            return []  # reported by the field's own check
        try:
            self.params
        except EdgeDistillError as e:
            return [str(e)]
        return []


@dataclass(frozen=True)
class TrainSettings(Settings):
    """How long and how hard to train (transformers' Trainer underneath: one process, or DDP/FSDP under a launcher)."""

    steps: int = setting(200, "Optimizer steps.", min=1, aliases=("max_steps",))
    max_time: float | None = setting(None, "Stop (and save) after this long, e.g. 20m.", min=0, min_open=True,
                                     kind="duration", aliases=("max_time_s",))
    batch_size: int = setting(4, "Sequences processed together (in training: per micro-batch and process).", min=1,
                              max=1024)
    grad_accum: int = setting(2, "Micro-batches per optimizer step.", min=1)
    lr: float = setting(5e-4, "Peak learning rate (cosine schedule).", min=0, min_open=True, max=1)
    warmup_steps: int = setting(6, "Learning-rate warm-up steps (at most a quarter of --steps).", min=0)
    weight_decay: float = setting(0.0, "AdamW weight decay.", min=0, max=1)
    max_length: int = setting(512, "Tokens per sequence; longer ones are truncated (and counted).", min=8)
    seed: int = like(DecodeSettings, "seed")
    save_steps: int = setting(50, "Checkpoint every N steps (for --resume).", min=1, key=False)
    logging_steps: int = setting(5, "Write metrics every N steps.", min=1, cli=False, key=False)
    on_policy: float = setting(0.0, "λ: share of steps on the student's own samples (those use the divergence "
                                    "alone).", min=0, max=1)
    on_policy_max_new_tokens: int = setting(128, "Length of the student's samples on on-policy steps.", min=1)
    on_policy_temperature: float = setting(1.0, "Sampling temperature of the student's samples on on-policy steps.",
                                           min=0, min_open=True, max=5, cli=False)
    precision: str = setting("auto", "Training precision: auto (bf16 on a GPU that has it and on a CPU where a short "
                                     "probe measures bf16 matmuls at least 2x faster than fp32, e.g. AMX; else fp32), "
                                     "fp32, bf16, fp16 (GPU only). The teacher runs in it too; weights, optimizer "
                                     "state and divergences stay float32.",
                             choices=("auto", *PRECISIONS))
    gradient_checkpointing: bool | None = setting(None, "Recompute the student's activations in the backward pass "
                                                         "(less memory, more compute). Default: on for a LoRA student "
                                                         "(measured on the 0.5B Qwen student, 10 steps: peak RSS 9.7 -> "
                                                         "6.6 GB at 0.77x the tokens/s), off for full fine-tuning.")
    kd_chunk: int | None = setting(None, "Apply the output heads this many response positions of a micro-batch at a "
                                         "time, so full-vocabulary logits never exist whole (0: full logits; ignored "
                                         "under FSDP). Default: 256, or a micro-batch's positions if fewer.", min=0)
    fsdp: str = setting("", "FSDP options for a run under torchrun on GPUs, e.g. 'full_shard auto_wrap' (FSDP2, "
                            "wrapped by decoder layer); under `accelerate launch` its config file decides instead.")
    shard_teacher: bool = setting(False, "Under FSDP, shard the teacher as well (default: each process holds a whole "
                                         "copy).")
    attention: str | None = setting(None, "Attention implementation passed to transformers (e.g. sdpa, eager, "
                                          "flash_attention_2); default: transformers' choice.")
    lora_rank: int | None = setting(None, "Train LoRA adapters (peft) of this rank on every projection of the "
                                          "student's blocks instead of all its weights; 0: full fine-tuning. Default: "
                                          f"{DEFAULT_LORA_RANK} for a pretrained student (measured on the 0.5B Qwen "
                                          "student: 1.4x the tokens/s, 35% less memory, and closer to the teacher "
                                          "than full fine-tuning after the same steps), full fine-tuning for one cut "
                                          "by `prune` (its weights moved when it was cut). The adapter is merged for "
                                          "export and also kept alone (OUT/student/adapter).", min=0, max=1024)
    lora_alpha: float | None = setting(None, "LoRA scale: the adapter's update is multiplied by alpha / rank "
                                             "[default: 2 x rank].", min=0, min_open=True)

    @property
    def chunk(self) -> int:
        """kd_chunk resolved: 256 positions, or a micro-batch's if fewer, unless given."""
        return min(256, self.batch_size * self.max_length) if self.kd_chunk is None else self.kd_chunk

    @property
    def resolved_lora_alpha(self) -> float | None:
        """lora_alpha, else 2 x lora_rank (None without LoRA)."""
        if self.lora_alpha is not None:
            return self.lora_alpha
        return 2.0 * self.lora_rank if self.lora_rank else None

    def for_student(self, pruned: bool) -> TrainSettings:
        """These settings resolved for a student: the LoRA rank given, else full fine-tuning (0) for a student cut by
        `prune` and DEFAULT_LORA_RANK for a pretrained one; alpha as resolved_lora_alpha; gradient checkpointing as
        given, else on with LoRA."""
        ranked = self.replace(lora_rank=self.lora_rank if self.lora_rank is not None else
                              (0 if pruned else DEFAULT_LORA_RANK))
        gc = self.gradient_checkpointing if self.gradient_checkpointing is not None else ranked.lora_rank > 0
        return ranked.replace(lora_alpha=ranked.resolved_lora_alpha, gradient_checkpointing=gc)

    @property
    def warmup(self) -> int:
        """warmup_steps, at most a quarter of the steps (a short run still reaches its peak learning rate)."""
        return min(self.warmup_steps, self.steps // 4)

    def extra_problems(self) -> list[str]:
        problems = []
        if self.kd_chunk is not None and self.kd_chunk > self.batch_size * self.max_length:
            problems.append(f"--kd-chunk {self.kd_chunk} exceeds a micro-batch's {self.batch_size} x {self.max_length} "
                            "positions (--batch-size x --max-length); choose at most that (the last chunk may be "
                            "shorter, so it need not divide it)")
        if self.fsdp:
            import torch

            if not torch.cuda.is_available():
                problems.append("--fsdp needs GPUs: accelerate runs FSDP only across accelerators, and on CPU processes "
                                "it would fall back to DDP silently; drop --fsdp (torchrun then runs DDP)")
        return problems
