"""``localllm run``: one answer, or an interactive chat with a model as Ollama's REPL has it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from ..client import Client
from ..config import get_settings
from ..errors import ApiError, LocalLLMError
from ..llm.options import parse_option
from .progress import show_pull
from .render import WordWrap, print_model_info, print_stats

PROMPT = ">>> "
CONTINUATION = "... "
QUOTES = '"""'

HELP = f"""Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use {QUOTES} to begin a multi-line message.
"""

HELP_SET = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set format json       Enable JSON mode
  /unset format          Disable JSON mode
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
"""

HELP_PARAMETERS = """Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter num_gpu <int>          The number of layers to send to the GPU
  /set parameter stop <string> ...      Set the stop parameters (each call adds to the list)
"""

HELP_SHOW = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""

HELP_SHORTCUTS = """Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line (Home)
  Ctrl + e            Move to the end of the line (End)
  Alt + b             Move back (left) one word
  Alt + f             Move forward (right) one word
  Ctrl + k            Delete the sentence after the cursor
  Ctrl + u            Delete the sentence before the cursor
  Ctrl + w            Delete the word before the cursor
  Up / Down           Walk through earlier input

  Ctrl + l            Clear the screen
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit (/bye)
"""


@dataclass
class Session:
    """What one ``run`` sends with every request, and the conversation so far."""

    model: str
    options: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    format: str | None = None
    keep_alive: str | None = None
    verbose: bool = False
    wordwrap: bool = True
    messages: list[dict[str, str]] = field(default_factory=list)

    def request_messages(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.messages


# --- talking to the daemon ----------------------------------------------------
def ensure_model(client: Client, model: str, progress: Console) -> dict[str, Any]:
    """The model's ``/api/show`` document, pulling the model first when it is not here."""
    try:
        return client.show(model)
    except ApiError as exc:
        if exc.status_code != 404:
            raise
    show_pull(client.pull(model), progress)
    return client.show(model)


def stream_answer(client: Client, session: Session, messages: list[dict[str, str]]) -> tuple[str, bool]:
    """Stream one answer to stdout as it arrives; return its text and whether Ctrl+C cut it short.

    On Ctrl+C the HTTP stream is closed, which tells the daemon to stop generating.
    """
    events = client.chat(
        session.model,
        messages,
        options=session.options or None,
        format=session.format,
        keep_alive=session.keep_alive,
    )
    wrap = WordWrap.for_terminal(sys.stdout, session.wordwrap)
    pieces: list[str] = []
    final: dict[str, Any] | None = None
    interrupted = False
    try:
        for event in events:
            piece = (event.get("message") or {}).get("content") or ""
            if piece:
                pieces.append(piece)
                wrap.write(piece)
            if event.get("done"):
                final = event
    except KeyboardInterrupt:
        interrupted = True
    finally:
        events.close()
        wrap.finish()
    if session.verbose and final is not None:
        print_stats(final, sys.stderr)
    return "".join(pieces), interrupted


def answer_once(client: Client, session: Session, prompt: str) -> None:
    """``localllm run MODEL PROMPT``: one answer, then exit (Ctrl+C exits with 130)."""
    _, interrupted = stream_answer(client, session, [*session.request_messages(), {"role": "user", "content": prompt}])
    if interrupted:
        raise KeyboardInterrupt


# --- reading what the person types -------------------------------------------
class History:
    """Line editing and history through the stdlib ``readline``, kept in ``$LOCALLLM_HOME/history``."""

    LENGTH = 1000

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            import readline
        except ImportError:  # e.g. Windows without pyreadline: plain input() still works
            self.readline = None
            return
        self.readline = readline
        readline.set_history_length(self.LENGTH)
        try:
            readline.read_history_file(path)
        except OSError:
            pass

    def line_buffer(self) -> str:
        return self.readline.get_line_buffer() if self.readline else ""

    def save(self) -> None:
        if self.readline is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.readline.write_history_file(self.path)
        except OSError:
            pass  # history is a convenience; a read-only home must not break the session


def opens_block(line: str) -> bool:
    """Does this line start a multi-line message (``\"\"\"`` not closed on the same line)?"""
    text = line.lstrip()
    if not (text.startswith(QUOTES) or (text.startswith("/set system") and QUOTES in text)):
        return False
    return text.count(QUOTES) % 2 == 1


def read_message() -> str:
    """One message: a line, or the lines from an opening ``\"\"\"`` to a line ending with one."""
    first = input(PROMPT)
    if not opens_block(first):
        return first
    lines = [first]
    while True:
        line = input(CONTINUATION)
        lines.append(line)
        if line.rstrip().endswith(QUOTES):
            return "\n".join(lines)


def unquote(text: str) -> str:
    """``\"\"\"text\"\"\"`` → ``text``; also plain ``"text"``."""
    text = text.strip()
    for quote in (QUOTES, '"'):
        if len(text) >= 2 * len(quote) and text.startswith(quote) and text.endswith(quote):
            return text[len(quote) : -len(quote)].strip()
    if text.startswith(QUOTES):
        return text[len(QUOTES) :].strip()
    return text


# --- the REPL -------------------------------------------------------------------
class Repl:
    """The interactive loop: messages go to the model, ``/commands`` change the session."""

    def __init__(self, client: Client, session: Session) -> None:
        self.client = client
        self.session = session
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.history = History(get_settings().home / "history")
        self.commands: dict[str, Callable[[list[str], str], bool]] = {
            "/set": self.do_set,
            "/unset": self.do_unset,
            "/show": self.do_show,
            "/clear": self.do_clear,
            "/load": self.do_load,
            "/save": self.do_save,
            "/bye": self.do_bye,
            "/exit": self.do_bye,
            "/?": self.do_help,
            "/help": self.do_help,
        }

    def run(self) -> None:
        """Until ``/bye`` or Ctrl+D."""
        try:
            self._load(self.session.model)
            while self._turn():
                pass
        finally:
            self.history.save()

    def _turn(self) -> bool:
        """Read and handle one message or command; False when the session should end."""
        try:
            text = read_message()
        except KeyboardInterrupt:
            if not self.history.line_buffer():
                print("\nUse Ctrl + d or /bye to exit.")
            else:
                print()
            return True
        except EOFError:
            print()
            return False
        text = text.strip()
        if not text:
            return True
        try:
            if text.startswith("/"):
                return self.command(text)
            self.ask(unquote(text) if text.startswith(QUOTES) else text)
        except LocalLLMError as exc:
            self.err.print(f"Error: {exc.message}", markup=False)
        except KeyboardInterrupt:  # e.g. during a /load's pull: back to the prompt
            print()
        return True

    def ask(self, prompt: str) -> None:
        """Send one user message with the conversation so far; remember the answer (even a cut one)."""
        if not prompt:
            return
        self.session.messages.append({"role": "user", "content": prompt})
        try:
            text, _ = stream_answer(self.client, self.session, self.session.request_messages())
        except LocalLLMError:
            self.session.messages.pop()  # unanswered: don't send it again next turn
            raise
        if text:
            self.session.messages.append({"role": "assistant", "content": text})
        else:
            self.session.messages.pop()
        print()

    def command(self, text: str) -> bool:
        words = text.split()
        handler = self.commands.get(words[0].lower())
        if handler is None:
            print(f"Unknown command '{words[0]}'. Type /? for help")
            return True
        return handler(words[1:], text)

    def _load(self, model: str) -> None:
        """Make sure the model is here (pulling it if not) and loaded, before the first prompt."""
        ensure_model(self.client, model, self.err)
        for _ in self.client.chat(model, [], keep_alive=self.session.keep_alive):
            pass

    # --- /commands; each returns False to end the session ---------------------
    def do_set(self, args: list[str], text: str) -> bool:
        if not args:
            print(HELP_SET)
            return True
        what = args[0].lower()
        if what == "parameter":
            self._set_parameter(args[1:])
        elif what == "system":
            rest = text.split(None, 2)[2] if len(args) > 1 else ""
            if not unquote(rest):
                print('Usage: /set system <message>  (or /set system """ to type several lines)')
            else:
                self.session.system = unquote(rest)
                print("Set system message.")
        elif what == "format":
            if args[1:] == ["json"]:
                self.session.format = "json"
                print("Set format to 'json' mode.")
            else:
                print("Invalid or missing format. For 'json' mode use '/set format json'")
        elif what in ("verbose", "quiet"):
            self.session.verbose = what == "verbose"
            print(f"Set '{what}' mode.")
        elif what in ("wordwrap", "nowordwrap"):
            self.session.wordwrap = what == "wordwrap"
            print(f"Set '{what}' mode.")
        else:
            print(f"Unknown command '/set {args[0]}'. Type /? set for help")
        return True

    def _set_parameter(self, args: list[str]) -> None:
        if len(args) < 2:
            print(HELP_PARAMETERS)
            return
        name, values = args[0], args[1:]
        if name == "stop":
            stops = self.session.options.setdefault("stop", [])
            stops.extend(values)
            print(f"Set parameter 'stop' to {', '.join(repr(s) for s in stops)}")
            return
        try:
            self.session.options[name] = parse_option(name, " ".join(values))
        except ValueError as exc:
            print(f"Couldn't set parameter: {exc}")
            return
        print(f"Set parameter '{name}' to '{' '.join(values)}'")

    def do_unset(self, args: list[str], _text: str) -> bool:
        what = args[0].lower() if args else ""
        if what == "format":
            self.session.format = None
            print("Disabled format.")
        elif what == "system":
            self.session.system = None
            print("Cleared system message.")
        elif what == "parameter" and len(args) == 2:
            self.session.options.pop(args[1], None)
            print(f"Unset parameter '{args[1]}'.")
        else:
            print("Usage: /unset format | /unset system | /unset parameter NAME")
        return True

    def do_show(self, args: list[str], _text: str) -> bool:
        what = args[0].lower() if args else ""
        if what not in ("info", "license", "modelfile", "parameters", "system", "template"):
            print(HELP_SHOW)
            return True
        info = self.client.show(self.session.model)
        if what == "info":
            print_model_info(info, self.out)  # ends with a blank line of its own
            return True
        if what == "parameters":
            self._show_parameters(info)
        elif what == "system":
            print(self.session.system or info.get("system") or "No system message was specified for this model.")
        else:
            label = {"modelfile": "Modelfile", "template": "template", "license": "license"}[what]
            self.out.print(info.get(what) or f"No {label} was specified for this model.", markup=False)
        print()
        return True

    def _show_parameters(self, info: dict[str, Any]) -> None:
        if info.get("parameters"):
            print("Model defined parameters:")
            print(info["parameters"])
        else:
            print("No parameters were specified for this model.")
        if self.session.options:
            print("\nUser defined parameters:")
            for name, value in self.session.options.items():
                shown = " ".join(f'"{v}"' for v in value) if isinstance(value, list) else value
                print(f"{name:<30} {shown}")

    def do_clear(self, _args: list[str], _text: str) -> bool:
        self.session.messages.clear()
        print("Cleared session context")
        return True

    def do_load(self, args: list[str], _text: str) -> bool:
        if len(args) != 1:
            print("Usage: /load <model>")
            return True
        print(f"Loading model '{args[0]}'")
        self._load(args[0])  # errors leave the session on the current model
        self.session.model = args[0]
        self.session.messages.clear()
        return True

    def do_save(self, args: list[str], _text: str) -> bool:
        """A new model from this one with the session's system prompt, parameters and conversation."""
        if len(args) != 1:
            print("Usage:\n  /save <modelname>")
            return True
        session = self.session
        fields: dict[str, Any] = {"from": session.model, "messages": [dict(m) for m in session.messages]}
        if session.system is not None:
            fields["system"] = session.system
        if session.options:
            fields["parameters"] = dict(session.options)
        for _event in self.client.create(args[0], **fields):
            pass
        print(f"Created new model '{args[0]}'")
        return True

    def do_bye(self, _args: list[str], _text: str) -> bool:
        return False

    def do_help(self, args: list[str], _text: str) -> bool:
        topic = args[0].lower() if args else ""
        print({"set": HELP_SET, "show": HELP_SHOW, "shortcuts": HELP_SHORTCUTS}.get(topic, HELP))
        return True


def run_repl(client: Client, session: Session) -> None:
    Repl(client, session).run()
