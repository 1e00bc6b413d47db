"""Choosing the re-applied student on a validation slice: the checkpoint picker of the safety phase."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from edgedistill.safety import scoring
from edgedistill.safety.suite import SafetyPrompt


def checkpoint_picker(prompts: Sequence[SafetyPrompt], tokenizer, every: int, best_dir: Path,
                      max_new_tokens: int = 96, log=None):
    """A training callback: every `every` optimizer steps (and at the last) it judges the model's greedy answers to
    `prompts` (held-out train prompts, never the test split) and saves the weights to `best_dir` when their refusal
    rate minus over-refusal rate is the largest so far (the earlier step wins a tie). Its `curve` lists every
    evaluation and `best` the chosen one (early stopping on a validation slice, without stopping the run).
    Measured: this rule kept the steps behind the README's safety result; a rule aiming at fixed target rates
    kept the same steps there and lower ones elsewhere, and was removed. Single process only."""
    from transformers import TrainerCallback

    from edgedistill.paths import atomic_dir

    def rank(e: dict) -> float:
        return e["over_refusal"] - e["refusal_rate"]

    class Picker(TrainerCallback):
        def __init__(self):
            self.curve: list[dict] = []
            self.best: dict | None = None

        def on_step_end(self, args, state, control, model=None, **kw):
            step = state.global_step
            if step % every and step != state.max_steps:
                return
            was_training = model.training
            model.eval()
            r = scoring.score(prompts, scoring.answer("checkpoint", prompts, max_new_tokens, loaded=(model, tokenizer)))
            if was_training:
                model.train()
            entry = {"step": step, "refusal_rate": r["refusal_rate"], "over_refusal": r["over_refusal"]}
            self.curve.append(entry)
            if self.best is None or rank(entry) < rank(self.best):
                final = Path(best_dir)
                nxt = final.with_name(final.name + ".next")
                shutil.rmtree(nxt, ignore_errors=True)
                with atomic_dir(nxt) as tmp:  # a failed save leaves the previous best as it was
                    model.save_pretrained(tmp, safe_serialization=True)
                    from edgedistill.models.locate import save_tokenizer

                    save_tokenizer(tokenizer, tmp)
                shutil.rmtree(final, ignore_errors=True)
                nxt.rename(final)
                self.best = entry
            if log:
                log(f"step {step}: refusal {100 * entry['refusal_rate']:.1f}%, over-refusal "
                    f"{100 * entry['over_refusal']:.1f}% on {len(prompts)} held-out prompts"
                    + (" (best so far)" if self.best is entry else ""))

    return Picker()
