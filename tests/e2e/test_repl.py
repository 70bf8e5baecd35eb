"""The interactive ``localllm run``, typed into a real pseudo-terminal."""

from __future__ import annotations

import io
import re
import sys
import time
from collections.abc import Iterator

import pexpect
import pytest

from conftest import ROOT, Daemon
from localllm.cli.render import WordWrap

MODEL = "gemma3:270m"
PROMPT = ">>> "
ANSWER_TIMEOUT = 60  # the model writes ~70 tokens/s; an answer here is at most a few hundred tokens


class Terminal:
    """A person at a terminal running ``localllm run gemma3:270m``."""

    def __init__(self, daemon: Daemon, *args: str) -> None:
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "localllm.cli.main", "run", MODEL, *args],
            env=daemon.env,
            cwd=str(ROOT),
            encoding="utf-8",
            codec_errors="replace",
            dimensions=(24, 80),
            timeout=ANSWER_TIMEOUT,
        )
        self.opening = self.expect_prompt()  # what came before the first prompt (pull progress, if any)

    def expect_prompt(self, timeout: float = ANSWER_TIMEOUT) -> str:
        """Wait for ``>>> `` and return what was printed before it."""
        self.child.expect_exact(PROMPT, timeout=timeout)
        return self.child.before

    def type(self, line: str) -> None:
        """Type a line and Enter, and wait for the terminal to echo it back."""
        self.child.sendline(line)
        self.child.expect_exact(line)
        self.child.expect_exact("\r\n")

    def say(self, line: str) -> str:
        """Type a line and return everything up to the next prompt."""
        self.type(line)
        return self.expect_prompt()

    def set(self, *settings: str) -> None:
        for setting in settings:
            assert self.say(f"/set {setting}").strip().startswith("Set "), setting


@pytest.fixture
def pulled(gemma_daemon: Daemon) -> Daemon:
    """The module's daemon, with gemma3:270m pulled."""
    return gemma_daemon


@pytest.fixture
def term(pulled: Daemon) -> Iterator[Terminal]:
    terminal = Terminal(pulled)
    yield terminal
    if terminal.child.isalive():
        terminal.child.terminate(force=True)


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def test_a_missing_model_is_pulled_before_the_first_prompt(daemon: Daemon) -> None:
    terminal = Terminal(daemon)
    try:
        assert "pulling manifest" in terminal.opening and "success" in terminal.opening
        terminal.set("parameter temperature 0", "parameter num_predict 5")
        assert words(terminal.say("Hello!"))
    finally:
        terminal.child.terminate(force=True)


def test_a_question_gets_an_answer_then_a_new_prompt(term: Terminal) -> None:
    term.set("parameter num_predict 20")
    answer = term.say("Why is the sky blue? Answer in one sentence.")
    assert words(answer)


def test_num_predict_keeps_the_answer_short(term: Terminal) -> None:
    term.set("parameter temperature 0", "parameter num_predict 5", "verbose")
    answer = term.say("Write a long essay about the history of Rome.")
    counted = re.search(r"eval count:\s+(\d+) token\(s\)", answer.split("prompt eval count")[-1])
    assert counted and int(counted.group(1)) <= 5, answer
    text = answer.split("total duration:")[0]
    assert words(text) and len(text.strip()) < 80


def test_system_message_set_and_shown(term: Terminal) -> None:
    assert "No system message" in term.say("/show system")
    assert term.say("/set system You are a pirate. Answer like one.").strip() == "Set system message."
    assert term.say("/show system").strip() == "You are a pirate. Answer like one."
    # several lines, between triple quotes
    term.type('/set system """You are a poet.')
    term.child.expect_exact("... ")
    term.type('Answer in verse."""')
    assert term.expect_prompt().strip() == "Set system message."
    assert term.say("/show system").strip().splitlines() == ["You are a poet.", "Answer in verse."]


def test_triple_quotes_make_one_multiline_message(term: Terminal) -> None:
    term.set("parameter temperature 0", "parameter num_predict 20")
    term.type('"""Here are two lines.')
    term.child.expect_exact("... ")
    term.type("Repeat the second one: blue ocean.")
    term.child.expect_exact("... ")
    answer = term.say('"""')
    assert words(answer)


def test_show_info_and_other_parts(term: Terminal) -> None:
    info = term.say("/show info")
    assert re.search(r"architecture +gemma3", info) and "Capabilities" in info
    assert "<start_of_turn>" in term.say("/show template")
    assert term.say("/show license").strip().startswith("Gemma Terms of Use")
    term.set("parameter num_predict 7", "parameter stop END", "parameter stop FIN")
    parameters = term.say("/show parameters")
    assert "Model defined parameters:" in parameters and "User defined parameters:" in parameters
    assert re.search(r"num_predict +7", parameters) and re.search(r'stop +"END" "FIN"', parameters)
    assert "Available Commands" in term.say("/show")


def test_clear_forgets_the_conversation(term: Terminal) -> None:
    term.set("parameter temperature 0", "parameter num_predict 1", "verbose")

    def prompt_tokens(question: str) -> int:
        answer = term.say(question)
        counted = re.search(r"prompt eval count:\s+(\d+) token\(s\)", answer)
        assert counted, answer
        return int(counted.group(1))

    first = prompt_tokens("What is the capital of France?")
    assert prompt_tokens("And of Italy?") > first  # the first exchange went along
    assert term.say("/clear").strip() == "Cleared session context"
    assert prompt_tokens("What is the capital of France?") == first


def test_ctrl_c_stops_a_long_answer_and_the_session_goes_on(term: Terminal) -> None:
    term.set("parameter num_predict 2000")
    term.type("Tell me a very long story about a dragon and a lighthouse keeper.")
    term.child.expect(r"\w", timeout=ANSWER_TIMEOUT)  # the answer has begun
    started = time.monotonic()
    term.child.sendintr()
    term.expect_prompt(timeout=10)
    assert time.monotonic() - started < 5

    term.set("parameter num_predict 10")
    started = time.monotonic()
    assert words(term.say("Say hello."))
    assert time.monotonic() - started < 15  # the daemon is not still writing the story

    term.child.sendintr()  # at an empty prompt: a hint, not an exit
    term.child.expect_exact("Use Ctrl + d or /bye to exit.")
    term.expect_prompt()
    assert term.child.isalive()


def test_ctrl_d_exits_cleanly(term: Terminal) -> None:
    term.child.sendeof()
    term.child.expect(pexpect.EOF, timeout=10)
    term.child.close()
    assert term.child.exitstatus == 0


def test_bye_exits_and_keeps_history(term: Terminal, pulled: Daemon) -> None:
    term.say("/set parameter num_predict 3")
    term.type("/bye")
    term.child.expect(pexpect.EOF, timeout=10)
    term.child.close()
    assert term.child.exitstatus == 0
    history = (pulled.home / "history").read_text()
    assert "/set parameter num_predict 3" in history and "/bye" in history


def test_commands_that_help_or_refuse(term: Terminal) -> None:
    assert "/set" in term.say("/?") and "/bye" in term.say("/help")
    assert term.say("/frobnicate").strip() == "Unknown command '/frobnicate'. Type /? for help"
    assert "Usage" in term.say("/save")
    assert "Couldn't set parameter" in term.say("/set parameter num_predict many")
    assert "Couldn't set parameter" in term.say("/set parameter flavour sweet")
    assert term.say("/set format json").strip() == "Set format to 'json' mode."
    assert term.say("/unset format").strip() == "Disabled format."


def test_save_keeps_the_system_prompt_parameters_and_conversation(term: Terminal, pulled: Daemon) -> None:
    term.set("system You answer in one word.", "parameter num_predict 4", "parameter temperature 0")
    first = term.say("Name a colour.").strip()
    assert term.say("/save one-word").strip() == "Created new model 'one-word'"
    with pulled.client() as client:
        shown = client.post("/api/show", json={"model": "one-word"}).json()
    assert shown["system"] == "You answer in one word."
    assert "num_predict                    4" in shown["parameters"]
    assert shown["messages"][0] == {"role": "user", "content": "Name a colour."}
    assert shown["messages"][1]["role"] == "assistant" and shown["messages"][1]["content"].strip() == first
    assert "Error" not in term.say("/load one-word")
    assert "Error" in term.say("/save ../escape")


def test_load_switches_model_and_reports_missing_ones(term: Terminal) -> None:
    assert "Error: model 'ghost:latest' not found" in term.say("/load ghost")
    loaded = term.say(f"/load {MODEL}")
    assert f"Loading model '{MODEL}'" in loaded and "Error" not in loaded
    term.set("parameter num_predict 5", "parameter temperature 0")  # a sampled 5 tokens may hold no word
    assert words(term.say("Hi!"))


def test_answers_wrap_at_word_boundaries() -> None:
    screen = io.StringIO()
    wrap = WordWrap(screen, width=20)
    for piece in ("Hello th", "ere, this is a lon", "g sentence that wraps at twenty.\nNew para", "graph"):
        wrap.write(piece)
    wrap.finish()
    assert screen.getvalue().splitlines() == [
        "Hello there, this is",
        "a long sentence that",
        "wraps at twenty.",
        "New paragraph",
    ]
    unwrapped = io.StringIO()
    WordWrap(unwrapped, width=None).write("no wrapping here at all, however long the line becomes")
    assert "\n" not in unwrapped.getvalue()
