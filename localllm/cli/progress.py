"""Pull progress as rich progress bars: one bar per file, with speed and ETA."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


def show_pull(events: Iterable[dict[str, Any]], console: Console) -> None:
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, TaskID] = {}
    with progress:
        for event in events:
            digest = event.get("digest")
            if digest and event.get("total"):
                task = tasks.get(digest)
                if task is None:
                    task = tasks[digest] = progress.add_task(event["status"], total=event["total"])
                progress.update(task, completed=event.get("completed", 0))
            else:
                progress.console.print(event.get("status", ""))
