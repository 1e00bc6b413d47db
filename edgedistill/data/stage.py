"""The teacher-data stage as one job: `generate_data(GenerateSettings)` -> the teacher's answers to a set of
prompts in one JSONL file, resumable, with the settings beside it (OUT's name + .settings.yaml)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from edgedistill.data.generate import DecodeSettings
from edgedistill.engines import EngineSettings
from edgedistill.errors import EdgeDistillError
from edgedistill.models.registry import DEFAULT_TEACHER
from edgedistill.settings import setting
from edgedistill.settings import write as write_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateSettings(EngineSettings, DecodeSettings):
    """The teacher engine and its decoding (declared in engines and data.generate), plus the prompts and the output."""

    teacher: str = setting(DEFAULT_TEACHER, "Registry name, Hugging Face folder, .gguf or hub id (torch and llama.cpp "
                                            "engines).")
    prompts: list[Path] = setting([], "Prompt files: JSONL (chat 'messages' or 'prompt'), or a CSV or Parquet table "
                                      "with a prompt column; repeatable.", exists="file")
    prompt_column: str = setting("prompt", "CSV / Parquet prompt files: the column that holds the prompt.")
    split: str | None = setting(None, "Instead of --prompts: this split of every domain in the data folder.",
                                choices=("train", "validation", "test"))
    data_dir: Path | None = setting(None, "Data folder for --split [default: the project's calibration_data].",
                                    exists="dir", flag="--data")
    out: Path = setting(None, "Output JSONL; a rerun skips prompts already answered there.", required=True)
    logprobs: int = setting(0, "Also keep the teacher's top-K log-probabilities of every generated token (openai "
                               "servers give K <= 20), for `cache-logits` from a served teacher: as ids of "
                               "--tokenizer when given, else as the server's strings (cross-tokenizer).",
                            min=0, max=1024)
    limit: int | None = setting(None, "Only the first N prompts of each file.", min=1)
    skip_bad: bool = setting(False, "Skip malformed prompt records (counted) instead of stopping.")
    trust_remote_code: bool = setting(False, "Allow the model folder's own code (off unless asked).")

    def extra_problems(self) -> list[str]:
        problems = self.engine_problems()
        if bool(self.prompts) == bool(self.split):
            problems.append("pass either --prompts FILE (repeatable) or --split train|validation|test")
        if self.teacher_engine == "openai" and self.logprobs > 20:
            problems.append(f"--logprobs {self.logprobs}: OpenAI-compatible servers give at most 20")
        return problems

    def settings_path(self) -> Path:
        return Path(self.out).with_suffix(".settings.yaml")


def select_prompts(s: GenerateSettings, *, echo=None) -> list:
    """The prompts s names: s.prompts, or s.split of every domain, s.limit per file; ids unique across files."""
    return read_prompts(s.prompts, split=s.split, limit=s.limit, data_dir=s.data_dir, column=s.prompt_column,
                        skip_bad=s.skip_bad, echo=echo)


def read_prompts(files=None, *, split: str = "train", limit: int | None = None, data_dir=None,
                 column: str | None = None, skip_bad: bool = False, echo=None) -> list:
    """The prompts of `files`, or of `split` in every domain of the data folder, `limit` per file; ids unique
    across files. Malformed records are refused, or skipped and counted with `skip_bad`."""
    from edgedistill.data import default_data_dir
    from edgedistill.data.load import load_prompts
    from edgedistill.data.stats import domains

    say = echo or log.info
    files = files or [d / "prompts" / f"{split}.jsonl" for d in domains(data_dir or default_data_dir())]
    prompts = []
    for path in files:
        got, report = load_prompts(path, strict=not skip_bad, column=column)
        if report.skipped:
            say(f"skipped {len(report.skipped)} malformed records (first: {report.skipped[0]})")
        prompts.extend(got[:limit] if limit else got)
    ids = [p.id for p in prompts]
    if len(ids) != len(set(ids)):
        raise EdgeDistillError("the prompt files share ids; ids must be unique across all files of one run")
    return prompts


def generate_data(s: GenerateSettings, *, teacher=None, prompts=None, progress=None, echo=None):
    """The teacher answers every prompt of s.prompts (or of s.split in every domain) not yet in s.out. `teacher`:
    an already loaded (model, tokenizer) of s.teacher; `prompts`: select_prompts(s) when the caller already has
    them. Returns the GenerateReport (written, already there, skipped as too long, cut at max_new_tokens)."""
    from edgedistill.data.generate import generate

    from edgedistill.paths import ensure_writable_file

    ensure_writable_file(s.out, "--out")  # before the teacher loads
    if prompts is None:
        prompts = select_prompts(s, echo=echo)
    r = generate(s.teacher, prompts, s.out, s, trust_remote_code=s.trust_remote_code, progress=progress,
                 loaded=teacher, engine=s.engine_spec(s.teacher, s.trust_remote_code), logprobs=s.logprobs)
    write_settings(s, s.settings_path())
    return r
