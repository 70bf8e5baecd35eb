"""The CLI as a person runs it, against a real daemon."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from conftest import ROOT, Daemon, free_port, publish
from fakehub import FakeHub


@pytest.fixture
def tiny_repo(hub: FakeHub, tmp_path: Path) -> Path:
    files = publish(hub, tmp_path, "acme/tiny-GGUF", {"tiny.Q8_0.gguf": gguf.LlamaFileType.MOSTLY_Q8_0})
    return files["tiny.Q8_0.gguf"]


def test_pull_list_show_cp_rm(daemon: Daemon, tiny_repo: Path) -> None:
    pulled = daemon.cli("pull", "hf.co/acme/tiny-GGUF")
    assert pulled.returncode == 0, pulled.stderr
    assert "pulling manifest" in pulled.stderr and "success" in pulled.stderr
    assert "verifying sha256 digest" in pulled.stderr

    listing = daemon.cli("list")
    assert listing.returncode == 0
    header, row = listing.stdout.strip().splitlines()[:2]
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert row.split()[0] == "hf.co/acme/tiny-GGUF:latest"
    assert daemon.cli("ls").stdout == listing.stdout

    shown = daemon.cli("show", "hf.co/acme/tiny-GGUF")
    assert "architecture        llama" in shown.stdout
    assert "quantization        Q8_0" in shown.stdout
    assert "context length      256" in shown.stdout
    modelfile = daemon.cli("show", "hf.co/acme/tiny-GGUF", "--modelfile").stdout
    assert "FROM " in modelfile and "sha256-" in modelfile

    copied = daemon.cli("cp", "hf.co/acme/tiny-GGUF", "mine")
    assert copied.stdout.strip() == "copied 'hf.co/acme/tiny-GGUF' to 'mine'"
    assert "mine:latest" in daemon.cli("ls").stdout
    removed = daemon.cli("rm", "mine", "hf.co/acme/tiny-GGUF")
    assert removed.stdout.splitlines() == ["deleted 'mine'", "deleted 'hf.co/acme/tiny-GGUF'"]
    assert daemon.cli("ls").stdout.strip().splitlines() == ["NAME  ID  SIZE  MODIFIED"]


def test_show_flags_print_one_part(daemon: Daemon) -> None:
    assert daemon.cli("pull", "gemma3:270m").returncode == 0
    template = daemon.cli("show", "gemma3:270m", "--template").stdout
    assert "<start_of_turn>" in template and "add_generation_prompt" in template
    params = daemon.cli("show", "gemma3:270m", "--parameters").stdout
    assert 'stop                           "<end_of_turn>"' in params
    assert daemon.cli("show", "gemma3:270m", "--license").stdout.startswith("Gemma Terms of Use")
    assert daemon.cli("show", "gemma3:270m", "--system").stdout.strip() == ""
    info = daemon.cli("show", "gemma3:270m").stdout
    assert "parameters          268.10M" in info and "Capabilities" in info


def test_errors_are_one_line_for_a_person(daemon: Daemon) -> None:
    bad = daemon.cli("pull", "../../x")
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("Error: invalid model name '../../x'")
    missing = daemon.cli("show", "ghost")
    assert missing.returncode == 1 and missing.stderr.strip() == "Error: model 'ghost' not found"
    assert "Traceback" not in bad.stderr + missing.stderr


def test_no_daemon_says_how_to_start_one(tmp_path: Path) -> None:
    env = {**os.environ, "LOCALLLM_HOST": f"127.0.0.1:{free_port()}"}
    result = subprocess.run(
        [sys.executable, "-m", "localllm.cli.main", "list"], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not connect to localllm" in lines[0] and "localllm serve" in lines[0]


def test_help_lists_the_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "localllm.cli.main", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    for command in ("serve", "pull", "list", "show", "cp", "rm"):
        assert command in result.stdout
