"""Image models in the daemon: pulled from the Hub stand-in, converted, generated through both APIs,
the official clients and the CLI, in a worker process counted in the memory budget."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import ROOT, Daemon, pull_events
from fakehub import FakeHub

REPO = "tiny-org/tiny-sd-onnx"
MODEL = f"hf.co/{REPO}"
TEXT_REPO = "tiny-org/tiny-llama-GGUF"
TEXT_MODEL = f"hf.co/{TEXT_REPO}"
FAST = {"steps": 2}


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


def with_external_unet(folder: Path, out: Path) -> Path:
    """A copy of the pipeline whose UNet keeps its weights in ``unet/weights.pb``, as big UNets do."""
    import shutil

    import onnx

    if not (out / "unet" / "weights.pb").exists():
        shutil.copytree(folder, out, dirs_exist_ok=True)
        model = onnx.load(str(folder / "unet" / "model.onnx"))
        onnx.save_model(model, str(out / "unet" / "model.onnx"), save_as_external_data=True,
                        all_tensors_to_one_file=True, location="weights.pb", size_threshold=0)
    return out


def publish_tiny_sd(hub: FakeHub, folder: Path, repo: str = REPO, unet_config: bool = True) -> None:
    """The tiny diffusers ONNX pipeline as a Hub repository: ONNX files in LFS, the rest in git, plus
    ``unet/config.json`` (diffusers' own, so the model's default size is its trained 64 x 64)."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        hub.add_file(repo, rel, path, lfs=rel.endswith((".onnx", ".pb")))
    if unet_config:
        hub.add_file(repo, "unet/config.json", json.dumps({"sample_size": 8}).encode(), lfs=False)
    hub.add_file(repo, "README.md", b"# tiny sd\n", lfs=False)


@pytest.fixture(scope="module")
def tiny_models(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffusion.conftest import build_tiny_models

    return build_tiny_models(pytestconfig, tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_sd_onnx(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD 1.5-shaped pipeline, its UNet with external weights."""
    return with_external_unet(tiny_models / "sd", tmp_path_factory.mktemp("tiny-sd-external"))


@pytest.fixture(scope="module")
def tiny_sdxl_onnx(tiny_models: Path) -> Path:
    return tiny_models / "sdxl"


@pytest.fixture(scope="module")
def module_hub(tiny_sd_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    from ggufs import write_tiny_llama

    with FakeHub() as hub:
        publish_tiny_sd(hub, tiny_sd_onnx)
        gguf = write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny-llama-Q8_0.gguf", file_type=7)
        hub.add_file(TEXT_REPO, "tiny-llama-Q8_0.gguf", gguf)
        yield hub


@pytest.fixture(scope="module")
def images_daemon(module_hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon with the tiny image model and a tiny text model pulled."""
    root = tmp_path_factory.mktemp("images-daemon")
    server = Daemon(root / "home", module_hub.endpoint, {"HF_HOME": str(root / "hf")}).start()
    try:
        events = pull_events(server, MODEL)
        assert events[-1] == {"status": "success"}, events[-3:]
        assert any(e.get("status") == "converting unet" and e.get("total") for e in events)
        assert pull_events(server, TEXT_MODEL)[-1] == {"status": "success"}
        yield server
    finally:
        server.stop()


def generate(daemon: Daemon, **body: object) -> list[dict]:
    with daemon.client() as client, client.stream("POST", "/api/generate", json={"model": MODEL, **body}) as r:
        assert r.status_code == 200, r.read()
        return [json.loads(line) for line in r.iter_lines() if line.strip()]


# --- the store -----------------------------------------------------------------------
def test_pulled_model_is_listed_shown_copied_and_removed(images_daemon: Daemon) -> None:
    with images_daemon.client() as client:
        listed = {m["name"]: m for m in client.get("/api/tags").json()["models"]}
        entry = listed[f"{MODEL}:latest"]
        assert entry["details"]["format"] == "onnx-stream" and entry["size"] > 0
        shown = client.post("/api/show", json={"model": MODEL}).json()
        assert shown["capabilities"] == ["image"]
        assert shown["model_info"]["image.width"] == 64
        assert "steps" in shown["parameters"]
        assert client.post("/api/copy", json={"source": MODEL, "destination": "my-sd"}).status_code == 200
        assert client.post("/api/show", json={"model": "my-sd"}).json()["capabilities"] == ["image"]
        assert client.request("DELETE", "/api/delete", json={"model": "my-sd"}).status_code == 200
        assert client.post("/api/show", json={"model": MODEL}).status_code == 200  # the original keeps its blobs
    manifests = images_daemon.home / "models" / "manifests"
    manifest = json.loads((manifests / "hf.co" / "tiny-org" / "tiny-sd-onnx" / "latest").read_text())
    kinds = {layer["mediaType"].rsplit(".", 1)[-1] for layer in manifest["layers"]}
    assert {"file", "source", "params"} <= kinds
    sources = {layer["annotations"]["org.opencontainers.image.title"] for layer in manifest["layers"]
               if layer["mediaType"].endswith("image.source")}
    assert {"unet/model.onnx", "unet/weights.pb", "model_index.json", "scheduler/scheduler_config.json"} <= sources
    assert "README.md" not in sources
    paths = {layer["annotations"]["org.opencontainers.image.title"] for layer in manifest["layers"]
             if layer["mediaType"].endswith("image.file")}
    assert {"unet/graph.json", "unet/weights.bin", "pipeline.json", "tokenizer/vocab.json"} <= paths


def test_catalog_name_pulls_with_its_defaults(images_daemon: Daemon, module_hub: FakeHub,
                                              tiny_sd_onnx: Path) -> None:
    """``sd-turbo`` is a Hub repository plus defaults: 1 step, no guidance, 512 x 512."""
    from localllm.images.pull import IMAGE_CATALOG

    publish_tiny_sd(module_hub, tiny_sd_onnx, IMAGE_CATALOG["sd-turbo"].repo_id)
    assert pull_events(images_daemon, "sd-turbo")[-1] == {"status": "success"}
    with images_daemon.client() as client:
        shown = client.post("/api/show", json={"model": "sd-turbo"}).json()
        assert shown["capabilities"] == ["image"] and shown["model_info"]["image.width"] == 512
        assert "guidance" in shown["parameters"] and shown["details"]["family"] == "sd-turbo"
    with images_daemon.client() as client, client.stream("POST", "/api/generate",
                                                         json={"model": "sd-turbo", "prompt": "a cat"}) as r:
        events = [json.loads(line) for line in r.iter_lines() if line.strip()]
    assert [(e["completed"], e["total"]) for e in events[:-1]] == [(1, 1)]
    assert png_size(base64.b64decode(events[-1]["image"])) == (512, 512)


# --- /api/generate ---------------------------------------------------------------------
def test_api_generate_streams_steps_and_is_deterministic_by_seed(images_daemon: Daemon) -> None:
    events = generate(images_daemon, prompt="a red cat", steps=3, options={"seed": 7})
    assert [(e["completed"], e["total"]) for e in events[:-1]] == [(1, 3), (2, 3), (3, 3)]
    final = events[-1]
    assert final["done"] is True and final["total_duration"] > 0
    first = base64.b64decode(final["image"])
    assert png_size(first) == (64, 64)
    again = generate(images_daemon, prompt="a red cat", steps=3, options={"seed": 7})[-1]
    assert base64.b64decode(again["image"]) == first
    other = generate(images_daemon, prompt="a red cat", steps=3, options={"seed": 8})[-1]
    assert base64.b64decode(other["image"]) != first


def test_api_generate_other_size_and_stream_false(images_daemon: Daemon) -> None:
    with images_daemon.client() as client:
        body = {"model": MODEL, "prompt": "a castle", "width": 128, "height": 64, "steps": 1, "stream": False,
                "options": {"seed": 1, "scheduler": "ddim", "negative_prompt": "blurry", "guidance": 3.0}}
        reply = client.post("/api/generate", json=body).json()
    assert reply["done"] is True
    assert png_size(base64.b64decode(reply["image"])) == (128, 64)  # converted on demand from the sources
    with images_daemon.client() as client:
        body = {"model": MODEL, "prompt": "a castle", "steps": 1, "stream": False, "options": {"precision": "uint8"}}
        assert png_size(base64.b64decode(client.post("/api/generate", json=body).json()["image"])) == (64, 64)
    variants = {p.name for p in (images_daemon.home / "models" / "images").glob("*/*")}
    assert {"default", "source", "128x64-fp16", "64x64-uint8"} <= variants


def test_official_ollama_client(images_daemon: Daemon) -> None:
    import ollama

    client = ollama.Client(host=images_daemon.base_url)
    reply = client.generate(MODEL, "a lighthouse at dusk", width=64, height=64, steps=2, options={"seed": 3})
    assert png_size(base64.b64decode(reply.image)) == (64, 64)
    steps = [(part.completed, part.total) for part in client.generate(MODEL, "a lighthouse", steps=2, stream=True)
             if not part.done]
    assert steps == [(1, 2), (2, 2)]


# --- /v1/images/generations --------------------------------------------------------------
def test_official_openai_client(images_daemon: Daemon) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{images_daemon.base_url}/v1", api_key="unused")
    result = client.images.generate(model=MODEL, prompt="a red cat", n=2, size="64x64",
                                    response_format="b64_json", quality="standard", style="vivid",
                                    extra_body={"seed": 11, **FAST})
    images = [base64.b64decode(item.b64_json) for item in result.data]
    assert all(item.url is None for item in result.data)
    assert [png_size(i) for i in images] == [(64, 64), (64, 64)]
    assert images[0] != images[1]  # image i uses seed + i
    again = client.images.generate(model=MODEL, prompt="a red cat", size="64x64", extra_body={"seed": 11, **FAST})
    assert base64.b64decode(again.data[0].b64_json) == images[0]  # no response_format: b64_json and url
    assert httpx.get(again.data[0].url).content == images[0]

    by_url = client.images.generate(model=MODEL, prompt="a red cat", size="128x128", response_format="url",
                                    extra_body=FAST)
    url = by_url.data[0].url
    assert url.startswith(f"{images_daemon.base_url}/v1/images/files/")
    assert png_size(httpx.get(url).content) == (128, 128)
    assert httpx.get(url[: url.rindex("/") + 1] + "x" * 32 + ".png").status_code == 404
    assert httpx.get(f"{images_daemon.base_url}/v1/images/files/..%2F..%2Fmanifests").status_code == 404

    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model=MODEL, prompt="a red cat", n=5)
    assert caught.value.body["param"] == "n"


BAD_V1 = [
    ({"size": "100x100"}, "width"),
    ({"size": "4096x4096"}, "width"),
    ({"size": "big"}, "size"),
    ({"n": 0}, "n"),
    ({"n": 5}, "n"),
    ({"scheduler": "nope"}, "scheduler"),
    ({"steps": 0}, "steps"),
    ({"steps": 100000}, "steps"),
    ({"response_format": "gif"}, "response_format"),
    ({"model": TEXT_MODEL}, "model"),
]


@pytest.mark.parametrize(("extra", "param"), BAD_V1)
def test_v1_bad_input_names_the_parameter(images_daemon: Daemon, extra: dict, param: str) -> None:
    with images_daemon.client() as client:
        r = client.post("/v1/images/generations", json={"model": MODEL, "prompt": "a cat", **extra})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_api_bad_input_and_text_requests_to_an_image_model(images_daemon: Daemon) -> None:
    with images_daemon.client() as client:
        for body, word in [({"width": 100}, "width"), ({"steps": -1}, "steps"), ({"height": 9000}, "height"),
                           ({"options": {"scheduler": "nope"}}, "scheduler")]:
            r = client.post("/api/generate", json={"model": MODEL, "prompt": "a cat", **body})
            assert r.status_code == 400 and word in r.json()["error"], r.text
        text_requests = [
            ("/api/chat", {"messages": [{"role": "user", "content": "hi"}]}),
            ("/api/embed", {"input": "hi"}),
            ("/api/embeddings", {"prompt": "hi"}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
            ("/v1/completions", {"prompt": "hi"}),
            ("/v1/embeddings", {"input": "hi"}),
        ]
        for path, body in text_requests:
            r = client.post(path, json={"model": MODEL, **body})
            assert r.status_code == 400, (path, r.text)
            error = r.json()["error"]
            if path.startswith("/v1"):
                assert error["param"] == "model" and "image model" in error["message"]
            else:
                assert "image model" in error
        r = client.post("/api/generate", json={"model": TEXT_MODEL, "prompt": "a cat", "width": 64})
        assert r.status_code == 400 and "not an image model" in r.json()["error"]
        # a text model still answers text through /api/generate
        r = client.post("/api/generate", json={"model": TEXT_MODEL, "prompt": "hi", "stream": False,
                                               "options": {"num_predict": 2}})
        assert r.status_code == 200 and "image" not in r.json()


# --- the worker ------------------------------------------------------------------------
def test_worker_in_ps_budget_and_keep_alive(images_daemon: Daemon) -> None:
    generate(images_daemon, prompt="a cat", steps=1, keep_alive="10m")
    with images_daemon.client() as client:
        ps = {m["name"]: m for m in client.get("/api/ps").json()["models"]}
        assert ps[f"{MODEL}:latest"]["size"] > 50_000_000  # the worker's memory, counted in the budget
        client.post("/api/generate", json={"model": MODEL, "prompt": "", "keep_alive": 0, "stream": False})
        assert f"{MODEL}:latest" not in {m["name"] for m in client.get("/api/ps").json()["models"]}


def test_jobs_for_one_model_run_one_at_a_time(images_daemon: Daemon) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def timed(seed: int) -> tuple[float, float]:
        events = []
        with images_daemon.client() as client, client.stream(
                "POST", "/api/generate", json={"model": MODEL, "prompt": "a cat", "steps": 4,
                                               "options": {"seed": seed}}) as r:
            for line in r.iter_lines():
                events.append((time.monotonic(), json.loads(line)))
        assert events[-1][1]["done"] and len(events) == 5
        return events[0][0], events[-1][0]  # first step, image

    with ThreadPoolExecutor(3) as pool:
        spans = sorted(pool.map(timed, [1, 2, 3]))
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end - 0.05  # the next job's first step comes after the previous image


def test_disconnect_cancels_the_job_between_steps(images_daemon: Daemon) -> None:
    body = {"model": MODEL, "prompt": "a slow one", "width": 256, "height": 256, "steps": 150,
            "options": {"guidance": 7.5}}
    with images_daemon.client() as client, client.stream("POST", "/api/generate", json=body) as r:
        for line in r.iter_lines():
            if json.loads(line).get("completed") == 2:
                break  # leave after the second step
    deadline = time.monotonic() + 30
    while "cancelled job" not in images_daemon.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "cancelled job" in images_daemon.log.read_text()
    start = time.monotonic()
    assert png_size(base64.b64decode(generate(images_daemon, prompt="next", steps=1)[-1]["image"])) == (64, 64)
    assert time.monotonic() - start < 30


def test_memory_budget_too_small_for_a_worker(make_daemon, hub: FakeHub, tiny_sd_onnx: Path) -> None:
    publish_tiny_sd(hub, tiny_sd_onnx)
    daemon = make_daemon(LOCALLLM_MAX_MEMORY="64MB").start()
    assert pull_events(daemon, MODEL)[-1] == {"status": "success"}
    with daemon.client() as client:
        r = client.post("/v1/images/generations", json={"model": MODEL, "prompt": "a cat", "steps": 1})
    assert r.status_code == 507 and r.json()["error"]["code"] == "insufficient_memory"


def test_a_full_queue_is_503(make_daemon, hub: FakeHub, tiny_sd_onnx: Path) -> None:
    publish_tiny_sd(hub, tiny_sd_onnx)
    daemon = make_daemon(LOCALLLM_MAX_QUEUE="0").start()
    assert pull_events(daemon, MODEL)[-1] == {"status": "success"}
    slow = {"model": MODEL, "prompt": "a slow one", "width": 256, "height": 256, "steps": 150}
    with daemon.client() as client, client.stream("POST", "/api/generate", json=slow) as r:
        lines = r.iter_lines()  # kept: a dropped iterator closes the connection (and cancels the job)
        assert json.loads(next(lines)).get("completed") == 1  # the first step: the worker is busy
        with daemon.client() as other:
            busy = other.post("/v1/images/generations", json={"model": MODEL, "prompt": "a cat", "steps": 1})
        assert busy.status_code == 503 and busy.headers["Retry-After"] and busy.json()["error"]["message"]
        del lines


def test_killed_pull_leaves_nothing_and_pulls_again(make_daemon, hub: FakeHub, tiny_sd_onnx: Path) -> None:
    publish_tiny_sd(hub, tiny_sd_onnx)
    hub.throttle(REPO, "unet/model.onnx", 20_000)
    daemon = make_daemon().start()
    with daemon.client() as client, client.stream("POST", "/api/pull", json={"model": MODEL}) as r:
        for line in r.iter_lines():
            event = json.loads(line)
            if event.get("status", "").startswith("pulling") and event.get("completed", 0) < event.get("total", 0):
                break  # a file on its way (the UNet's is throttled)
    daemon.kill()
    hub.throttle(REPO, "unet/model.onnx", None)
    models = daemon.home / "models"
    daemon.start()
    with daemon.client() as client:
        assert f"{MODEL}:latest" not in {m["name"] for m in client.get("/api/tags").json()["models"]}
    assert not list((models / "tmp-images").glob("*"))
    assert pull_events(daemon, MODEL)[-1] == {"status": "success"}
    assert png_size(base64.b64decode(generate(daemon, prompt="a cat", steps=1)[-1]["image"])) == (64, 64)


def test_sdxl_shaped_repo_without_unet_config(make_daemon, hub: FakeHub, tiny_sdxl_onnx: Path) -> None:
    """Two text encoders; no ``unet/config.json`` and a UNet of free size: converted at 512 x 512 on pull,
    and for the size a request asks for when it asks."""
    publish_tiny_sd(hub, tiny_sdxl_onnx, "tiny-org/tiny-sdxl-onnx", unet_config=False)
    daemon = make_daemon().start()
    assert pull_events(daemon, "hf.co/tiny-org/tiny-sdxl-onnx")[-1] == {"status": "success"}
    with daemon.client() as client:
        shown = client.post("/api/show", json={"model": "hf.co/tiny-org/tiny-sdxl-onnx"}).json()
        assert shown["model_info"]["general.architecture"] == "stable-diffusion-xl"
        assert shown["model_info"]["image.width"] == 512
        reply = client.post("/api/generate", json={"model": "hf.co/tiny-org/tiny-sdxl-onnx", "prompt": "a cat",
                                                   "width": 64, "height": 64, "steps": 1, "stream": False}).json()
    assert png_size(base64.b64decode(reply["image"])) == (64, 64)


def test_killed_conversion_leaves_no_process_and_no_staging(make_daemon, hub: FakeHub, tiny_sd_onnx: Path) -> None:
    import psutil

    publish_tiny_sd(hub, tiny_sd_onnx)
    daemon = make_daemon().start()
    with daemon.client() as client, client.stream("POST", "/api/pull", json={"model": MODEL}) as r:
        for line in r.iter_lines():
            if json.loads(line).get("status", "").startswith("converting"):
                break
    daemon.kill()
    staging = str(daemon.home / "models" / "tmp-images")

    def converters() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if any(staging in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        return found

    deadline = time.monotonic() + 20
    while converters() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not converters()  # the child noticed its parent was gone
    daemon.start()
    assert not list((daemon.home / "models" / "tmp-images").glob("*"))
    with daemon.client() as client:  # not there, or there whole: never half
        listed = f"{MODEL}:latest" in {m["name"] for m in client.get("/api/tags").json()["models"]}
    if not listed:
        assert pull_events(daemon, MODEL)[-1] == {"status": "success"}
    assert png_size(base64.b64decode(generate(daemon, prompt="a cat", steps=1)[-1]["image"])) == (64, 64)


def test_image_parameters_for_modelfiles() -> None:
    from localllm.errors import InvalidRequest
    from localllm.images.params import PARAMETERS, parse_parameter, resolve

    assert set(PARAMETERS) == {"steps", "width", "height", "scheduler", "guidance", "negative_prompt", "precision"}
    assert parse_parameter("steps", "4") == 4 and parse_parameter("guidance", "0") == 0.0
    with pytest.raises(InvalidRequest):
        parse_parameter("temperature", "1")
    model = {"width": 64, "height": 64, "precision": "fp16"}
    chosen = resolve({"steps": None, "width": 128}, {"steps": 3, "scheduler": "ddim", "width": 256}, model, 1024)
    assert (chosen.steps, chosen.scheduler, chosen.width, chosen.height) == (3, "ddim", 128, 64)


def test_a_modelfile_derives_an_image_model_with_default_parameters(images_daemon: Daemon,
                                                                   tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {MODEL}\nPARAMETER steps 3\nPARAMETER scheduler ddim\n"
                         "PARAMETER negative_prompt blurry\nPARAMETER guidance 2.5\n")
    result = images_daemon.cli("create", "tiny-painter", "-f", str(modelfile))
    assert result.returncode == 0, result.stderr
    with images_daemon.client() as client:
        shown = client.post("/api/show", json={"model": "tiny-painter"}).json()
    assert shown["capabilities"] == ["image"] and "scheduler" in shown["parameters"]
    events = generate(images_daemon, model="tiny-painter", prompt="a red square", seed=3)
    assert events[-1]["done"] and {e.get("total") for e in events if "completed" in e} == {3}
    assert png_size(base64.b64decode(events[-1]["image"])) == (64, 64)
    modelfile.write_text(f"FROM {MODEL}\nPARAMETER stepz 3\n")
    result = images_daemon.cli("create", "tiny-broken", "-f", str(modelfile))
    assert result.returncode == 1 and "line 2: unknown parameter 'stepz'" in result.stderr
    assert "steps" in result.stderr and "scheduler" in result.stderr


def test_image_urls_expire_and_never_name_a_path() -> None:
    from localllm.server.images_api import ImageFiles

    files = ImageFiles(ttl=0.2)
    token = files.put(b"png")
    assert len(token) == 32 and files.get(token) == b"png"
    assert files.get("../../models/blobs") is None and files.get(token[:-1] + "/") is None
    time.sleep(0.3)
    assert files.get(token) is None


# --- the CLI -------------------------------------------------------------------------------
def test_cli_run_writes_a_png_and_prints_its_path(images_daemon: Daemon, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "localllm.cli.main", "run", *args], env={
            **images_daemon.env, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
            capture_output=True, text=True, timeout=120, cwd=tmp_path)

    pulled = images_daemon.cli("pull", MODEL)  # again: the files are the same, so is the conversion
    assert pulled.returncode == 0 and "success" in pulled.stderr and "converting" not in pulled.stderr
    done = run(MODEL, "a lighthouse at dusk", "--steps", "2", "--seed", "5", "--negative", "fog")
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert path.parent == tmp_path and path.suffix == ".png"
    assert png_size(path.read_bytes()) == (64, 64)
    assert "2/2" in done.stderr  # the progress bar over the steps
    again = run(MODEL, "a lighthouse at dusk", "--steps", "2", "--seed", "5", "--negative", "fog",
                "--size", "128x64", "--output", "out.png")
    assert again.returncode == 0, again.stderr
    assert png_size((tmp_path / "out.png").read_bytes()) == (128, 64)
    bad = run(MODEL, "a cat", "--size", "100x100")
    assert bad.returncode == 1 and "width" in bad.stderr
    text = run(TEXT_MODEL, "hi")  # a text model answers as before
    assert text.returncode == 0, text.stderr
