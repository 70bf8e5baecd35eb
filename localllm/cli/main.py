"""``localllm``: run a model server and manage its models."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from .. import __version__
from ..client import Client
from ..errors import LocalLLMError
from .progress import show_pull

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


# --- commands ---------------------------------------------------------------
def cmd_serve(_args: argparse.Namespace) -> None:
    from ..server import serve

    serve()


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


def _section(title: str, rows: list[tuple[str, Any]] | list[str]) -> None:
    out.print(f"  {title}")
    for row in rows:
        if isinstance(row, tuple):
            out.print(f"    {row[0]:<20}{row[1]}")
        else:
            out.print(f"    {row}")
    out.print()


def cmd_show(args: argparse.Namespace) -> None:
    with Client() as client:
        info = client.show(args.model)
    for flag in ("modelfile", "parameters", "template", "system", "license"):
        if getattr(args, flag):
            out.print(info.get(flag) or "", markup=False)
            return
    model_info = info.get("model_info") or {}
    details = info.get("details") or {}
    arch = model_info.get("general.architecture", details.get("family", ""))
    rows: list[tuple[str, Any]] = [
        ("architecture", arch),
        ("parameters", details.get("parameter_size", "")),
    ]
    for label, key in (("context length", "context_length"), ("embedding length", "embedding_length")):
        if f"{arch}.{key}" in model_info:
            rows.append((label, model_info[f"{arch}.{key}"]))
    rows.append(("quantization", details.get("quantization_level", "")))
    out.print()
    _section("Model", rows)
    _section("Capabilities", list(info.get("capabilities") or []))
    if info.get("parameters"):
        _section("Parameters", info["parameters"].splitlines())
    if info.get("system"):
        _section("System", info["system"].splitlines()[:4])
    if info.get("license"):
        _section("License", [line for line in info["license"].splitlines() if line.strip()][:2])


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

    cp = commands.add_parser("cp", help="Copy a model")
    cp.add_argument("source")
    cp.add_argument("destination")
    cp.set_defaults(func=cmd_cp)

    rm = commands.add_parser("rm", help="Remove one or more models")
    rm.add_argument("models", nargs="+", metavar="model")
    rm.set_defaults(func=cmd_rm)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
