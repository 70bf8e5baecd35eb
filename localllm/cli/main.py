"""``localllm``: run a model server and manage its models."""

from __future__ import annotations

import argparse
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from .. import __version__
from ..client import Client
from ..config import get_settings
from ..errors import LocalLLMError
from .create import create as create_model
from .progress import show_pull
from .render import print_model_info
from .repl import Session, answer_once, ensure_model, run_repl

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit in ("B", "KB", "MB") else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


_AGO_UNITS = (  # unit, its length in seconds, used below this age
    ("second", 1, 60),
    ("minute", 60, 3600),
    ("hour", 3600, 86400),
    ("day", 86400, 86400 * 30),
    ("month", 86400 * 30, 86400 * 365),
    ("year", 86400 * 365, float("inf")),
)


def human_ago(iso: str) -> str:
    """``2026-11-30T08:00:00+00:00`` → ``3 minutes ago``, as ``ollama list`` shows it."""
    try:
        seconds = (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    except (ValueError, TypeError):
        return iso
    if seconds < 5:
        return "Just now"
    for unit, length, below in _AGO_UNITS:
        if seconds < below:
            count = int(seconds // length)
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return iso


def _human_span(seconds: float) -> str:
    """How Ollama says a span of time: ``4 minutes``, ``About an hour``, ``3 days``."""
    if seconds < 1:
        return "Less than a second"
    if seconds < 60:
        return "1 second" if int(seconds) == 1 else f"{int(seconds)} seconds"
    minutes = int(seconds // 60)
    if minutes < 60:
        return "About a minute" if minutes == 1 else f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 14:
        return f"{hours // 24} days"
    if hours < 24 * 60:
        return f"{hours // (24 * 7)} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // (24 * 30)} months"
    return f"{hours // (24 * 365)} years"


def human_until(iso: str | None) -> str:
    """An ``expires_at`` → ``4 minutes from now``; ``Forever`` when it never (or in 20+ years) comes."""
    if not iso:
        return "Forever"
    try:
        moment = datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", iso))
    except ValueError:
        return iso
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = (moment - datetime.now(UTC)).total_seconds()
    if seconds > 20 * 365 * 86400:
        return "Forever"
    if seconds < 0:
        return "Stopping..."
    return f"{_human_span(seconds)} from now"


def human_processor(size: int, size_vram: int) -> str:
    """Where a loaded model lives, as ``ollama ps`` says it."""
    if not size or size_vram <= 0:
        return "100% CPU"
    if size_vram >= size:
        return "100% GPU"
    gpu = round(100 * size_vram / size)
    return f"{100 - gpu}%/{gpu}% CPU/GPU"


# --- commands ---------------------------------------------------------------
def cmd_serve(_args: argparse.Namespace) -> None:
    """The daemon is its own program, ``python -m localllm.server``: the CLI starts it in its place (same
    process id, same terminal, Ctrl-C reaches it), and never imports the server itself."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "localllm.server"])


def cmd_pull(args: argparse.Namespace) -> None:
    with Client() as client:
        show_pull(client.pull(args.model, insecure=args.insecure), err)


def cmd_list(_args: argparse.Namespace) -> None:
    with Client() as client:
        models = client.list()
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in ("NAME", "ID", "SIZE", "MODIFIED"):
        table.add_column(column, no_wrap=True)
    for model in models:
        table.add_row(model["name"], model["digest"][:12], human_size(model["size"]), human_ago(model["modified_at"]))
    out.print(table)


def cmd_show(args: argparse.Namespace) -> None:
    with Client() as client:
        info = client.show(args.model)
    for flag in ("modelfile", "parameters", "template", "system", "license"):
        if getattr(args, flag):
            out.print(info.get(flag) or "", markup=False)
            return
    print_model_info(info, out)


def _model_and_prompt(args: argparse.Namespace) -> tuple[str, list[str]]:
    """``run`` without a model name (``localllm run``, ``localllm run "Why is the sky blue?"``) uses the
    configured default model. Only a quoted phrase (a first argument with spaces) is taken for the prompt:
    any other first word is a model name, so a mistyped one is an error, never a chat with another model."""
    words = list(args.prompt)
    if args.model is None:
        return get_settings().default_model, words
    if any(char.isspace() for char in args.model.strip()):
        return get_settings().default_model, [args.model, *words]
    return args.model, words


def cmd_run(args: argparse.Namespace) -> None:
    args.model, words = _model_and_prompt(args)
    prompt = " ".join(words)
    piped = not sys.stdin.isatty()
    if piped:
        stdin_text = sys.stdin.read()
        if stdin_text.strip():
            prompt = f"{stdin_text}\n\n{prompt}" if prompt else stdin_text
        if not prompt.strip():
            raise LocalLLMError("nothing to answer: give a prompt, or pipe some text in")
    session = Session(
        model=args.model,
        format=args.format,
        keep_alive=args.keepalive,
        verbose=args.verbose,
        wordwrap=not (args.nowordwrap or piped),
    )
    with Client() as client:
        info = ensure_model(client, args.model, err) if prompt else _shown(client, args.model)
        if info is not None and "image" in (info.get("capabilities") or []):
            from .images import run_image

            path = run_image(client, args.model, prompt, err, output=args.output, size=args.size, steps=args.steps,
                             seed=args.seed, negative=args.negative, keep_alive=args.keepalive)
            out.print(str(path), markup=False)
            return
        if not prompt:
            run_repl(client, session)  # pulls and loads the model before the first prompt
            return
        answer_once(client, session, prompt)


def cmd_create(args: argparse.Namespace) -> None:
    if args.quantize:
        raise LocalLLMError("quantizing is not supported: quantize the GGUF with llama.cpp's llama-quantize first")
    with Client() as client:
        create_model(client, args.model, Path(args.file), err)


def _shown(client: Client, model: str) -> dict | None:
    """The model's /api/show document, None when it is not here yet (the chat pulls it)."""
    from ..errors import ApiError

    try:
        return client.show(model)
    except ApiError as exc:
        if exc.status_code != 404:
            raise
        return None


def cmd_ps(_args: argparse.Namespace) -> None:
    with Client() as client:
        models = client.ps()
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in ("NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"):
        table.add_column(column, no_wrap=True)
    for model in models:
        digest = model.get("digest", "").removeprefix("sha256:")
        table.add_row(
            model["name"],
            digest[:12],
            human_size(model.get("size", 0)),
            human_processor(model.get("size", 0), model.get("size_vram", 0)),
            human_until(model.get("expires_at")),
        )
    out.print(table)


def cmd_stop(args: argparse.Namespace) -> None:
    with Client() as client:
        client.stop(args.model)


def cmd_cp(args: argparse.Namespace) -> None:
    with Client() as client:
        client.copy(args.source, args.destination)
    out.print(f"copied '{args.source}' to '{args.destination}'")


def cmd_rm(args: argparse.Namespace) -> None:
    with Client() as client:
        for model in args.models:
            client.delete(model)
            out.print(f"deleted '{model}'")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="localllm",
        description="Run large language models on your own machine.",
        epilog="The CLI talks to the daemon at LOCALLLM_HOST (default 127.0.0.1:11434); "
        "state lives in LOCALLLM_HOME (default ~/.localllm).",
    )
    parser.add_argument("--version", action="version", version=f"localllm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="Start the daemon")
    serve.set_defaults(func=cmd_serve)

    pull = commands.add_parser("pull", help="Pull a model from the catalog or the Hugging Face Hub")
    pull.add_argument("model", help="e.g. gemma3:270m, mistral:7b-instruct-q8_0, hf.co/user/repo:Q4_K_M")
    pull.add_argument("--insecure", action="store_true", help="Accepted for Ollama compatibility")
    pull.set_defaults(func=cmd_pull)

    for alias in ("list", "ls"):
        listing = commands.add_parser(alias, help="List models" if alias == "list" else "Alias of list")
        listing.set_defaults(func=cmd_list)

    show = commands.add_parser("show", help="Show information about a model")
    show.add_argument("model")
    group = show.add_mutually_exclusive_group()
    for flag, text in (
        ("modelfile", "the Modelfile of the model"),
        ("parameters", "its parameters"),
        ("template", "its prompt template"),
        ("system", "its system message"),
        ("license", "its license"),
    ):
        group.add_argument(f"--{flag}", action="store_true", help=f"Show {text}")
    show.set_defaults(func=cmd_show)

    run = commands.add_parser("run", help="Run a model: answer a prompt, or chat with it")
    run.add_argument("model", nargs="?", help="the model (default: LOCALLLM_DEFAULT_MODEL, smollm2:135m)")
    run.add_argument("prompt", nargs="*", help="Answer this and exit (without it: an interactive chat)")
    run.add_argument("--verbose", action="store_true", help="Show timings and token rates after each answer")
    run.add_argument("--format", choices=["json"], help="Answer in JSON")
    run.add_argument("--keepalive", metavar="DURATION", help="How long the model stays loaded, e.g. 10m, 1h, -1")
    run.add_argument("--nowordwrap", action="store_true", help="Don't wrap answers to the terminal width")
    images = run.add_argument_group("image models")
    images.add_argument("--output", "-o", metavar="FILE", help="Where to write the PNG (default: the current folder)")
    images.add_argument("--size", metavar="WxH", help="Image size, e.g. 512x512")
    images.add_argument("--steps", type=int, help="Denoising steps")
    images.add_argument("--seed", type=int, help="Seed: the same seed makes the same image")
    images.add_argument("--negative", metavar="TEXT", help="Negative prompt: what the image should not show")
    run.set_defaults(func=cmd_run)

    create = commands.add_parser("create", help="Create a model from a Modelfile")
    create.add_argument("model", help="the new model's name, e.g. my-assistant or me/helper:v1")
    create.add_argument("-f", "--file", default="Modelfile", help="the Modelfile (default: ./Modelfile)")
    create.add_argument("-q", "--quantize", help="Not supported (quantize with llama.cpp's tools)")
    create.set_defaults(func=cmd_create)

    ps = commands.add_parser("ps", help="List running models")
    ps.set_defaults(func=cmd_ps)

    stop = commands.add_parser("stop", help="Stop (unload) a running model")
    stop.add_argument("model")
    stop.set_defaults(func=cmd_stop)

    cp = commands.add_parser("cp", help="Copy a model")
    cp.add_argument("source")
    cp.add_argument("destination")
    cp.set_defaults(func=cmd_cp)

    rm = commands.add_parser("rm", help="Remove one or more models")
    rm.add_argument("models", nargs="+", metavar="model")
    rm.set_defaults(func=cmd_rm)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; ``run``'s prompt words may come before and after its flags."""
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) == "run" and not any(word.startswith("-") for word in extra):
        args.prompt += extra  # `run MODEL --verbose why is the sky blue`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        args.func(args)
    except LocalLLMError as exc:
        err.print(f"Error: {exc.message}", markup=False)
        return 1
    except ValidationError as exc:
        problems = "; ".join(f"LOCALLLM_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        err.print(f"Error: invalid setting ({problems})", markup=False)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `localllm run MODEL PROMPT | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
