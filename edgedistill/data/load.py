"""Reading the project's data files: chat prompts, graded eval items, teacher generations, plain text.

Every reader checks each record and names the file and line of a bad one. `strict=True` (the default) stops
at the first bad record; `strict=False` skips it and counts it in the returned LoadReport.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedistill.errors import EdgeDistillError

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
TASKS = ("classification", "extraction", "yes_no", "multiple_choice", "arithmetic")


class DataError(EdgeDistillError):
    """A data file that cannot be read as the format it claims to be."""


@dataclass(frozen=True)
class Prompt:
    id: str
    messages: tuple[dict, ...]  # chat turns, the last one from the user
    category: str = ""
    reasoning: bool = False
    domain: str = ""


@dataclass(frozen=True)
class EvalItem:
    id: str
    task: str  # one of TASKS
    prompt: str
    answer: str
    choices: tuple[str, ...] = ()
    domain: str = ""


@dataclass
class LoadReport:
    path: str
    loaded: int = 0
    skipped: list[str] = field(default_factory=list)  # "file:line: why"

    def __str__(self) -> str:
        s = f"{self.path}: {self.loaded} records"
        return s + (f", {len(self.skipped)} skipped" if self.skipped else "")


def bad_line(path: Path, line: int, why: str) -> str:
    return f"{path}:{line}: {why}"


def parse_messages(obj: dict) -> tuple[dict, ...]:
    """Accept {"messages": [...]} (chat) or {"prompt": "..."} (a single user turn)."""
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("'messages' must be a non-empty list")
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ValueError(f"message {i} needs a role ({'/'.join(ROLES)}) and a string content")
            if not m["content"].strip():
                raise ValueError(f"message {i} has empty content")
            out.append({"role": m["role"], "content": m["content"]})
        if out[-1]["role"] != "user":
            raise ValueError("the last message must come from the user")
        return tuple(out)
    if isinstance(obj.get("prompt"), str) and obj["prompt"].strip():
        return ({"role": "user", "content": obj["prompt"]},)
    raise ValueError("needs 'messages' (a chat) or 'prompt' (a string)")


def parse_prompt(obj: dict, domain: str) -> Prompt:
    if not isinstance(obj.get("id"), str) or not obj["id"]:
        raise ValueError("needs a string 'id'")
    return Prompt(
        id=obj["id"],
        messages=parse_messages(obj),
        category=str(obj.get("category", "")),
        reasoning=bool(obj.get("reasoning", False)),
        domain=str(obj.get("domain", domain)),
    )


def _parse_eval(obj: dict, domain: str) -> EvalItem:
    if not isinstance(obj.get("id"), str) or not obj["id"]:
        raise ValueError("needs a string 'id'")
    task = obj.get("task")
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {', '.join(TASKS)}")
    for key in ("prompt", "answer"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise ValueError(f"needs a non-empty string {key!r}")
    choices = tuple(str(c) for c in obj.get("choices") or ())
    if task in ("classification", "yes_no", "multiple_choice"):
        if not choices:
            raise ValueError(f"a {task} item needs 'choices'")
        if obj["answer"] not in choices:
            raise ValueError(f"answer {obj['answer']!r} is not among the choices {list(choices)}")
    if task == "arithmetic":
        try:
            float(obj["answer"])
        except ValueError:
            raise ValueError(f"arithmetic answer {obj['answer']!r} is not a plain number") from None
    return EvalItem(obj["id"], task, obj["prompt"], obj["answer"].strip(), choices, str(obj.get("domain", domain)))


def read_jsonl(path: Path, on_bad=None) -> Iterable[tuple[int, Any]]:
    """(line number, parsed object) for each non-blank line, read through edgedistill.checked. A line that is not
    JSON raises DataError, or is handed to `on_bad(message)` and skipped when that is given."""
    from edgedistill.checked import jsonl

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    for n, obj, problem in jsonl(path, "data file", DataError):
        if problem is None:
            yield n, obj
        elif on_bad is None:
            raise DataError(bad_line(path, n, problem))
        else:
            on_bad(bad_line(path, n, problem))


TABLES = (".csv", ".parquet")  # prompt tables: one prompt per row, in a named column


def read_rows(path: Path, on_bad=None, column: str = "prompt") -> Iterable[tuple[int, Any]]:
    """(line or row number, object) for each record of a JSON-lines file, or of a CSV (Python's csv reader, header
    row first) or Parquet table (pyarrow) whose `column` holds the prompt (a row's `id` column is its id, else
    <file stem>-<row>)."""
    path = Path(path)
    if path.suffix.lower() not in TABLES:
        yield from read_jsonl(path, on_bad)
        return
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".csv":
            import csv

            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            first = 2  # the header is line 1
        else:
            import pyarrow.parquet as pq

            rows, first = pq.read_table(path).to_pylist(), 1
    except (OSError, UnicodeDecodeError, ValueError, ImportError) as e:
        raise DataError(f"{path}: cannot be read as a {path.suffix[1:]} table ({str(e).splitlines()[0][:200]})") from None
    if rows and column not in rows[0] and "messages" not in rows[0]:
        raise DataError(f"{path}: no column {column!r} (it has {', '.join(map(str, rows[0]))}); name the prompt "
                        "column with --prompt-column")
    for n, row in enumerate(rows, first):
        rec = {k: v for k, v in row.items() if k != column}
        if column in row:
            rec["prompt"] = row[column]
        rec.setdefault("id", f"{path.stem}-{n}")
        rec["id"] = str(rec["id"]) if rec["id"] is not None else f"{path.stem}-{n}"
        yield n, rec


def load_records(path: Path, parse, strict: bool = True, domain: str | None = None,
                 column: str = "prompt") -> tuple[list, LoadReport]:
    """The records of a JSON-lines file (or a CSV / Parquet prompt table, `column` holding the prompt), each through
    `parse(object, domain)` (a ValueError: that record is refused, or skipped when not `strict`; ids must be
    unique). The one path every data file's records take."""
    path = Path(path)
    domain = domain if domain is not None else _domain_of(path)
    report, out, seen = LoadReport(str(path)), [], set()
    for n, obj in read_rows(path, None if strict else report.skipped.append, column):
        try:
            if not isinstance(obj, dict):
                raise ValueError("each line must be a JSON object")
            rec = parse(obj, domain)
            if rec.id in seen:
                raise ValueError(f"duplicate id {rec.id!r}")
        except ValueError as e:
            msg = bad_line(path, n, str(e))
            if strict:
                raise DataError(msg) from None
            report.skipped.append(msg)
            continue
        seen.add(rec.id)
        out.append(rec)
    report.loaded = len(out)
    if not out:
        raise DataError(f"{path}: no usable records" + (f" ({len(report.skipped)} skipped)" if report.skipped else ""))
    for s in report.skipped:
        log.warning("skipped %s", s)
    return out, report


def _domain_of(path: Path) -> str:
    """calibration_data/<domain>/... -> <domain>; anything else -> ''."""
    parts = path.resolve().parts
    if "calibration_data" in parts:
        i = parts.index("calibration_data")
        if i + 1 < len(parts) - 1:
            return parts[i + 1]
    return ""


def load_prompts(path: Path, *, strict: bool = True, domain: str | None = None,
                 column: str = "prompt") -> tuple[list[Prompt], LoadReport]:
    return load_records(path, parse_prompt, strict, domain, column)


def load_eval(path: Path, *, strict: bool = True, domain: str | None = None) -> tuple[list[EvalItem], LoadReport]:
    return load_records(path, _parse_eval, strict, domain)


def load_texts(path: Path) -> list[tuple[str, str]]:
    """(name, text) for a .txt file, or for every .txt file under a folder (sorted, so the order is stable)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.rglob("*.txt")) if path.is_dir() else []
    if not files:
        raise DataError(f"{path}: no .txt files found")
    out = []
    for f in files:
        from edgedistill.checked import read_text

        text = read_text(f, "text file", DataError)
        if text.strip():
            out.append((f.name, text))
    return out
