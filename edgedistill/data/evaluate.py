"""Run a model on graded eval items and score it, per domain and per task type."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgedistill.data import grading
from edgedistill.data.generate import DecodeSettings, chat_batches
from edgedistill.data.load import DataError, EvalItem, load_eval
from edgedistill.models.generate import prompt_text

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
        settings = DecodeSettings(max_new_tokens=REASONING_TOKENS if reasoning else SHORT_ANSWER_TOKENS,
                                      answer_batch=batch_size)
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


def choice_accuracy(model_spec: str, items: Sequence[EvalItem], *, progress=None, loaded=None,
                    trust_remote_code: bool = False) -> EvalResult:
    """Scores the items that list their choices by likelihood instead of by generation: the predicted answer
    is the choice whose tokens the model finds most likely (summed log-probability) as the start of its reply
    (after "Answer:" where the prompt asks for reasoning first). This still separates models whose generated
    answers are all wrong, which is where small students start; chance level is 1 / number of choices."""
    import torch

    from edgedistill.models.locate import load_model

    model, tok = loaded or load_model(model_spec, trust_remote_code=trust_remote_code)
    was_training = model.training
    model.eval()
    result = EvalResult(str(model_spec))
    todo = [it for it in items if it.choices]
    task = progress.add_task(f"scoring choices of {model_spec}", total=len(todo)) if progress else None
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = next(model.parameters()).device
    for it in todo:
        context = prompt_text(tok, [{"role": "user", "content": it.prompt}])
        lead = ""
        if wants_reasoning(it):
            context, lead = context + "Answer:", " "
        c_ids = tok(context, add_special_tokens=False).input_ids
        conts = [tok(lead + c, add_special_tokens=False).input_ids for c in it.choices]
        seqs = [c_ids + c for c in conts]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), -1)
        scores = []
        for row, c in enumerate(conts):
            pos = torch.arange(len(c_ids) - 1, len(c_ids) - 1 + len(c), device=device)
            scores.append(float(logp[row, pos, torch.tensor(c, device=device)].sum()))
        best = it.choices[max(range(len(scores)), key=scores.__getitem__)]
        result.items.append({"id": it.id, "domain": it.domain, "task": it.task, "gold": it.answer, "predicted": best,
                             "correct": best == it.answer, "chance": 1 / len(it.choices),
                             "scores": dict(zip(it.choices, scores))})
        if progress:
            progress.advance(task)
    if was_training:
        model.train()
    return result
