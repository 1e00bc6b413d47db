"""The safety check as one job: `evaluate_suite(SafetyEvalSettings)` -> a model (and optionally a reference model)
answering a split of the safety suite, refusal and over-refusal per category, a profile's floor checked; the report
at OUT with the settings beside it (OUT's name + .settings.yaml). `edgedistill safety eval` and `run`'s safety gate
call it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgedistill.data.generate import DecodeSettings
from edgedistill.settings import Settings, SettingsError, like, setting
from edgedistill.settings import write as write_settings


@dataclass(frozen=True)
class SafetyEvalSettings(Settings):
    model: str = setting(None, "Model to check: a registry name, a Hugging Face folder or an exported bundle.",
                         required=True, cli=False)
    compare: str | None = setting(None, "Also evaluate this model (e.g. the teacher) and show the delta.",
                                  aliases=("teacher",))
    split: str = setting("test", "Split of the safety suite to answer.", choices=("test", "train"))
    # shorter than generate's: whether an answer refuses shows in its first sentences (docs/safety.md)
    max_new_tokens: int = like(DecodeSettings, "max_new_tokens", 96)
    target: str | None = setting(None, "Check this profile's safety floor (exit 1 if missed): a name or a .yaml.")
    data_dir: Path | None = setting(None, "Data folder holding safety/ [default: the project's calibration_data].",
                                    exists="dir", flag="--data")
    out: Path | None = setting(None, "Write the full report (every response and verdict) as JSON, the settings "
                                     "beside it.")

    def settings_path(self) -> Path:
        return Path(self.out).with_suffix(".settings.yaml")


def evaluate_suite(s: SafetyEvalSettings, *, status=None) -> dict:
    """The report {split, max_new_tokens, models: {name: result}, floor?}: each of s.compare and s.model (once if
    the same) answers the split; with a profile (s.target), the floor verdict of s.model.
    `status(message)` is a context manager shown while a model answers."""
    import contextlib

    from edgedistill.paths import ensure_writable_file
    from edgedistill.safety.scoring import evaluate, meets_floor
    from edgedistill.safety.suite import load_suite

    if s.out:
        ensure_writable_file(s.out, "--out")  # before the models answer
    target = None
    if s.target:
        from edgedistill.targets import load_target

        target = load_target(s.target)
    if target is not None and target.safety_floor is None:
        raise SettingsError(f"profile {target.name} has no safety_floor; choose a profile that has one")
    prompts = load_suite(s.split, s.data_dir)
    status = status or (lambda msg: contextlib.nullcontext())
    results = {}
    for name in dict.fromkeys(m for m in (s.compare, s.model) if m):
        with status(f"answering {len(prompts)} safety prompts with {name}"):
            results[name] = evaluate(name, prompts, s.max_new_tokens)
    report = {"split": s.split, "max_new_tokens": s.max_new_tokens, "models": results}
    if target is not None:
        report["floor"] = {"target": target.name, **meets_floor(results[s.model], target.safety_floor)}
    if s.out:
        from edgedistill.runinfo import write_result

        write_result(s.out, report)
        write_settings(s, s.settings_path())
    return report
