"""Training examples for distillation: chat prompt + response, tokenized, with the response tokens marked.

Each example holds `input_ids` (T,) and `labels` (T,), where labels[t] is the token the model should predict
at position t (input_ids[t + 1]) when that token belongs to the response, and -100 elsewhere (prompt,
padding, the last position). Losses therefore never need to shift, and the number of response tokens in a
batch is (labels != -100).sum().
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgedistill.data.load import DataError, bad_line, parse_messages, read_jsonl
from edgedistill.tensors import IGNORE

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    examples: list[dict]  # {"id", "input_ids": list[int], "labels": list[int]}
    truncated: int = 0  # examples cut to max_length
    dropped: int = 0  # examples with no response token left after truncation

    def fingerprint(self) -> str:
        """Hash of the exact token sequences and labels: what a logit cache is keyed by."""
        return examples_fingerprint(self.examples)

    @property
    def response_tokens(self) -> int:
        return sum(sum(1 for x in ex["labels"] if x != IGNORE) for ex in self.examples)


def examples_fingerprint(examples: Sequence[dict]) -> str:
    """Hash of encoded examples' ids, tokens and labels, in order."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex["id"], ex["input_ids"], ex["labels"]]).encode())
    return h.hexdigest()[:16]


def _targets(rec, turns: str) -> list[dict]:
    """The training examples of one record: itself when it has a `response` (what `generate` writes); for a logged
    conversation (`messages` with assistant turns, TRL's and the vendors' fine-tuning format), every assistant turn
    (or the last) as the response to the conversation before it."""
    if not isinstance(rec, dict) or not isinstance(rec.get("messages"), list):
        raise ValueError("a training record needs 'messages' (a list) with a 'response' string (what `edgedistill "
                         "generate` writes), or 'messages' that hold assistant turns (a logged conversation)")
    if isinstance(rec.get("response"), str):
        parse_messages(rec)  # the messages, checked as every prompt file's are
        return [rec]
    msgs = rec["messages"]
    at = [i for i, m in enumerate(msgs) if isinstance(m, dict) and m.get("role") == "assistant"]
    if not at:
        raise ValueError("no 'response' and no assistant turn in 'messages': a prompt without an answer goes through "
                         "`edgedistill generate` first")
    rest = {k: v for k, v in rec.items() if k not in ("messages", "response")}
    out = []
    for i in at[-1:] if turns == "last" else at:
        if not isinstance(msgs[i].get("content"), str):
            raise ValueError(f"message {i} needs a string content")
        try:
            context = parse_messages({"messages": msgs[:i]})
        except ValueError as e:
            raise ValueError(f"the assistant turn at message {i}: {e}") from None
        out.append({**rest, "messages": list(context), "response": msgs[i]["content"], "turn": i})
    return out


def load_generations(paths: Sequence[Path], *, allow_empty: bool = False, turns: str = "all") -> list[dict]:
    """Training records from one or more files: what `edgedistill generate` writes (`messages` and the teacher's
    `response`), or logged conversations (`messages` with assistant turns: every one a target with the conversation
    before it as context, or only the last with turns="last"; ids get '#<message index>' when a conversation gives
    several, and `record_id` is the record's own id either way). An answer that is empty or only whitespace teaches the student to say nothing: refused, with the count
    and the first one, unless `allow_empty`."""
    out, seen, empty = [], set(), []
    for path in paths:
        for n, rec in read_jsonl(Path(path)):
            try:
                examples = _targets(rec, turns)
            except ValueError as e:
                raise DataError(bad_line(Path(path), n, str(e))) from None
            base = str(rec.get("id", f"{Path(path).name}:{n}"))
            for ex in examples:
                rid = f"{base}#{ex['turn']}" if len(examples) > 1 else base
                if rid in seen:
                    raise DataError(f"{path}:{n}: duplicate id {rid!r}")
                seen.add(rid)
                out.append({**ex, "id": rid, "record_id": base})
                if not ex["response"].strip():
                    empty.append(f"{path}:{n} (id {rid})")
    if not out:
        raise DataError(f"no training records in {', '.join(map(str, paths))}")
    if empty and not allow_empty:
        raise DataError(f"{len(empty)} of {len(out)} teacher answers are empty or only whitespace (first: {empty[0]}); "
                        "they would teach the student to say nothing: regenerate or remove them, or pass --allow-empty")
    return out


def encode(tokenizer, records: Sequence[dict], max_length: int) -> Encoded:
    """Tokenize prompt (chat template, generation prompt added) and response + end of turn separately, so no
    BPE merge crosses the boundary, then build aligned labels."""
    if tokenizer.eos_token is None:
        raise DataError("the tokenizer has no end-of-sequence token; set eos_token in tokenizer_config.json")
    from edgedistill.models.generate import prompt_text, turn_end

    enc, end = Encoded([]), turn_end(tokenizer)
    for rec in records:
        p_ids = tokenizer(prompt_text(tokenizer, rec["messages"]), add_special_tokens=False).input_ids
        r_ids = tokenizer(rec["response"] + end, add_special_tokens=False).input_ids
        ids = p_ids + r_ids
        if len(ids) > max_length:
            enc.truncated += 1
            ids = ids[:max_length]
        labels = [IGNORE] * len(ids)
        for t in range(len(p_ids) - 1, len(ids) - 1):
            labels[t] = ids[t + 1]
        if all(x == IGNORE for x in labels):
            enc.dropped += 1
            continue
        ex = {"id": rec["id"], "input_ids": ids, "labels": labels}
        enc.examples.append(ex)
    if not enc.examples:
        raise DataError(f"no example keeps a response token within max_length={max_length}")
    if enc.truncated:
        log.warning("%d of %d examples truncated to %d tokens", enc.truncated, len(records), max_length)
    return enc


