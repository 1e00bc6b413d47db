"""Scoring answers to the graded eval sets (calibration_data/<domain>/eval.jsonl).

The rules, in order:
1. If the response has a line "Answer: X" (the format reasoning prompts ask for), only the text after the
   last such marker counts; otherwise the whole response counts.
2. classification / yes_no / multiple_choice: the first of the item's choices that appears in that text as a
   whole word (case-insensitive; for A-D letters, as a standalone letter such as "B", "B)" or "(B)") is the
   model's answer; it must equal the gold answer.
3. arithmetic: the first number in that text (thousands separators and a trailing unit ignored) must equal the
   gold number within 1e-6 relative, or 0.01 absolute for rounded answers.
4. extraction: the gold string must occur in that text (case-insensitive, surrounding whitespace and quotes
   ignored) and the text may be at most 3x the gold's length plus 40 characters, so dumping the whole prompt
   back does not count.
"""

from __future__ import annotations

import re

from edgedistill.data.load import EvalItem

_ANSWER = re.compile(r"answer\s*[:：]\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def final_text(response: str) -> str:
    hits = _ANSWER.findall(response)
    return hits[-1].strip() if hits else response.strip()


def _first_choice(text: str, choices: tuple[str, ...]) -> str | None:
    best, best_pos = None, len(text) + 1
    for c in choices:
        if len(c) == 1 and c.isalpha():
            pat = rf"(?<![A-Za-z]){re.escape(c)}(?![A-Za-z])"
            m = re.search(pat, text)  # letters are case-sensitive: "a" is an article, "A" an option
        else:
            m = re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])", text, re.IGNORECASE)
        if m and m.start() < best_pos:
            best, best_pos = c, m.start()
    return best


def _first_number(text: str) -> float | None:
    m = _NUMBER.search(text)
    if not m:
        return None
    try:
        return float(m.group(0).replace(",", ""))
    except ValueError:
        return None


def predicted(item: EvalItem, response: str) -> str | None:
    """The model's answer as the grader reads it (None when it gave none)."""
    text = final_text(response)
    if item.task in ("classification", "yes_no", "multiple_choice"):
        return _first_choice(text, item.choices)
    if item.task == "arithmetic":
        n = _first_number(text)
        return None if n is None else repr(n)
    return text


def is_correct(item: EvalItem, response: str) -> bool:
    pred = predicted(item, response)
    if pred is None:
        return False
    if item.task in ("classification", "yes_no", "multiple_choice"):
        return pred == item.answer
    if item.task == "arithmetic":
        gold, got = float(item.answer), float(pred)
        return abs(got - gold) <= max(1e-6 * abs(gold), 0.01)
    gold = item.answer.strip().strip("'\"").lower()
    text = pred.strip().strip("'\"`").lower()
    return gold in text and len(text) <= 3 * len(gold) + 40


def _normalized(text: str) -> str:
    return " ".join(text.strip().strip("'\"`").rstrip(".!").strip().lower().split())


def same_answer(item: EvalItem, a: str | None, b: str | None) -> bool:
    """Do two parsed answers (from `predicted`) to `item` say the same thing? Choices: the same choice;
    arithmetic: the same number (the tolerance of grading); extraction: the same text once case, quotes, a final
    full stop and runs of whitespace are set aside. Two responses with no readable answer agree: both models did
    the same thing, which is what distillation promises."""
    if a is None or b is None:
        return a is None and b is None
    if item.task == "arithmetic":
        x, y = float(a), float(b)
        return abs(x - y) <= max(1e-6 * max(abs(x), abs(y)), 0.01)
    if item.task == "extraction":
        return _normalized(a) == _normalized(b)
    return a == b


def chance(item: EvalItem) -> float:
    """The score of a blind guess: 1 / choices for choice tasks, 0 for numbers and extraction."""
    return 1 / len(item.choices) if item.task in ("classification", "yes_no", "multiple_choice") and item.choices else 0.0
