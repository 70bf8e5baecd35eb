"""``localllm run`` with an image model: a progress bar over the steps, then a PNG in the current folder."""

from __future__ import annotations

import base64
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..client import Client
from ..errors import LocalLLMError


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if not match:
        raise LocalLLMError(f"--size must be WIDTHxHEIGHT, e.g. 512x512, not {text!r}")
    return int(match.group(1)), int(match.group(2))


def default_path(model: str) -> Path:
    """``<model>-<time>.png`` in the current folder, never over an existing file."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", model.rsplit("/", 1)[-1]).strip("-.") or "image"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path.cwd() / f"{stem}-{stamp}.png"
    n = 1
    while path.exists():
        n += 1
        path = Path.cwd() / f"{stem}-{stamp}-{n}.png"
    return path


def run_image(client: Client, model: str, prompt: str, progress_to: Console, *, output: str | None = None,
              size: str | None = None, steps: int | None = None, seed: int | None = None,
              negative: str | None = None, keep_alive: str | None = None) -> Path:
    """Generate one image, show the steps, write the PNG; returns its path."""
    if not prompt.strip():
        raise LocalLLMError("an image model needs a prompt: localllm run MODEL \"a lighthouse at dusk\"")
    width, height = parse_size(size) if size else (None, None)
    options = {k: v for k, v in {"seed": seed, "negative_prompt": negative}.items() if v is not None}
    final: dict[str, Any] | None = None
    bar = Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=progress_to, transient=False)
    with bar:
        task = bar.add_task("steps", total=None)
        for event in client.generate(model, prompt, width=width, height=height, steps=steps,
                                     options=options or None, keep_alive=keep_alive):
            if event.get("done"):
                final = event
                break
            if event.get("total"):
                bar.update(task, total=event["total"], completed=event.get("completed", 0))
    if not final or not final.get("image"):
        raise LocalLLMError("the daemon sent no image")
    path = Path(output) if output else default_path(model)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(base64.b64decode(final["image"]))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise LocalLLMError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path
