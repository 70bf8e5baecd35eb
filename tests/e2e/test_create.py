"""Creating models: ``localllm create -f Modelfile``, ``/api/create`` in both forms, adapters, round trips."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import ollama

from conftest import Daemon, tags
from ggufs import write_split_llama, write_tiny_llama, write_tiny_lora

TINY_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"


def manifest_layers(daemon: Daemon, name: str) -> dict[str, list[str]]:
    """Media type (short) -> digests, read from the manifest the daemon wrote."""
    host, namespace, model, tag = "registry.ollama.ai", "library", *name.split(":")
    if "/" in model:
        namespace, model = model.split("/")
    path = daemon.home / "models" / "manifests" / host / namespace / model / tag
    layers: dict[str, list[str]] = {}
    for layer in json.loads(path.read_text())["layers"]:
        layers.setdefault(layer["mediaType"].rsplit(".", 1)[-1], []).append(layer["digest"])
    return layers


def create_events(daemon: Daemon, body: dict) -> tuple[int, list[dict]]:
    with daemon.client() as client, client.stream("POST", "/api/create", json=body) as response:
        response.read()
        if response.status_code != 200:
            return response.status_code, [response.json()]
        return 200, [json.loads(line) for line in response.text.splitlines() if line.strip()]


def upload(daemon: Daemon, path: Path) -> str:
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    with daemon.client() as client:
        assert client.post(f"/api/blobs/{digest}", content=path.read_bytes()).status_code in (200, 201)
    return digest


def answer(daemon: Daemon, model: str, prompt: str = "hello world", **options: object) -> str:
    with daemon.client() as client:
        response = client.post("/api/generate", json={
            "model": model, "prompt": prompt, "stream": False,
            "options": {"temperature": 0, "num_predict": 12, **options},
        })
    assert response.status_code == 200, response.text
    return response.json()["response"]


# --- from the embedded model, through the CLI ---------------------------------------------------------------
GEMMA_TEMPLATE = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""


def test_a_modelfile_from_a_model_shares_its_weights_and_round_trips(gemma_daemon: Daemon, tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(  # values over several lines in "quotes", as Ollama reads and writes them
        "# a persona\n"
        "FROM gemma3:270m\n"
        f'TEMPLATE "{GEMMA_TEMPLATE}"\n'
        "PARAMETER temperature 0.2\n"
        "PARAMETER stop <end_of_turn>\n"
        'PARAMETER stop "\n\n"\n'
        'SYSTEM "You are a terse pirate.\nYou say arr."\n'
        "MESSAGE user Ahoy?\n"
        "MESSAGE assistant Arr.\n"
        'LICENSE """my terms"""\n'
    )
    result = gemma_daemon.cli("create", "pirate", "-f", str(modelfile))
    assert result.returncode == 0, result.stderr
    assert "success" in result.stderr
    assert manifest_layers(gemma_daemon, "pirate:latest")["model"] == manifest_layers(
        gemma_daemon, "gemma3:270m")["model"]  # the weights blob is shared, not copied

    with gemma_daemon.client() as client:
        shown = client.post("/api/show", json={"model": "pirate"}).json()
    assert shown["system"] == "You are a terse pirate.\nYou say arr."
    assert shown["template"] == GEMMA_TEMPLATE
    assert shown["messages"] == [{"role": "user", "content": "Ahoy?"}, {"role": "assistant", "content": "Arr."}]
    assert "temperature                    0.2" in shown["parameters"]
    assert "num_predict                    200" in shown["parameters"]  # inherited from gemma3:270m
    assert shown["license"].startswith("my terms")

    # show --modelfile writes a Modelfile that recreates an equivalent model
    printed = gemma_daemon.cli("show", "pirate", "--modelfile")
    assert printed.returncode == 0, printed.stderr
    again = tmp_path / "Modelfile.again"
    again.write_text(printed.stdout)
    result = gemma_daemon.cli("create", "pirate2", "-f", str(again))
    assert result.returncode == 0, result.stderr
    first, second = manifest_layers(gemma_daemon, "pirate:latest"), manifest_layers(gemma_daemon, "pirate2:latest")
    assert first == second
    with gemma_daemon.client() as client:
        again_shown = client.post("/api/show", json={"model": "pirate2"}).json()
    assert [again_shown[key] for key in ("template", "system", "parameters", "messages")] == [
        shown[key] for key in ("template", "system", "parameters", "messages")]
    assert answer(gemma_daemon, "pirate2", "Where is the treasure?")


def test_create_reports_a_bad_modelfile_by_line_and_creates_nothing(gemma_daemon: Daemon, tmp_path: Path) -> None:
    before = set(tags(gemma_daemon))
    cases = {
        "PARAMETER temperature 1\n": "no FROM",
        "FROM gemma3:270m\nPARAMETR temperature 1\n": "line 2: unknown instruction 'PARAMETR'",
        'FROM gemma3:270m\nSYSTEM """\nnever closed\n': "line 2: the quoted value of SYSTEM opened here is never "
                                                       "closed",
        "FROM ./missing.gguf\n": "line 1: FROM ./missing.gguf: no such file",
        "FROM gemma3:270m\nPARAMETER temprature 1\n": "line 2: unknown parameter 'temprature'",
        "FROM gemma3:270m\nTEMPLATE {% if %}\n": "line 1, column",
        'FROM gemma3:270m\nTEMPLATE """{{ raise_exception("no way") }}"""\n': "no way",
        'FROM gemma3:270m\nTEMPLATE """{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}'
        '{% endfor %}"""\n': "loop steps",
        "FROM nosuchmodel:7b\n": "nosuchmodel",
    }
    for text, words in cases.items():
        modelfile = tmp_path / "Modelfile"
        modelfile.write_text(text)
        result = gemma_daemon.cli("create", "broken", "-f", str(modelfile))
        assert result.returncode == 1, (text, result.stderr)
        assert words in result.stderr, (text, result.stderr)
        assert "Traceback" not in result.stderr
    assert set(tags(gemma_daemon)) == before


# --- from files, through the CLI ------------------------------------------------------------------------------
def test_from_a_local_gguf_a_split_folder_and_with_an_adapter(daemon: Daemon, tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "weights" / "tiny.gguf", chat_template=TINY_TEMPLATE)
    write_tiny_lora(tmp_path / "weights" / "style.gguf")
    (tmp_path / "Modelfile").write_text("FROM ./weights/tiny.gguf\n")
    (tmp_path / "Modelfile.lora").write_text("FROM ./weights/tiny.gguf\nADAPTER ./weights/style.gguf\n")
    assert daemon.cli("create", "tiny", "-f", str(tmp_path / "Modelfile")).returncode == 0
    result = daemon.cli("create", "tiny-styled", "-f", str(tmp_path / "Modelfile.lora"))
    assert result.returncode == 0, result.stderr
    layers = manifest_layers(daemon, "tiny-styled:latest")
    assert layers["model"] == manifest_layers(daemon, "tiny:latest")["model"]
    assert len(layers["adapter"]) == 1
    plain, styled = answer(daemon, "tiny"), answer(daemon, "tiny-styled")
    assert plain and styled and plain != styled  # the LoRA changes what the model says
    assert answer(daemon, "tiny-styled") == styled

    # the blob is uploaded once: a second create finds it on the daemon
    model.touch()
    assert daemon.cli("create", "tiny-again", "-f", str(tmp_path / "Modelfile")).returncode == 0

    parts = write_split_llama(tmp_path / "split", "tiny", 3, seed=5)
    (tmp_path / "Modelfile.split").write_text(f"FROM {parts[0].parent}\n")
    result = daemon.cli("create", "tiny-split", "-f", str(tmp_path / "Modelfile.split"))
    assert result.returncode == 0, result.stderr
    assert len(manifest_layers(daemon, "tiny-split:latest")["model"]) == 3
    assert answer(daemon, "tiny-split")

    show = daemon.cli("show", "tiny-styled", "--modelfile")
    assert "ADAPTER " in show.stdout and "FROM " in show.stdout


def test_an_adapter_for_another_architecture_or_a_model_as_adapter_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    model = upload(daemon, write_tiny_llama(tmp_path / "tiny.gguf"))
    wrong = upload(daemon, write_tiny_lora(tmp_path / "qwen-lora.gguf", architecture="qwen2"))
    status, events = create_events(daemon, {"model": "x", "files": {"tiny.gguf": model},
                                            "adapters": {"qwen-lora.gguf": wrong}})
    assert "qwen2" in json.dumps(events) and "llama" in json.dumps(events)
    status, events = create_events(daemon, {"model": "x", "files": {"tiny.gguf": model},
                                            "adapters": {"not-a-lora.gguf": model}})
    assert "not a GGUF LoRA adapter" in json.dumps(events)
    assert "x:latest" not in tags(daemon)


# --- /api/create as Ollama's clients send it ------------------------------------------------------------------
def test_the_official_client_creates_from_uploaded_files_and_from_models(daemon: Daemon, tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "tiny.gguf", chat_template=TINY_TEMPLATE)
    client = ollama.Client(host=daemon.base_url)
    digest = client.create_blob(path)
    progress = list(client.create(model="base", files={"tiny.gguf": digest}, stream=True))
    statuses = [p.status for p in progress]
    assert statuses[0] == "gathering model components"
    assert any(s.startswith("creating new layer sha256:") or s.startswith("using existing layer sha256:")
               for s in statuses)
    assert statuses[-2:] == ["writing manifest", "success"]

    response = client.create(model="helper", from_="base", system="Be helpful.", template=TINY_TEMPLATE,
                             parameters={"temperature": 0.1, "stop": ["user:", "\n"]}, license=["L1", "L2"],
                             messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    assert response.status == "success"
    shown = client.show("helper")
    assert "\nSYSTEM Be helpful.\n" in shown.modelfile  # bare, as Ollama writes a one-line value
    assert shown.template == TINY_TEMPLATE
    assert shown.license == "L1\nL2"
    assert manifest_layers(daemon, "helper:latest")["model"] == [digest]
    assert client.generate("helper", "hello", options={"num_predict": 4}).done

    # the older form: the Modelfile's text, with uploaded files named by digest
    status, events = create_events(daemon, {"name": "legacy", "modelfile": f"FROM @{digest}\nSYSTEM terse\n"})
    assert status == 200 and events[-1] == {"status": "success"}
    assert "\nSYSTEM terse\n" in client.show("legacy").modelfile


def test_bad_create_requests_are_400s_naming_the_problem(daemon: Daemon, tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "tiny.gguf")
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    with daemon.client() as client:
        wrong = client.post(f"/api/blobs/{digest}", content=path.read_bytes()[:-1] + b"x")
        assert wrong.status_code == 400 and "digest" in wrong.json()["error"]
    bad = {
        "no base": ({"model": "x"}, 400, "neither 'from' nor 'files'"),
        "missing blob": ({"model": "x", "files": {"a.gguf": digest}}, 404, "was not uploaded"),
        "bad digest": ({"model": "x", "files": {"a.gguf": "sha256:../../etc/passwd"}}, 400, "digest"),
        "a path in a modelfile": ({"model": "x", "modelfile": "FROM /etc/passwd\n"}, 400, "file path"),
        "unknown parameter": ({"model": "x", "from": "whatever", "parameters": {"tempature": 1}}, 400,
                              "unknown parameter 'tempature'"),
        "bad template": ({"model": "x", "from": "whatever", "template": "{{ .Prompt "}, 400, "template"),
        "bad message role": ({"model": "x", "from": "y", "messages": [{"role": "robot", "content": "x"}]}, 400,
                             "messages[0].role"),
        "quantize": ({"model": "x", "from": "y", "quantize": "q4_K_M"}, 400, "quantiz"),
        "bad name": ({"model": "../x", "from": "y"}, 400, ""),
        "unknown base": ({"model": "x", "from": "hf.co/nobody/nothing"}, 404, "nobody/nothing"),
    }
    for case, (body, status, words) in bad.items():
        got, events = create_events(daemon, body)
        assert got == status, (case, got, events)
        assert words in events[0]["error"], (case, events)
    assert tags(daemon) == {}
