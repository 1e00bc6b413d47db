"""The progress display every long command uses (on stderr, so stdout stays parseable)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

stderr = Console(stderr=True)


class _BytesIfKnown(ProgressColumn):
    """Byte counts for tasks that declared a size in bytes; nothing for steps of unknown length."""

    def __init__(self) -> None:
        super().__init__()
        self._bytes = DownloadColumn()

    def render(self, task) -> Text:
        return self._bytes.render(task) if task.fields.get("bytes") else Text("")


def byte_progress() -> Progress:
    return Progress(
        SpinnerColumn(finished_text="[green]✓"),
        TextColumn("{task.description}"),
        BarColumn(),
        _BytesIfKnown(),
        TimeElapsedColumn(),
        console=stderr,
    )


def training_progress() -> Progress:
    """Step bar with loss, tokens/s and ETA; train() adds a task with fields loss and tps."""
    from rich.progress import TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
                    TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]:.0f} tok/s"),
                    TimeRemainingColumn(), console=stderr)
