"""Pull progress as rich progress bars: one bar per file, with speed and ETA."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


def _bars(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _step_bars(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console)


def show_pull(events: Iterable[dict[str, Any]], console: Console) -> None:
    """Render Ollama-shaped pull events: bars while files arrive, status lines in between."""
    progress: Progress | None = None
    tasks: dict[str, TaskID] = {}
    kind = ""
    try:
        for event in events:
            # a file's bar is keyed by its digest; an image model's conversion (in steps) by its status
            digest = event.get("digest") or (event.get("status") if event.get("total") else None)
            if digest and event.get("total"):
                this = "bytes" if event.get("digest") else "steps"
                if progress is not None and kind != this:
                    progress.stop()
                    progress = None
                if progress is None:
                    kind = this
                    progress = _bars(console) if this == "bytes" else _step_bars(console)
                    progress.start()
                    tasks.clear()
                if digest not in tasks:
                    tasks[digest] = progress.add_task(event["status"], total=event["total"])
                progress.update(tasks[digest], completed=event.get("completed", 0))
                continue
            if progress is not None:  # the files are done: leave their bars, go on below them
                progress.stop()
                progress = None
            console.print(event.get("status", ""), markup=False)
    finally:
        if progress is not None:
            progress.stop()
