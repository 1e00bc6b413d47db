"""Run a model on graded eval items and score it, per domain and per task type."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgedistill.data import grading
from edgedistill.data.generate import GenerationSettings, chat_batches
from edgedistill.data.load import DataError, EvalItem, load_eval

# Prompts that ask for reasoning get room to reason; the others need a word or a number.
SHORT_ANSWER_TOKENS = 48
REASONING_TOKENS = 320


def wants_reasoning(item: EvalItem) -> bool:
    p = item.prompt.lower()
    return "step by step" in p or "answer:" in p


@dataclass
class EvalResult:
    model: str
    items: list[dict] = field(default_factory=list)  # id, domain, task, correct, predicted, gold, response

    def accuracy(self, key=lambda r: (r["domain"], r["task"])) -> dict:
        hits, total = defaultdict(int), defaultdict(int)
        for r in self.items:
            k = key(r)
            total[k] += 1
            hits[k] += bool(r["correct"])
        return {k: hits[k] / total[k] for k in total} | {"_n": dict(total)}

    def by_domain(self) -> dict[str, float]:
        acc = self.accuracy(lambda r: r["domain"])
        acc.pop("_n")
        return acc

    def overall(self) -> float:
        return sum(bool(r["correct"]) for r in self.items) / len(self.items) if self.items else 0.0

    def as_dict(self) -> dict:
        by = self.accuracy()
        n = by.pop("_n")
        return {
            "model": self.model,
            "overall": self.overall(),
            "by_domain": self.by_domain(),
            "by_domain_task": [{"domain": d, "task": t, "accuracy": a, "n": n[(d, t)]} for (d, t), a in sorted(by.items())],
            "items": self.items,
        }


def find_eval_sets(data_dir: Path, domains: Sequence[str] = ()) -> list[Path]:
    data_dir = Path(data_dir)
    found = sorted(data_dir.glob("*/eval.jsonl"))
    if domains:
        names = {p.parent.name: p for p in found}
        missing = [d for d in domains if d not in names]
        if missing:
            raise DataError(f"no eval set for domain(s) {', '.join(missing)} under {data_dir}; "
                            f"available: {', '.join(sorted(names)) or 'none'}")
        found = [names[d] for d in domains]
    if not found:
        raise DataError(f"no */eval.jsonl under {data_dir}")
    return found


def load_eval_items(paths: Sequence[Path], limit: int | None = None) -> list[EvalItem]:
    """Items from each file; `limit` keeps N of each file, spread evenly over it so every task type shows up
    (a quick look, not a score to report)."""
    items = []
    for p in paths:
        got, _ = load_eval(p, domain=p.parent.name)
        if limit and limit < len(got):
            got = [got[i * len(got) // limit] for i in range(limit)]
        items.extend(got)
    return items


def evaluate(model_spec: str, items: Sequence[EvalItem], *, batch_size: int = 8, progress=None, loaded=None,
             trust_remote_code: bool = False) -> EvalResult:
    """Greedy answers from `model_spec` to every item, graded by `grading.is_correct`."""
    from edgedistill.models.locate import load_model

    model, tokenizer = loaded or load_model(model_spec, trust_remote_code=trust_remote_code)
    result = EvalResult(str(model_spec))
    task = progress.add_task(f"evaluating {model_spec}", total=len(items)) if progress else None
    for reasoning in (False, True):
        group = [it for it in items if wants_reasoning(it) == reasoning]
        if not group:
            continue
        settings = GenerationSettings(max_new_tokens=REASONING_TOKENS if reasoning else SHORT_ANSWER_TOKENS,
                                      batch_size=batch_size)
        convs = [[{"role": "user", "content": it.prompt}] for it in group]
        for i, text, _, _ in chat_batches(model, tokenizer, convs, settings):
            it = group[i]
            text = text or ""
            result.items.append({
                "id": it.id, "domain": it.domain, "task": it.task, "gold": it.answer,
                "predicted": grading.predicted(it, text), "correct": grading.is_correct(it, text), "response": text,
            })
            if progress:
                progress.advance(task)
    order = {it.id: n for n, it in enumerate(items)}
    result.items.sort(key=lambda r: order[r["id"]])
    return result
