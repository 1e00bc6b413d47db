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
    student: str | None = setting(None, "A student of another tokenizer (registry name or Hugging Face folder): the "
                                        "teacher's top-k are projected onto its vocabulary (cross-tokenizer "
                                        "distillation) and the cache is made over its encoding of the data.",
                                  kind="io")


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
    s_tok = load_tokenizer(s.student) if s.student else None

    def projected(teacher_id: str, fingerprint: str, k: int, *, teacher_bytes=None, scored=None, **build) -> dict:
        """The cache over the student's encoding, from the teacher's pieces projected onto its tokenizer."""
        from edgedistill.distill import cross_tokenizer as xt
        from edgedistill.distill.pairing import tokenizer_fingerprint

        data = encode(s_tok, records, s.max_length)
        rows, stats = xt.rows(records, data, k, xt.StudentPieces(s_tok), teacher_bytes=teacher_bytes, scored=scored)
        info = {"student": s.student, "student_tokenizer": tokenizer_fingerprint(s_tok), **stats.summary()}
        if not stats.aligned:
            why = info.get("first_unaligned", "the records hold no log-probabilities")
            raise EdgeDistillError(f"no student position could take the teacher's top-k ({why}): distill on the "
                                   "text alone (run: --objective sequence)")
        return lc.build(rows, teacher_id, fingerprint, data, Path(s.out), k=k, vocab=len(s_tok), progress=progress,
                        extra_files=extra, shard_tokens=s.shard_tokens, projection=info, **build)

    if s.teacher_engine == "openai":
        teacher_id, fingerprint, engine = identity(spec)
        if not s.tokenizer and not s.student:
            raise EdgeDistillError("cache-logits --teacher-engine openai needs --tokenizer MODEL (the one the records "
                                   "were aligned to) or --student MODEL (to project the server's strings onto)")
        made_by = {r.get("teacher_fingerprint") for r in records}
        if made_by != {fingerprint}:
            raise lc.StaleCacheError(f"the records were generated by {sorted({str(r.get('teacher')) for r in records})}, "
                                     f"not by {teacher_id!r}: cache-logits reads the served teacher's own records")
        ks = {(r.get("settings") or {}).get("logprobs") for r in records}
        if None in ks or len(ks) != 1:
            raise EdgeDistillError("the records hold no teacher log-probabilities: generate them with "
                                   "`edgedistill generate --teacher-engine openai --logprobs K`")
        k = min(s.k, ks.pop())
        engine = {**engine, "url": s.teacher_url, "from": "records"}
        if s.student and not any(r.get("teacher_topk") for r in records):  # the server's strings
            return projected(teacher_id, fingerprint, k, engine=engine)
        tok = s_tok or load_tokenizer(s.tokenizer)
        data = encode(tok, records, s.max_length)
        rows, filled = lc.rows_from_records(records, data, k, len(tok))
        return lc.build(rows, teacher_id, fingerprint, data, Path(s.out), k=k, vocab=len(tok), engine=engine,
                        filled=filled, progress=progress, extra_files=extra, shard_tokens=s.shard_tokens)
    e = open_engine(spec)
    try:
        t_data = encode(e.tokenizer, records, s.max_length)
        vocab = getattr(e, "n_vocab", None) or e.model.config.vocab_size
        scored = e.score(t_data.examples, s.k, batch_size=s.batch_size)
        engine = {"engine": e.name, **e.settings}
        from edgedistill.distill.pairing import same_tokenizer

        if s_tok is not None and not same_tokenizer(s_tok, e.tokenizer):
            from edgedistill.distill import cross_tokenizer as xt
            from edgedistill.engines.served import token_bytes

            return projected(e.teacher_id, e.fingerprint, s.k, engine=engine,
                             scored=xt.scored_text(t_data, scored, token_bytes(e.tokenizer)))
        return lc.build(scored, e.teacher_id, e.fingerprint, t_data, Path(s.out), k=s.k, vocab=vocab, engine=engine,
                        progress=progress, extra_files=extra, shard_tokens=s.shard_tokens)
    finally:
        e.close()


# --------------------------------------------------------------------------------------------------- distill


@dataclass(frozen=True)
class DistillSettings(TrainSettings, LossSettings):
    """The objective and the loop (distill.settings, shared with `run`), plus what this stage reads and writes."""

    teacher: str | None = setting(None, "The teacher: registry name, Hugging Face folder or .gguf [default: the one "
                                        "that wrote --generations (a served teacher's records need no local model); "
                                        "records that name none, such as logged conversations: none, the student "
                                        "learns their text; a teacher named here adds its log-probabilities].")
    student: str = setting(None, "Student: a registry name or Hugging Face folder of any supported family (another "
                                 "tokenizer: sequence-level distillation), or one cut from the teacher by `edgedistill "
                                 "prune`.", required=True)
    generations: list[Path] = setting([], "Teacher generations (JSONL from `edgedistill generate`, or logged "
                                          "conversations with assistant turns); repeatable.",
                                      required=True, exists="file", aliases=("data",))
    validation: list[Path] = setting([], "Held-out generations: the student before and after is measured against "
                                         "them (one tokenizer: mean KL and top-1 agreement; another: chrF to the "
                                         "teacher's answers, and the teacher's NLL per byte of the student's when "
                                         "the teacher is local); repeatable.", exists="file")
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


def _writer(records: list[dict]) -> dict | None:
    """The one teacher that wrote `records` ({teacher, fingerprint, served}), None when they name none (written by
    hand, or logged conversations); several: refused, naming them."""
    named = {(str(r.get("teacher")), r["teacher_fingerprint"], (r.get("settings") or {}).get("engine") == "openai")
             for r in records if r.get("teacher_fingerprint")}
    if len(named) > 1:
        raise EdgeDistillError("the generations were written by several teachers ("
                               + ", ".join(sorted(f"{t!r} (fingerprint {f})" for t, f, _ in named))
                               + "); distill from one teacher's data at a time")
    if not named:
        return None
    t, f, served = named.pop()
    return {"teacher": t, "fingerprint": f, "served": served}


def _max_new_tokens(records: list[dict]) -> int:
    """The answer length the teacher's records were written with (the student's answers get as many tokens)."""
    from edgedistill.data.generate import DecodeSettings

    got = [(r.get("settings") or {}).get("max_new_tokens") for r in records]
    return max([g for g in got if isinstance(g, int)], default=DecodeSettings().max_new_tokens)


def text_validation(student, s_tok, records: list[dict], teacher=None, scorer=None) -> dict:
    """chrF of the student's greedy answers to the held-out prompts against the teacher's answers in `records`, and
    the teacher's NLL per byte of the student's answers: a local `teacher` (model, tokenizer) scores them, or a
    served one through `scorer` (engines.served.TextScorer); with intervals."""
    from edgedistill.data.text_fidelity import compare, greedy_answers, teacher_nll

    prompts = [(r["id"], r["messages"]) for r in records]
    answers = greedy_answers(student, s_tok, prompts, _max_new_tokens(records))
    nll = None
    if teacher is not None and teacher[0] is not None:
        nll = teacher_nll(teacher[0], teacher[1], [(i, m, answers[i]) for i, m in prompts])
    elif scorer is not None:
        nll = scorer([(i, m, answers[i]) for i, m in prompts])
    return compare({r["id"]: r["response"] for r in records}, answers, nll=nll)


def validation_line(v: dict | None) -> str:
    """The held-out fidelity before -> after distillation in words (what distill and run print)."""
    if not v:
        return "no held-out data"
    b = v.get("before") or {}
    if "mean_kl" in v:
        was = f"{b['mean_kl']:.3f} -> " if "mean_kl" in b else ""
        was1 = f"{100 * b['top1_agreement']:.1f}% -> " if "top1_agreement" in b else ""
        return f"held-out KL {was}{v['mean_kl']:.3f}, top-1 {was1}{100 * v['top1_agreement']:.1f}%"

    def fig(name: str, unit: str) -> str:
        now, (lo, hi) = v[name]["value"], v[name]["ci"]
        was = f"{b[name]['value']:.2f} -> " if name in b else ""
        return f"{unit} {was}{now:.2f} [{lo:.2f}, {hi:.2f}]"

    shown = [fig(n, u) for n, u in (("chrf", "chrF"), ("teacher_nll_per_byte", "teacher NLL/byte")) if n in v]
    return f"held-out ({v['prompts']} prompts): " + ", ".join(shown)


def pruned_student(student: str) -> bool:
    """Whether `student` is a folder `prune` wrote (pruning.json): it trains in full unless --lora-rank says
    otherwise; a pretrained student gets LoRA."""
    from edgedistill.models.locate import resolve

    return (Path(resolve(student, pull=True).location) / "pruning.json").is_file()


def save_adapter(model, folder: Path, *, base: str) -> None:
    """peft's adapter files (adapter_config.json, adapter_model.safetensors), naming the base model as the user did
    (a registry name, or the folder given) rather than where transformers loaded it from."""
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)  # peft's model card names the folder the base was loaded from
    config = folder / "adapter_config.json"
    data = json.loads(config.read_text())
    data["base_model_name_or_path"] = base
    config.write_text(json.dumps(data, indent=2) + "\n")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    from edgedistill.runinfo import peak_rss_bytes

    return round(peak_rss_bytes() / 2**20, 1)


def distill(s: DistillSettings, *, teacher=None, resume: bool = False, progress=None, echo=None,
            scorer=None) -> dict:
    """Train the student to imitate the teacher on its generations; the student goes to OUT/student (atomically)
    with distill.json (pairing, steps, parameters, the held-out fidelity before and after) and settings.yaml;
    checkpoints and metrics.jsonl stay in OUT. The pairing (distill.pairing) is decided before any model loads: one
    tokenizer -> logit distillation (teacher live or cached); another tokenizer, or a served teacher without a
    cache -> sequence-level (cross-entropy on the teacher's text). `teacher`: an already loaded (model, tokenizer)
    of s.teacher; `scorer`: a served teacher's likelihood of the student's held-out answers (TextScorer). Returns
    distill.json's content and `student`, the folder written."""
    from edgedistill.distill import logit_cache as lc
    from edgedistill.distill.dataset import encode, load_generations
    from edgedistill.distill.pairing import Pairing, decide, tokenizer_fingerprint
    from edgedistill.distill.train import agreement_with_teacher, check_launch, resolve_precision, train
    from edgedistill.distill.train import trainable_parameters
    from edgedistill.models.fingerprint import spec_fingerprint
    from edgedistill.models.locate import load_model, load_tokenizer, save_tokenizer
    from edgedistill.paths import atomic_dir, check_writable_dir

    check_launch()  # under a launcher: its processes fit this machine
    say = echo or log.info
    out = Path(s.out)
    final = out / "student"
    if final.exists():
        raise EdgeDistillError(f"{final} already exists: this run is finished; choose another --out")
    check_writable_dir(out, "--out")  # before the models load
    if resume and not any((out / "checkpoints").glob("checkpoint-*")):
        raise EdgeDistillError(f"--resume: no checkpoint in {out / 'checkpoints'}; start the run without --resume")
    precision, why = resolve_precision(s.precision)  # an explicit choice this machine cannot run: refused now
    records = load_generations(s.generations, allow_empty=s.allow_empty, turns=s.turns)
    val_records = load_generations(s.validation, allow_empty=s.allow_empty, turns=s.turns) if s.validation else []
    meta = lc.describe(s.logit_cache) if s.logit_cache is not None else None
    writer = _writer(records) or _writer(val_records)  # logged conversations name no teacher; its answers do
    # the teacher: the served one whose cache or records these are, or a local model
    served = meta is not None and lc.served(meta) or (s.teacher is None and writer is not None and writer["served"])
    if served:
        teacher_fp = meta["teacher_fingerprint"] if meta is not None else writer["fingerprint"]
        if meta is not None and {r.get("teacher_fingerprint") for r in records} != {teacher_fp}:
            raise lc.StaleCacheError(f"{s.logit_cache} was made from {meta['teacher']!r}'s records, and "
                                     "--generations holds other teachers' answers; pass the records the cache was "
                                     "made from")
        s = s.replace(teacher=str(meta["teacher"] if meta is not None else writer["teacher"]))
        if s.on_policy:
            raise EdgeDistillError(f"{s.teacher} is a served teacher: on-policy steps need a local teacher to score the "
                                   "student's samples; drop --on-policy")
    elif writer is None and s.teacher is None and meta is None:
        teacher_fp = None  # records no teacher wrote (logged conversations), no teacher named: their text alone
        if s.on_policy:
            raise EdgeDistillError("on-policy steps need a teacher to score the student's samples, and these records "
                                   "name none: pass --teacher NAME")
    else:
        s = s.replace(teacher=s.teacher or (writer["teacher"] if writer else meta["teacher"]))
        teacher_fp = spec_fingerprint(s.teacher)
        _same_teacher(s.teacher, teacher_fp, records, "--generations")  # before any model loads
    if teacher_fp is not None:
        _same_teacher(s.teacher, teacher_fp, val_records, "--validation")
    s = s.for_student(pruned_student(s.student))  # LoRA (and checkpointing) for a pretrained student, full fine-tuning for a pruned one
    s_tok = load_tokenizer(s.student)
    no_teacher = s.teacher is None
    t_tok = None if served or no_teacher else (teacher[1] if teacher is not None else load_tokenizer(s.teacher))
    projected = meta.get("projection") if meta is not None else None
    if projected is not None and projected.get("student_tokenizer") != tokenizer_fingerprint(s_tok):
        raise lc.StaleCacheError(f"{s.logit_cache} holds the teacher's top-k projected onto {projected.get('student')}'s "
                                 f"tokenizer, not {s.student}'s: make it with `cache-logits --student {s.student}`")
    if no_teacher:
        pairing = Pairing("sequence", "the records name no teacher and none was given: the student learns their "
                                      "text; --teacher NAME adds that model's log-probabilities")
    else:
        pairing = decide(s_tok, t_tok, teacher=s.teacher, student=s.student, served=served,
                         cached=meta is not None, projected=projected)
        if writer is None and pairing.kd:  # logged text, another model's probabilities: said, never silent
            pairing = Pairing(pairing.kind, f"{pairing.why}; two models: the text is the records' own (they name no "
                                            f"teacher), the log-probabilities {s.teacher}'s")
    if not pairing.logits:
        if meta is not None and not pairing.kd:
            raise EdgeDistillError(f"{s.logit_cache} holds {s.teacher}'s log-probabilities over its own tokenizer, "
                                   f"which {s.student} does not share: drop --logit-cache (the student learns the "
                                   "teacher's text)")
        if s.on_policy:
            raise EdgeDistillError("on-policy steps compare the two models' next-token distributions, which needs one "
                                   "tokenizer: drop --on-policy")
    # what a logit cache was built on (the teacher's tokenizer, which is the student's), else the student's
    train_set = encode(t_tok if pairing.logits and t_tok is not None else s_tok, records, s.max_length)
    cache = lc.load(s.logit_cache, train_set, teacher_fp) if meta is not None else None  # checked before models load
    say(pairing.line())
    if not pairing.kd and s.kd_weight:
        say(f"kd-weight {s.kd_weight} set to 0: no logits to compare, the objective is cross-entropy on the "
            "teacher's text")
        s = s.replace(kd_weight=0.0)
    # logits, or the NLL of the student's text
    local_teacher = not served and not no_teacher and (pairing.logits or bool(val_records))
    if not local_teacher:
        t_pair = (None, s_tok)
    elif teacher is not None:
        t_pair = teacher
    elif pairing.logits and meta is not None and s.on_policy == 0 and not val_records:
        t_pair = (None, t_tok)  # the cache stands in for the teacher model
    else:
        t_pair = load_model(s.teacher, attn_implementation=s.attention)
    s_pair = load_model(s.student, attn_implementation=s.attention)
    inputs = {"teacher": teacher_fp, "student_init": spec_fingerprint(s.student)}
    say(f"precision {precision} ({why})")
    say(f"LoRA rank {s.lora_rank}, alpha {s.lora_alpha:g} on the {s.student} student's projections (its weights "
        "frozen; --lora-rank 0 trains them all)" if s.lora_rank else "full fine-tuning: every weight of the student "
        "trains")
    say(f"{len(train_set.examples)} training sequences, {train_set.response_tokens} response tokens"
        + (f", {train_set.truncated} truncated to {s.max_length} tokens" if train_set.truncated else ""))

    def validate(model) -> dict:
        if pairing.logits and t_pair[0] is not None:
            val = encode(t_pair[1], val_records, s.max_length)
            return agreement_with_teacher(t_pair[0], model, val.examples, t_pair[1].pad_token_id)
        return text_validation(model, s_pair[1], val_records, t_pair if local_teacher else None,
                               scorer if served else None)

    before = validate(s_pair[0]) if val_records else None
    t0 = time.perf_counter()
    model, trainer = train(t_pair if pairing.logits else (None, s_pair[1]), s_pair, train_set.examples, out, s, s,
                           resume=resume, progress=progress, cache=cache, inputs=inputs)
    report = {"teacher": s.teacher, "student_init": s.student, "pairing": {"kind": pairing.kind, "why": pairing.why},
              "steps": trainer.state.global_step,
              "train_s": round(time.perf_counter() - t0, 2), "train_tokens": int(trainer.tokens_seen),
              "logit_cache": str(s.logit_cache) if s.logit_cache else None,
              "train_sequences": len(train_set.examples), "truncated": train_set.truncated,
              # the student as it ships (an adapter's own weights are merged in, not added)
              "parameters": model.num_parameters() - (trainable_parameters(model) if s.lora_rank else 0),
              "trainable_parameters": trainable_parameters(model),
              "lora": {"rank": s.lora_rank, "alpha": s.lora_alpha} if s.lora_rank else None,
              "gradient_checkpointing": s.gradient_checkpointing, "peak_rss_mb": peak_rss_mb()}
    if val_records:
        report["validation"] = {**validate(model), "before": before}
    import torch.distributed as dist

    if dist.is_initialized():  # under torchrun / accelerate launch: only rank 0 writes; shut down cleanly
        rank0 = trainer.is_world_process_zero()
        dist.barrier()
        dist.destroy_process_group()
        if not rank0:
            return report
    report["precision"] = {"used": precision, "why": why}
    with atomic_dir(final) as tmp:
        if s.lora_rank:  # the adapter alone (one small file per task on a device), then merged for every format
            from edgedistill.quantize.gguf_lora import ADAPTER_DIR

            save_adapter(model, tmp / ADAPTER_DIR, base=s.student)
            model = model.merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(s_pair[1], tmp)
        (tmp / "distill.json").write_text(json.dumps(report, indent=2) + "\n")
        write_settings(s, tmp / "settings.yaml")
    write_settings(s, out / "settings.yaml")
    if not s.keep_checkpoints:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return {**report, "student": str(final)}
