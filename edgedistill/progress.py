"""The progress display every long job uses, on stderr so stdout stays parseable.

On a terminal: rich bars. Anywhere else (CI, `make demo > log`, a pipe) rich would draw nothing until the end, so
`LineProgress` takes the same calls (add_task, update, advance) and prints one line per task every
LINE_EVERY_S seconds and when it finishes: counts, rate, elapsed time and the task's fields (loss, tokens/s).
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

stderr = Console(stderr=True)
LINE_EVERY_S = 15.0


class _BytesIfKnown(ProgressColumn):
    """Byte counts for tasks that declared a size in bytes; nothing for steps of unknown length."""

    def __init__(self) -> None:
        super().__init__()
        self._bytes = DownloadColumn()

    def render(self, task) -> Text:
        return self._bytes.render(task) if task.fields.get("bytes") else Text("")


class LineProgress:
    """rich.progress.Progress's add_task / update / advance, printed as plain lines (see the module docstring)."""

    def __init__(self, stream=None, every_s: float = LINE_EVERY_S, clock=time.monotonic):
        self.stream, self.every_s, self.clock = stream, every_s, clock
        self.tasks: dict[int, dict] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for tid, t in self.tasks.items():
            if not t["done"] and exc[0] is None:
                self._line(tid)
        return False

    def add_task(self, description: str, total=None, completed=0, **fields) -> int:
        tid = len(self.tasks)
        now = self.clock()
        self.tasks[tid] = {"description": description, "total": total, "completed": completed, "start": now,
                           "start_completed": completed, "last": now, "done": False,
                           "fields": {k: v for k, v in fields.items() if k != "bytes"}, "bytes": fields.get("bytes")}
        return tid

    def update(self, task_id: int, *, completed=None, advance=None, total=None, description=None, **fields) -> None:
        t = self.tasks[task_id]
        if total is not None:
            t["total"] = total
        if description is not None:
            t["description"] = description
        if completed is not None:
            t["completed"] = completed
        if advance:
            t["completed"] += advance
        t["fields"].update({k: v for k, v in fields.items() if k not in ("visible", "refresh")})
        self._maybe(task_id)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def _maybe(self, tid: int) -> None:
        t = self.tasks[tid]
        finished = t["total"] is not None and t["completed"] >= t["total"]
        if finished and not t["done"]:
            self._line(tid)
        elif not finished and self.clock() - t["last"] >= self.every_s:
            self._line(tid)

    def _line(self, tid: int) -> None:
        t = self.tasks[tid]
        now = self.clock()
        t["last"] = now
        t["done"] = t["total"] is not None and t["completed"] >= t["total"]
        dt = now - t["start"]
        n = t["completed"]
        if t["bytes"]:
            count = f"{n / 1e6:.1f}" + (f"/{t['total'] / 1e6:.1f}" if t["total"] else "") + " MB"
            rate = f", {(n - t['start_completed']) / 1e6 / dt:.1f} MB/s" if dt > 0 else ""
        else:
            count = f"{n:g}" + (f"/{t['total']:g}" if t["total"] is not None else "")
            rate = f", {(n - t['start_completed']) / dt:.2f}/s" if dt > 0 and n > t["start_completed"] else ""
        extra = "".join(f", {k} {_fmt(v)}" for k, v in t["fields"].items())
        print(f"[{time.strftime('%H:%M:%S')}] {t['description']}: {count}{rate}{extra}, {dt:.0f}s elapsed",
              file=self.stream or sys.stderr, flush=True)


def _fmt(v) -> str:
    return f"{v:.0f}" if isinstance(v, float) else str(v)


def _terminal() -> bool:
    return stderr.is_terminal


def byte_progress():
    if not _terminal():
        return LineProgress()
    return Progress(
        SpinnerColumn(finished_text="[green]✓"),
        TextColumn("{task.description}"),
        BarColumn(),
        _BytesIfKnown(),
        TimeElapsedColumn(),
        console=stderr,
    )


def training_progress():
    """Step bar with loss, tokens/s and ETA; train() adds a task with fields loss and tps."""
    if not _terminal():
        return LineProgress()
    from rich.progress import TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
                    TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]:.0f} tok/s"),
                    TimeRemainingColumn(), console=stderr)
