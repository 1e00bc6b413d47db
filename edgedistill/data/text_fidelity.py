"""How closely a student's answers follow its teacher's when the two do not share a tokenizer (token-level KL is
undefined there), measured on the text, per held-out prompt, each with a 95% bootstrap interval over prompts:

  chrF                  character n-gram F-score (Popović, 2015, "chrF: character n-gram F-score for automatic MT
                        evaluation"; β = 2, n-grams up to 6) of the student's greedy answer against the teacher's,
                        from sacrebleu's implementation, 0-100
  answer agreement      on graded items: the two answers, parsed by the grader, say the same thing (data.grading)
  teacher NLL per byte  -log p_teacher(student's answer | prompt) / its UTF-8 bytes: how likely the teacher finds
                        what the student wrote, per byte so that tokenizers do not matter (needs a teacher that can
                        score text: a local one)
"""

from __future__ import annotations

from collections.abc import Sequence


def chrf(hypothesis: str, reference: str) -> float:
    """Sentence-level chrF (0-100) of `hypothesis` against `reference`."""
    from sacrebleu.metrics import CHRF

    return float(CHRF().sentence_score(hypothesis, [reference]).score)


def mean_ci(values: Sequence[float], denominators: Sequence[float] | None = None) -> dict:
    """A mean (or Σ values / Σ denominators) with its 95% percentile bootstrap interval over the units."""
    from edgedistill.stats import bootstrap_ratio

    est, lo, hi = bootstrap_ratio(list(values), None if denominators is None else list(denominators))
    return {"value": est, "ci": [lo, hi], "items": len(values)}


def compare(reference: dict[str, str], answers: dict[str, str], *, nll: dict[str, tuple[float, int]] | None = None,
            graded: Sequence[bool] | None = None) -> dict:
    """The text-level fidelity of `answers` to `reference` (both: prompt id -> answer text) over the ids both have;
    `nll`: id -> (the teacher's summed NLL of the answer, its bytes); `graded`: per graded item, whether the two
    parsed answers agree."""
    ids = [i for i in reference if i in answers]
    if not ids:
        raise ValueError("no prompt has both a reference answer and an answer to compare")
    out = {"prompts": len(ids), "chrf": mean_ci([chrf(answers[i], reference[i]) for i in ids])}
    if graded:
        out["answer_agreement"] = mean_ci([float(g) for g in graded])
    scored = [i for i in ids if nll and i in nll and nll[i][1] > 0]
    if scored:
        out["teacher_nll_per_byte"] = mean_ci([nll[i][0] for i in scored], [nll[i][1] for i in scored])
    return out


def teacher_nll(model, tokenizer, items: Sequence[tuple[str, Sequence[dict], str]], batch_size: int = 4) -> dict:
    """id -> (NLL of the answer under the local teacher `model`, teacher-forced after the chat prompt, the answer's
    UTF-8 bytes) for items (id, messages, answer). Empty answers are left out (no bytes to score)."""
    import torch

    from edgedistill.models.generate import prompt_text

    out = {}
    for i in range(0, len(items), batch_size):
        for rid, messages, answer in items[i : i + batch_size]:
            if not answer:
                continue
            p = tokenizer(prompt_text(tokenizer, list(messages)), add_special_tokens=False).input_ids
            a = tokenizer(answer, add_special_tokens=False).input_ids
            ids = torch.tensor([p + a])
            with torch.no_grad():
                logits = model(input_ids=ids.to(model.device)).logits[0, len(p) - 1 : -1].float().cpu()
            lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(a)[:, None])[:, 0]
            out[rid] = (float(-lp.sum()), len(answer.encode()))
    return out


def greedy_answers(model, tokenizer, prompts: Sequence[tuple[str, Sequence[dict]]], max_new_tokens: int) -> dict:
    """id -> the model's greedy answer to each (id, messages), in the torch engine's batched decoding."""
    from edgedistill.data.generate import DecodeSettings
    from edgedistill.engines.local import answers

    convs = [list(m) for _, m in prompts]
    got = answers(model, tokenizer, convs, DecodeSettings(max_new_tokens=max_new_tokens))
    return {prompts[a.index][0]: a.text or "" for a in got}
