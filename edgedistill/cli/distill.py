"""edgedistill prune"""

from __future__ import annotations

from pathlib import Path

import click

from edgedistill.models.registry import DEFAULT_TEACHER


@click.command("prune")
@click.argument("teacher", default=DEFAULT_TEACHER)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="New student folder.")
@click.option("--layers", type=click.IntRange(1), default=None, help="Blocks to keep (the most important ones).")
@click.option("--hidden", type=click.IntRange(1), default=None, help="Hidden size.")
@click.option("--ffn", type=click.IntRange(1), default=None, help="FFN intermediate size.")
@click.option("--heads", type=click.IntRange(1), default=None, help="Query heads.")
@click.option("--kv-heads", type=click.IntRange(1), default=None, help="Key/value heads (groups).")
@click.option("--hw-friendly", is_flag=True,
              help="Largest width whose rows are multiples of 256 (real llama.cpp K-quants); explicit sizes win.")
@click.option("--calibration", type=click.Path(exists=True, path_type=Path), default=None,
              help="Text file or folder of .txt (default: every domain's texts/ in calibration_data/).")
@click.option("--max-tokens", type=click.IntRange(256), default=16384, show_default=True,
              help="Calibration tokens used to measure importance.")
def prune_cmd(teacher, out, layers, hidden, ffn, heads, kv_heads, hw_friendly, calibration, max_tokens):
    """Derive a smaller student from TEACHER by depth and width pruning, chosen by measured importance."""
    from edgedistill.cli.progress import byte_progress
    from edgedistill.data import default_data_dir, load_texts
    from edgedistill.distill.prune import StudentShape, derive_student, hardware_friendly, interleave_texts
    from edgedistill.models.locate import load_model

    if out.exists():  # before loading the teacher and reading the calibration data
        raise click.UsageError(f"{out} already exists; choose another --out or delete it")
    if calibration is None:
        texts = [t for d in sorted(default_data_dir().glob("*/texts")) for _, t in load_texts(d)]
    else:
        texts = [t for _, t in load_texts(calibration)]
    loaded = load_model(teacher)
    shape = StudentShape(layers, hidden, ffn, heads, kv_heads)
    if hw_friendly:
        hw = hardware_friendly(loaded[0], layers)
        shape = StudentShape(layers, hidden or hw.hidden, ffn or hw.ffn, heads or hw.heads, kv_heads or hw.kv_heads)
    with byte_progress() as progress:
        path = derive_student(teacher, shape, interleave_texts(texts), out, max_tokens=max_tokens, progress=progress,
                              loaded=loaded)
    import json

    rec = json.loads((path / "pruning.json").read_text())
    s = rec["shape"]
    click.echo(f"student in {path}: {rec['student_parameters'] / 1e6:.1f}M parameters "
               f"(teacher {rec['teacher_parameters'] / 1e6:.1f}M); layers {s['layers']}, hidden {s['hidden']}, "
               f"FFN {s['ffn']}, heads {s['heads']}/{s['kv_heads']} kv; kept blocks {rec['kept_layers']}")


def _duration(ctx, param, value):
    """'90s', '20m', '1.5h' or plain seconds -> seconds."""
    if value is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    v = value.strip().lower()
    try:
        return float(v[:-1]) * units[v[-1]] if v[-1] in units else float(v)
    except (ValueError, IndexError):
        raise click.BadParameter(f"{value!r} is not a duration like 90s, 20m or 1.5h") from None


def _layer_pair(ctx, param, value):
    if value is None:
        return None
    from edgedistill.distill.hint import parse_layers
    from edgedistill.errors import EdgeDistillError

    try:
        return parse_layers(value)
    except EdgeDistillError as e:
        raise click.BadParameter(str(e)) from None


@click.command("distill")
@click.option("--teacher", default=DEFAULT_TEACHER, show_default=True)
@click.option("--student", required=True, help="Student model (same tokenizer), e.g. from `edgedistill prune`.")
@click.option("--data", "data_files", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
              required=True, help="Teacher generations (JSONL from `edgedistill generate`); repeatable.")
@click.option("--validation", "val_files", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
              help="Held-out generations for the final mean KL / top-1 agreement report.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Run folder.")
@click.option("--loss", "loss_name", default="forward_kl", show_default=True,
              help="forward_kl, reverse_kl, jsd, skew_kl, skew_reverse_kl or tvd.")
@click.option("--beta", type=float, default=None, help="JSD interpolation (jsd only).")
@click.option("--alpha", type=float, default=None, help="Skew (skew_kl / skew_reverse_kl only).")
@click.option("--kd-weight", type=float, default=1.0, show_default=True,
              help="Share of the distillation loss; the rest is cross-entropy on the teacher's tokens.")
@click.option("--loss-temperature", type=float, default=1.0, show_default=True,
              help="Softens both distributions inside the loss (not a sampling temperature).")
@click.option("--on-policy", type=float, default=0.0, show_default=True, help="λ: share of steps on student samples (those use the divergence alone).")
@click.option("--max-steps", type=click.IntRange(1), default=200, show_default=True)
@click.option("--max-time", callback=_duration, default=None, help="Stop (and save) after this long, e.g. 20m.")
@click.option("--batch-size", type=click.IntRange(1), default=4, show_default=True)
@click.option("--grad-accum", type=click.IntRange(1), default=4, show_default=True)
@click.option("--lr", type=float, default=2e-4, show_default=True)
@click.option("--max-length", type=click.IntRange(8), default=512, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--save-steps", type=click.IntRange(1), default=50, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--logit-cache", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Train from the teacher's cached top-k log-probs (edgedistill cache-logits) instead of running it.")
@click.option("--safety-mix", is_flag=True,
              help="Add calibration_data/safety's train split: refusals for harmful requests, the teacher's answers "
                   "for their benign look-alikes (both by cross-entropy alone, so a --logit-cache of DATA still "
                   "serves).")
@click.option("--safety-mix-repeat", type=click.IntRange(1, 20), default=3, show_default=True,
              help="How many times each --safety-mix refusal is in the training data.")
@click.option("--safety-mix-benign-repeat", type=click.IntRange(1, 20), default=None,
              help="How many times each --safety-mix benign look-alike is in the training data "
                   "[default: --safety-mix-repeat].")
@click.option("--safety-phase-steps", type=click.IntRange(0), default=0, show_default=True,
              help="With --safety-mix: keep the safety records out of DATA and train this many steps on them alone "
                   "after distillation (same batch and learning rate); 0 mixes them into DATA.")
@click.option("--safety-phase-max-length", type=click.IntRange(8), default=128, show_default=True,
              help="Tokens per sequence in the safety phase (it teaches how answers start).")
@click.option("--safety-paired", is_flag=True,
              help="With --safety-phase-steps: feed each harmful train prompt beside its benign look-alike (every step "
                   "holds both sides of its pairs) instead of shuffling the safety records.")
@click.option("--safety-push-compliant", is_flag=True,
              help="With --safety-mix: the teacher also starts an answer to each harmful train prompt, and its refusal "
                   "record pushes that compliant start down (an unlikelihood term, as the look-alikes have).")
@click.option("--safety-avoid-weight", type=click.FloatRange(0), default=10.0, show_default=True,
              help="Weight of each --safety-mix record's unlikelihood term (the start it must not take), in response "
                   "tokens; 0 trains the mix by cross-entropy alone.")
@click.option("--safety-decision-weight", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Weight of the first 4 response tokens of each --safety-mix record (where greedy decoding decides "
                   "between refusing and answering) relative to the rest; 1 weighs all tokens alike.")
@click.option("--safety-refusal-weight", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Those first tokens weigh this many times more again on a refusal than on a look-alike's answer "
                   "(a class weight): above 1 moves the student towards refusing, below 1 away from it.")
@click.option("--safety-hint-weight", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Pull the student's hidden state on the --safety-mix prompts towards the teacher's (a linear map "
                   "fitted once; squared error per prompt token, counted like this many response tokens). Uses the "
                   "live teacher; 0 turns it off.")
@click.option("--safety-hint-decision-weight", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Also match the two states at each --safety-mix prompt's last token along the few directions that "
                   "separate harmful prompts from look-alikes in the teacher's state (squared error per record, "
                   "counted like this many response tokens). Uses the live teacher; 0 turns it off.")
@click.option("--safety-hint-layers", callback=_layer_pair, default=None, metavar="S:T",
              help="Student block S and teacher block T for the hints [default: each at 60% of its depth].")
def distill_cmd(teacher, student, data_files, val_files, out, loss_name, beta, alpha, kd_weight, loss_temperature,
                on_policy, max_steps, max_time, batch_size, grad_accum, lr, max_length, seed, save_steps, resume,
                logit_cache, safety_mix, safety_mix_repeat, safety_mix_benign_repeat, safety_phase_steps,
                safety_phase_max_length, safety_paired, safety_push_compliant, safety_avoid_weight,
                safety_decision_weight, safety_refusal_weight, safety_hint_weight, safety_hint_decision_weight,
                safety_hint_layers):
    """Train STUDENT to imitate TEACHER on teacher generations (sequence-level + logit distillation)."""
    import dataclasses
    import json

    from edgedistill.cli.progress import training_progress
    from edgedistill.distill.dataset import encode, load_generations
    from edgedistill.distill.losses import LossConfig
    from edgedistill.distill.train import TrainConfig, agreement_with_teacher, train
    from edgedistill.models.locate import load_model
    from edgedistill.paths import atomic_dir

    params = {k: v for k, v in (("beta", beta), ("alpha", alpha)) if v is not None}
    loss_cfg = LossConfig(loss_name, params, temperature=loss_temperature, kd_weight=kd_weight)
    cfg = TrainConfig(max_steps=max_steps, max_time_s=max_time, batch_size=batch_size, grad_accum=grad_accum,
                      learning_rate=lr, max_length=max_length, seed=seed, save_steps=save_steps, on_policy=on_policy,
                      avoid_weight=safety_avoid_weight, decision_weight=safety_decision_weight,
                      refusal_weight=safety_refusal_weight,
                      # the hint works on the safety records: in the phase when there is one, else in the mix
                      hint_weight=0.0 if safety_phase_steps else safety_hint_weight,
                      hint_decision_weight=0.0 if safety_phase_steps else safety_hint_decision_weight,
                      hint_layers=safety_hint_layers)
    if safety_phase_steps and not safety_mix:
        raise click.UsageError("--safety-phase-steps needs --safety-mix")
    if safety_paired and not safety_phase_steps:
        raise click.UsageError("--safety-paired needs --safety-phase-steps (and --safety-mix)")
    if safety_push_compliant and not safety_mix:
        raise click.UsageError("--safety-push-compliant needs --safety-mix")
    if safety_decision_weight != 1 and not safety_mix:
        raise click.UsageError("--safety-decision-weight needs --safety-mix")
    if safety_refusal_weight != 1 and not safety_mix:
        raise click.UsageError("--safety-refusal-weight needs --safety-mix")
    if (safety_hint_weight or safety_hint_decision_weight or safety_hint_layers) and not safety_mix:
        raise click.UsageError("--safety-hint-weight, --safety-hint-decision-weight and --safety-hint-layers need "
                               "--safety-mix")
    final = out / "student"
    if final.exists():
        raise click.UsageError(f"{final} already exists: this run is finished; choose another --out")
    cache = None
    if logit_cache is not None and on_policy == 0 and not val_files and not safety_mix:
        from edgedistill.models.locate import load_tokenizer

        t_pair = (None, load_tokenizer(teacher))  # the cache stands in for the teacher model
    else:
        t_pair = load_model(teacher)
    s_pair = load_model(student)
    if safety_hint_layers and t_pair[0] is not None:  # before any training, not when the phase starts
        from edgedistill.distill.hint import check_layers
        from edgedistill.errors import EdgeDistillError

        try:
            check_layers(safety_hint_layers, s_pair[0].config.num_hidden_layers, t_pair[0].config.num_hidden_layers)
        except EdgeDistillError as e:
            raise click.BadParameter(str(e), param_hint="--safety-hint-layers") from None
    records = load_generations(data_files)
    train_set = encode(t_pair[1], records, max_length)  # what a logit cache was built on
    if logit_cache is not None:
        from edgedistill.data.generate import model_fingerprint
        from edgedistill.distill import logit_cache as lc
        from edgedistill.models.locate import resolve

        ref = resolve(teacher, pull=True)
        cache = lc.load(logit_cache, train_set, model_fingerprint(ref.path) if ref.kind != "hub" else None)
    mix: list[dict] = []  # after the cache check: a stale cache fails before the teacher answers anything
    if safety_mix:
        from edgedistill.cli.progress import byte_progress
        from edgedistill.safety import build_mix, mix_counts

        out.mkdir(parents=True, exist_ok=True)
        with byte_progress() as p:
            mix = build_mix(teacher, t_pair, out, progress=p, repeat=safety_mix_repeat,
                            benign_repeat=safety_mix_benign_repeat, push_compliant=safety_push_compliant)
        benign_repeat = safety_mix_benign_repeat or safety_mix_repeat
        n = mix_counts(mix)
        click.echo(f"safety mix: {n['refusals']} refusals x{safety_mix_repeat}, {n['benign']} benign look-alikes "
                   f"x{benign_repeat} (teacher answers that refuse are left out)"
                   + (f"; {n['refusals_with_avoid']} refusals push down the teacher's compliant start"
                      if safety_push_compliant else ""), err=True)
    if mix and not safety_phase_steps:
        extra = encode(t_pair[1], mix, max_length)
        train_set = dataclasses.replace(train_set, examples=train_set.examples + extra.examples,
                                        truncated=train_set.truncated + extra.truncated,
                                        dropped=train_set.dropped + extra.dropped)
    click.echo(f"{len(train_set.examples)} training sequences, {train_set.response_tokens} response tokens"
               + (f", {train_set.truncated} truncated to {max_length} tokens" if train_set.truncated else ""), err=True)
    progress = training_progress()
    with progress:
        model, trainer = train(t_pair, s_pair, train_set.examples, out, loss_cfg, cfg, resume=resume,
                               progress=progress, cache=cache)
    steps = trainer.state.global_step
    if safety_phase_steps:
        from edgedistill.safety import safety_phase

        phase_dir = out / "safety-phase"
        phase_cfg = dataclasses.replace(cfg, max_steps=safety_phase_steps, max_time_s=None, on_policy=0.0,
                                        max_length=safety_phase_max_length, warmup_steps=min(cfg.warmup_steps, 4),
                                        hint_weight=safety_hint_weight,
                                        hint_decision_weight=safety_hint_decision_weight)
        click.echo(f"safety phase: {safety_phase_steps} steps on {len(mix)} safety records", err=True)
        progress = training_progress()
        with progress:
            model, trainer = safety_phase(t_pair, (model, s_pair[1]), mix, phase_dir, phase_cfg, progress=progress,
                                          resume=resume and (phase_dir / "checkpoints").exists(), paired=safety_paired)
    report = {"steps": steps, "logit_cache": str(logit_cache) if logit_cache else None,
              "safety_mix": {"repeat": safety_mix_repeat, "benign_repeat": safety_mix_benign_repeat or safety_mix_repeat,
                             "records": len(mix), "refusals_with_avoid": n["refusals_with_avoid"],
                             "avoid_weight": safety_avoid_weight, "decision_weight": safety_decision_weight,
                             "refusal_weight": safety_refusal_weight,
                             "phase_steps": trainer.state.global_step if safety_phase_steps else 0,
                             "phase_max_length": safety_phase_max_length if safety_phase_steps else None,
                             "paired": safety_paired, "hint_weight": safety_hint_weight,
                             "hint_decision_weight": safety_hint_decision_weight,
                             "hint_layers": [trainer.hint.student_layer, trainer.hint.teacher_layer]
                             if trainer.hint is not None else None}
              if safety_mix else False,
              "train_sequences": len(train_set.examples), "truncated": train_set.truncated,
              "parameters": model.num_parameters()}
    if val_files:
        val = encode(t_pair[1], load_generations(val_files), max_length)
        report["validation"] = agreement_with_teacher(t_pair[0], model, val.examples, t_pair[1].pad_token_id)
    import torch.distributed as dist

    if dist.is_initialized():  # under torchrun / accelerate launch: only rank 0 writes; shut down cleanly
        rank0 = trainer.is_world_process_zero()
        dist.barrier()
        dist.destroy_process_group()
        if not rank0:
            return
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        s_pair[1].save_pretrained(tmp)
        (tmp / "distill.json").write_text(json.dumps({"teacher": teacher, "student_init": student, **report,
                                                      "loss": loss_cfg.__dict__, "train": cfg.__dict__}, indent=2) + "\n")
    v = report.get("validation")
    click.echo(f"student in {final} after {report['steps']} steps"
               + (f"; held-out mean KL {v['mean_kl']:.4f}, top-1 agreement {100 * v['top1_agreement']:.1f}%" if v else ""))


@click.command("cache-logits")
@click.option("--teacher", default=DEFAULT_TEACHER, show_default=True)
@click.option("--data", "data_files", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
              required=True, help="Teacher generations (the same files, in the same order, as for distill).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="New cache folder.")
@click.option("--k", type=click.IntRange(1), default=64, show_default=True, help="Log-probs kept per token.")
@click.option("--max-length", type=click.IntRange(8), default=512, show_default=True, help="As for distill.")
@click.option("--batch-size", type=click.IntRange(1), default=4, show_default=True)
def cache_logits_cmd(teacher, data_files, out, k, max_length, batch_size):
    """Run the teacher once and store its top-k log-probabilities per response token for offline KD."""
    from edgedistill.cli.progress import byte_progress
    from edgedistill.data.generate import model_fingerprint
    from edgedistill.distill import logit_cache as lc
    from edgedistill.distill.dataset import encode, load_generations
    from edgedistill.models.locate import load_model, resolve

    ref = resolve(teacher, pull=True)
    model, tok = load_model(ref)
    data = encode(tok, load_generations(data_files), max_length)
    with byte_progress() as progress:
        meta = lc.build(model, ref.name or ref.spec, model_fingerprint(ref.path) if ref.kind != "hub" else ref.location,
                        data, out, k=k, batch_size=batch_size, pad_id=tok.pad_token_id, progress=progress)
    click.echo(f"{out}: {meta['tokens']} tokens of {meta['sequences']} sequences, {meta['bytes_per_token']:.0f} bytes/token "
               f"({meta['file_bytes'] / 1e6:.1f} MB); the top {k} hold {100 * meta['teacher_mass_in_top_k']:.1f}% of the "
               "teacher's probability mass on average")
