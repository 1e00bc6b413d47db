"""safety: does a model refuse what a workplace assistant must refuse, and answer the look-alikes it must answer?

By role:
- suite.py   — the harmful requests and benign look-alikes (calibration_data/safety/{train,test}.jsonl), and the
               validation slice of the train split (`holdout`);
- judge.py   — the deterministic refusal judge (`is_refusal`, documented there) and the refusal templates;
- scoring.py — greedy answers of a model or bundle, refusal / over-refusal rates per category, the floor check;
- stage.py   — the check as one job (`evaluate_suite`, `SafetyEvalSettings`: `edgedistill safety eval`, run's gate);
- reapply.py — the safety phase after distillation (`reapply`, `ReapplySettings`: `edgedistill safety reapply`);
- select.py  — the checkpoint picker of that phase, on the validation slice;
- hint.py    — the hidden-state hints the phase uses;
- margin.py  — where a model draws the line: its own refusal score, AUC and a threshold sweep.
"""

from edgedistill.safety.judge import JUDGE_WINDOW, REFUSALS, is_refusal, refusal_for
from edgedistill.safety.scoring import answer, evaluate, meets_floor, score
from edgedistill.safety.suite import CATEGORIES, KINDS, SafetyPrompt, holdout, load_suite, suite_dir

__all__ = ["CATEGORIES", "JUDGE_WINDOW", "KINDS", "REFUSALS", "SafetyPrompt", "answer", "evaluate", "holdout",
           "is_refusal", "load_suite", "meets_floor", "refusal_for", "score", "suite_dir"]
