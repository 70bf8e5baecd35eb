#!/usr/bin/env bash
# Set everything up (the daemon and the CLI only), start the daemon, and stream an answer from the embedded
# default model, smollm2:135m (an instruct model shipped on PyPI).
# Uses LOCALLLM_HOME (default ~/.localllm) and LOCALLLM_HOST (default 127.0.0.1:11434); needs no network.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
localllm=.venv/bin/localllm

started=""
if ! $localllm ls >/dev/null 2>&1; then
    log=$(mktemp -t localllm-serve.XXXXXX.log)
    $localllm serve >"$log" 2>&1 &
    started=$!
    trap 'kill $started 2>/dev/null || true' EXIT
    for _ in $(seq 1 100); do
        $localllm ls >/dev/null 2>&1 && break
        if ! kill -0 "$started" 2>/dev/null; then
            echo "the daemon did not start:" >&2; cat "$log" >&2; exit 1
        fi
        sleep 0.2
    done
    echo "started localllm serve (log: $log)"
fi

set -x
$localllm pull smollm2:135m
$localllm list
$localllm run smollm2:135m "Why is the sky blue?" --verbose
set +x
