"""Teacher generations: the teacher answers each prompt (sequence-level KD data, step-by-step answers included).

Output is JSONL, one record per prompt, written batch by batch so that a rerun with the same settings skips
what is done. Every record carries the teacher's id and fingerprint and the generation settings; a rerun with
a different teacher or settings into the same file is refused rather than mixed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from edgedistill.data.load import DataError, Prompt
from edgedistill.errors import EdgeDistillError
from edgedistill.paths import write_text_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    """How the teacher writes. Sampling temperature here is not the distillation loss temperature."""

    max_new_tokens: int = 256  # per response
    do_sample: bool = False  # greedy by default: reproducible data
    temperature: float = 0.7  # sampling only
    top_p: float = 0.95  # sampling only
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.max_new_tokens <= 8192:
            problems.append(f"max_new_tokens={self.max_new_tokens} must be in 1..8192")
        if not 0.0 < self.temperature <= 5.0:
            problems.append(f"temperature={self.temperature} must be in (0, 5]")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p={self.top_p} must be in (0, 1]")
        if not 1 <= self.batch_size <= 1024:
            problems.append(f"batch_size={self.batch_size} must be in 1..1024")
        if problems:
            raise EdgeDistillError("; ".join(problems))

    def recorded(self) -> dict:
        """What goes into each record (sampling knobs only when sampling)."""
        d = asdict(self)
        d.pop("batch_size")
        if not self.do_sample:
            for k in ("temperature", "top_p", "seed"):
                d.pop(k)
        return d


@dataclass
class GenerateReport:
    out: str
    written: int = 0
    already_done: int = 0
    skipped_too_long: int = 0
    hit_max_tokens: int = 0
    text_only: int = 0  # with logprobs: answers kept without the teacher's top-k (tokens not their text's encoding)


def chat_batches(model, tokenizer, conversations: Sequence[Sequence[dict]], settings: GenerationSettings,
                 max_prompt_tokens: int | None = None) -> Iterator[tuple[int, str | None, int, str]]:
    """Answer each conversation with `model`. Yields (index, text, new_tokens, finish_reason) as batches finish;
    text is None (finish_reason "prompt_too_long") for prompts longer than max_prompt_tokens."""
    from edgedistill.engines.local import answers

    for a in answers(model, tokenizer, conversations, settings, max_prompt_tokens=max_prompt_tokens):
        yield a.index, a.text, a.n_tokens, a.finish


def model_fingerprint(path: Path) -> str:
    """A cheap, stable id of a model directory or file: sha256 over its config and weight headers and sizes."""
    import hashlib

    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file() and p.suffix in
                                                 (".json", ".safetensors", ".gguf", ".onnx", ".jinja"))
    for f in files:
        h.update(f.name.encode())
        h.update(str(f.stat().st_size).encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))  # config files whole; weight files' headers and first tensors
    return h.hexdigest()[:16]


def spec_fingerprint(spec) -> str:
    """model_fingerprint of what a model spec (name, folder, .gguf, hub id or ModelRef) resolves to; a hub id is
    its own fingerprint."""
    from edgedistill.models.locate import ModelRef, resolve

    ref = spec if isinstance(spec, ModelRef) else resolve(spec, pull=True)
    return model_fingerprint(ref.path) if ref.kind != "hub" else ref.location


def _existing(out: Path, teacher_id: str, fingerprint: str, settings: dict) -> set[str]:
    """Ids already answered in `out`. A torn last line (killed mid-write) is dropped; a file written by another
    teacher (by name or by fingerprint: another model at the same path) or with other settings is refused."""
    if not out.exists():
        return set()
    done, keep = set(), []
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
    if len(keep) != sum(1 for ln in lines if ln.strip()):
        write_text_atomic(out, "".join(keep))
    return done


def generate(teacher: str, prompts: Sequence[Prompt], out: Path, settings: GenerationSettings | None = None, *,
             trust_remote_code: bool = False, progress=None, loaded=None, engine=None,
             logprobs: int = 0) -> GenerateReport:
    """Have the teacher answer every prompt not yet in `out`, appending one JSONL record per prompt. `engine`: an
    EngineSpec (default: the torch engine on `teacher`); `logprobs` > 0 also keeps, per generated token, the
    teacher's top-k log-probabilities (`teacher_tokens`, `teacher_topk`), what `cache-logits` reads for a
    served teacher."""
    from edgedistill.engines import EngineSpec, identity, open_engine

    settings = settings or GenerationSettings()
    spec = engine or EngineSpec("torch", teacher, trust_remote_code=trust_remote_code)
    out = Path(out)
    if not prompts:
        raise DataError("no prompts to generate for")
    teacher_id, fingerprint, engine_settings = identity(spec)
    recorded = {**settings.recorded(), **engine_settings, **({"logprobs": logprobs} if logprobs else {})}
    report = GenerateReport(str(out))
    done = _existing(out, teacher_id, fingerprint, recorded)
    pending = [p for p in prompts if p.id not in done]
    report.already_done = len(prompts) - len(pending)
    if not pending:
        return report
    e = open_engine(spec, loaded=loaded)
    try:
        _answer_all(e, pending, out, settings, logprobs, recorded, report, progress)
    finally:
        e.close()
    return report


def _kept_tokens(tokenizer, a) -> int | None:
    """How many of the answer's tokens (and their top-k rows) are the start of what training encodes: its text's
    tokens, and the stop token right after them. None when the text does not encode to the tokens generated."""
    ids = tokenizer(a.text, add_special_tokens=False).input_ids
    if a.tokens[: len(ids)] != ids:
        return None
    return len(ids) + (a.finish == "stop" and len(a.tokens) == len(ids) + 1)


def _answer_all(e, pending, out: Path, settings, logprobs, recorded, report, progress) -> None:
    max_prompt = e.context - settings.max_new_tokens if e.context else None
    out.parent.mkdir(parents=True, exist_ok=True)
    task = progress.add_task(f"teacher answering {len(pending)} prompts", total=len(pending)) if progress else None
    with open(out, "a", encoding="utf-8") as f:
        for a in e.answer([p.messages for p in pending], settings, logprobs=logprobs, max_prompt_tokens=max_prompt):
            if progress:
                progress.advance(task)
            if a.text is None:
                report.skipped_too_long += 1
                continue
            p = pending[a.index]
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
            }
            n = _kept_tokens(e.tokenizer, a) if logprobs and a.topk_ids is not None else None
            if n is not None:
                rec["teacher_tokens"] = a.tokens[:n]
                rec["teacher_topk"] = {"ids": a.topk_ids[:n],
                                       "logprobs": [[round(x, 4) for x in row] for row in a.topk_logprobs[:n]]}
            report.text_only += bool(logprobs) and n is None
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            report.written += 1
            report.hit_max_tokens += a.finish == "length"
