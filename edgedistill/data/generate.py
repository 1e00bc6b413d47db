"""Teacher generations: the teacher answers each prompt (sequence-level KD data, step-by-step answers included).

Output is JSONL, one record per prompt, written batch by batch so that a rerun with the same settings skips
what is done. Every record carries the teacher's id and fingerprint and the generation settings; a rerun with
a different teacher or settings into the same file is refused rather than mixed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgedistill.data.load import DataError, Prompt
from edgedistill.paths import disk_full_named, folders_made, write_text_atomic
from edgedistill.settings import Settings, setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeSettings(Settings):
    """How the teacher writes: the decoding knobs of `generate`, declared once (GenerateSettings inherits them, `run`
    takes max_new_tokens). The sampling temperature here is not the distillation loss temperature."""

    max_new_tokens: int = setting(128, "Tokens per answer at most.", min=1, max=8192)
    sample: bool = setting(False, "Sample instead of greedy decoding (greedy: reproducible data).",
                           flag="--sample/--greedy")
    temperature: float = setting(0.7, "Sampling temperature (with --sample).", min=0, min_open=True, max=5)
    top_p: float = setting(0.95, "Nucleus sampling mass (with --sample).", min=0, min_open=True, max=1)
    seed: int = setting(0, "Seed of the randomness: sampling in generation, data order and on-policy steps in "
                           "training.")
    answer_batch: int = setting(8, "Prompts the engine answers together (torch and llama.cpp engines).", min=1,
                                max=1024, aliases=("batch_size",))

    def recorded(self) -> dict:
        """What goes into each record (sampling knobs only when sampling), under the names records have always
        carried (do_sample), so that files written before stay resumable."""
        d = {"max_new_tokens": self.max_new_tokens, "do_sample": self.sample}
        if self.sample:
            d.update(temperature=self.temperature, top_p=self.top_p, seed=self.seed)
        return d


@dataclass
class GenerateReport:
    out: str
    written: int = 0
    already_done: int = 0
    skipped_too_long: int = 0
    hit_max_tokens: int = 0
    text_only: int = 0  # with logprobs: answers kept without the teacher's top-k (tokens not their text's encoding)
    empty: int = 0  # answers that are empty or only whitespace (kept in the file; distill refuses them by default)
    calls: dict | None = None  # a served teacher: requests answered, prompt and completion tokens (what is paid)

    def line(self) -> str:
        """What was written, in words (what generate and run print)."""
        calls = self.calls or {}
        return (f"{self.out}: wrote {self.written} new responses, {self.already_done} were already there"
                + (f", {self.skipped_too_long} prompts longer than the context skipped" if self.skipped_too_long else "")
                + (f", {self.hit_max_tokens} cut at --max-new-tokens" if self.hit_max_tokens else "")
                + (f", {self.empty} empty (distill refuses them unless --allow-empty)" if self.empty else "")
                + (f", {self.text_only} kept without log-probabilities (their tokens are not their text's encoding)"
                   if self.text_only else "")
                + (f"; the server answered {calls['requests']} requests: {calls['prompt_tokens']} prompt and "
                   f"{calls['completion_tokens']} completion tokens" if calls else "")
                + (f"; {calls['rate_limited']} rate limits (429/503) waited out and retried"
                   if calls.get("rate_limited") else "")
                + (f"; {calls['malformed']} malformed responses asked again" if calls.get("malformed") else "")
                + (f"; {calls['timeouts']} requests timed out and were asked again with fewer at once"
                   if calls.get("timeouts") else ""))


def chat_batches(model, tokenizer, conversations: Sequence[Sequence[dict]], settings: DecodeSettings,
                 max_prompt_tokens: int | None = None) -> Iterator[tuple[int, str | None, int, str]]:
    """Answer each conversation with `model`. Yields (index, text, new_tokens, finish_reason) as batches finish;
    text is None (finish_reason "prompt_too_long") for prompts longer than max_prompt_tokens."""
    from edgedistill.engines.local import answers

    for a in answers(model, tokenizer, conversations, settings, max_prompt_tokens=max_prompt_tokens):
        yield a.index, a.text, a.n_tokens, a.finish




def _existing(out: Path, teacher_id: str, fingerprint: str, settings: dict) -> tuple[set[str], set[str]]:
    """Ids already answered in `out`, and the model ids a server reported for them. A torn last line (killed
    mid-write) is dropped; a file written by another teacher (by name or by fingerprint: another model at the same
    path) or with other settings is refused."""
    if not out.exists():
        return set(), set()
    done, keep, reported = set(), [], set()
    from edgedistill.checked import read_text

    lines = read_text(out, "--out file", DataError).splitlines(keepends=True)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) and not line.endswith("\n"):
                log.warning("%s: dropping a torn last line from an interrupted run", out)
                continue
            raise DataError(f"{out}:{n}: not valid JSON; fix or delete the file") from None
        if rec.get("teacher_fingerprint") != fingerprint:
            raise DataError(
                f"{out}:{n} was generated by teacher {rec.get('teacher')!r} with fingerprint "
                f"{rec.get('teacher_fingerprint')}, this teacher {teacher_id!r} has fingerprint {fingerprint} (another "
                "model at that path?): write to another --out or delete the file"
            )
        if rec.get("teacher") != teacher_id or rec.get("settings") != settings:
            raise DataError(
                f"{out} holds generations from teacher {rec.get('teacher')!r} with settings {rec.get('settings')}; "
                f"this run is {teacher_id!r} with {settings}: write to another --out or delete the file"
            )
        done.add(rec["id"])
        keep.append(line)
        if rec.get("teacher_reported_model"):
            reported.add(rec["teacher_reported_model"])
    if len(keep) != sum(1 for ln in lines if ln.strip()):
        write_text_atomic(out, "".join(keep))
    return done, reported


def generate(teacher: str, prompts: Sequence[Prompt], out: Path, settings: DecodeSettings | None = None, *,
             trust_remote_code: bool = False, progress=None, loaded=None, engine=None,
             logprobs: int = 0) -> GenerateReport:
    """Have the teacher answer every prompt not yet in `out`, appending one JSONL record per prompt. `engine`: an
    EngineSpec (default: the torch engine on `teacher`); `logprobs` > 0 also keeps, per generated token, the
    teacher's top-k log-probabilities (`teacher_tokens`, `teacher_topk`), what `cache-logits` reads for a
    served teacher."""
    from edgedistill.engines import EngineSpec, identity, open_engine

    settings = settings or DecodeSettings()
    spec = engine or EngineSpec("torch", teacher, trust_remote_code=trust_remote_code)
    out = Path(out)
    if not prompts:
        raise DataError("no prompts to generate for")
    teacher_id, fingerprint, engine_settings = identity(spec)
    recorded = {**settings.recorded(), **engine_settings, **({"logprobs": logprobs} if logprobs else {})}
    report = GenerateReport(str(out))
    done, reported = _existing(out, teacher_id, fingerprint, recorded)
    pending = [p for p in prompts if p.id not in done]
    report.already_done = len(prompts) - len(pending)
    if not pending:
        return report
    e = open_engine(spec, loaded=loaded)
    existed = out.exists()
    try:
        with folders_made(out.parent):  # a failure before the first answer leaves no new folder either
            try:
                _answer_all(e, pending, out, settings, logprobs, recorded, report, progress, reported)
            except BaseException:
                if not existed and out.exists() and out.stat().st_size == 0:  # and no empty file
                    out.unlink()
                raise
    finally:
        report.calls = dict(e.usage) if hasattr(e, "usage") else None
        e.close()
    return report


def stored(b: bytes):
    """A teacher's piece as records keep it (`teacher_text_topk`, JSON): its text when it is valid UTF-8, else its
    byte values (a piece that ends inside a character)."""
    try:
        return b.decode()
    except UnicodeDecodeError:
        return list(b)


def piece(p) -> bytes:
    """A piece as `stored` kept it, as bytes again."""
    return p.encode() if isinstance(p, str) else bytes(p)


def _kept_tokens(tokenizer, a) -> int | None:
    """How many of the answer's tokens (and their top-k rows) are the start of what training encodes: its text's
    tokens, and the stop token right after them. None when the text does not encode to the tokens generated."""
    ids = tokenizer(a.text, add_special_tokens=False).input_ids
    if a.tokens[: len(ids)] != ids:
        return None
    return len(ids) + (a.finish == "stop" and len(a.tokens) == len(ids) + 1)


def _one_model(out: Path, teacher_id: str, reported: set[str], now: str) -> None:
    """A served teacher's answers in one file come from one model: the id the server reports must not change under
    the name asked for (a vendor moving an alias to a new version between two runs)."""
    if reported and now not in reported:
        raise DataError(f"{out}: the server now reports model {now!r} behind --teacher-model {teacher_id}, and this "
                        f"file's answers came from {', '.join(sorted(reported))}: the model under that name changed; "
                        "answers of two models are never mixed: write to another --out, or delete the file to start "
                        "over")


def _answer_all(e, pending, out: Path, settings, logprobs, recorded, report, progress, reported=frozenset()) -> None:
    reported = set(reported)
    max_prompt = e.context - settings.max_new_tokens if e.context else None
    out.parent.mkdir(parents=True, exist_ok=True)
    task = progress.add_task(f"teacher answering {len(pending)} prompts", total=len(pending)) if progress else None
    # the file is an append log: a full disk stops it in one line naming it; what was written stays, and a rerun
    # continues from there (a torn last line is dropped)
    with disk_full_named(out), open(out, "a", encoding="utf-8") as f:
        for a in e.answer([p.messages for p in pending], settings, logprobs=logprobs, max_prompt_tokens=max_prompt):
            if progress:
                progress.advance(task)
            if a.text is None:
                report.skipped_too_long += 1
                continue
            p = pending[a.index]
            if a.model:
                _one_model(out, e.teacher_id, reported, a.model)
                reported.add(a.model)
            rec = {
                "id": p.id,
                "domain": p.domain,
                "category": p.category,
                "reasoning": p.reasoning,
                "messages": list(p.messages),
                "response": a.text,
                "response_tokens": a.n_tokens,
                "finish_reason": a.finish,
                "teacher": e.teacher_id,
                "teacher_fingerprint": e.fingerprint,
                "settings": recorded,
                **({"teacher_reported_model": a.model} if a.model else {}),
            }
            n = _kept_tokens(e.tokenizer, a) if logprobs and a.topk_ids is not None else None
            if n is not None:
                rec["teacher_tokens"] = a.tokens[:n]
                rec["teacher_topk"] = {"ids": a.topk_ids[:n],
                                       "logprobs": [[round(x, 4) for x in row] for row in a.topk_logprobs[:n]]}
            elif logprobs and a.topk_text is not None:  # a served teacher's own pieces (cross-tokenizer KD)
                pieces, top = a.topk_text
                rec["teacher_text_topk"] = {"tokens": [stored(b) for b in pieces],
                                            "top": [[[stored(b), round(lp, 4)] for b, lp in row] for row in top]}
            report.text_only += bool(logprobs) and n is None and "teacher_text_topk" not in rec
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            report.written += 1
            report.hit_max_tokens += a.finish == "length"
            report.empty += not a.text.strip()
