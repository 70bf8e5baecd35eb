"""Pulling from a local Hub stand-in through the real huggingface_hub client, into a real daemon."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import gguf
import httpx
import pytest

from conftest import Daemon, publish, pull_events, tags
from fakehub import FakeHub
from ggufs import write_split_llama, write_tiny_llama

Q = gguf.LlamaFileType


def sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def quants_repo(hub: FakeHub, tmp_path: Path) -> dict[str, Path]:
    files = publish(
        hub,
        tmp_path,
        "acme/tiny-GGUF",
        {
            "tiny.Q2_K.gguf": Q.MOSTLY_Q2_K,
            "tiny.Q4_K_M.gguf": Q.MOSTLY_Q4_K_M,
            "tiny.Q8_0.gguf": Q.MOSTLY_Q8_0,
        },
    )
    hub.add_file("acme/tiny-GGUF", "README.md", b"# tiny\n", lfs=False)
    return files


def model_digests(daemon: Daemon, name: str) -> list[str]:
    with daemon.client() as client:
        info = client.post("/api/show", json={"model": name}).json()
    modelfile = info["modelfile"]
    from_line = next(line for line in modelfile.splitlines() if line.startswith("FROM "))
    return [from_line.rsplit("sha256-", 1)[1]]


def test_hub_name_pulls_the_default_quant_with_ollama_progress(
    daemon: Daemon, quants_repo: dict[str, Path]
) -> None:
    events = pull_events(daemon, "hf.co/acme/tiny-GGUF")
    statuses = [e["status"] for e in events]
    expected = quants_repo["tiny.Q4_K_M.gguf"]
    digest = sha(expected)
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    progress = [e for e in events if e.get("digest")]
    assert progress and all(e["status"] == f"pulling {digest[7:19]}" for e in progress)
    assert all(e["total"] == expected.stat().st_size for e in progress)
    assert progress[-1]["completed"] == progress[-1]["total"]

    listed = tags(daemon)["hf.co/acme/tiny-GGUF:latest"]
    assert listed["details"]["quantization_level"] == "Q4_K_M"
    assert listed["details"]["family"] == "llama"
    assert listed["size"] == expected.stat().st_size
    blob = daemon.home / "models" / "blobs" / f"sha256-{digest[7:]}"
    assert blob.read_bytes() == expected.read_bytes()


def test_the_model_takes_its_size_once(daemon: Daemon, quants_repo: dict[str, Path], tmp_path: Path) -> None:
    pull_events(daemon, "hf.co/acme/tiny-GGUF:Q8_0")
    size = quants_repo["tiny.Q8_0.gguf"].stat().st_size
    copies = [p for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_size == size and "src" not in p.parts]
    assert len(copies) == 1, copies  # no second copy in a Hub cache or a staging folder


@pytest.mark.parametrize(
    ("name", "file"),
    [
        ("hf.co/acme/tiny-GGUF:q8_0", "tiny.Q8_0.gguf"),
        ("hf.co/acme/tiny-GGUF:Q2_K", "tiny.Q2_K.gguf"),
        ("huggingface.co/acme/tiny-GGUF:q4_k_m", "tiny.Q4_K_M.gguf"),
        ("hf.co/acme/tiny-GGUF:TINY.Q8_0.GGUF", "tiny.Q8_0.gguf"),
        ("HF.CO/ACME/TINY-GGUF:Q2_K", "tiny.Q2_K.gguf"),
    ],
)
def test_tag_picks_the_file(daemon: Daemon, quants_repo: dict[str, Path], name: str, file: str) -> None:
    assert pull_events(daemon, name)[-1] == {"status": "success"}
    assert model_digests(daemon, name) == [sha(quants_repo[file])[7:]]


def test_split_model_pulls_every_part(daemon: Daemon, hub: FakeHub, tmp_path: Path) -> None:
    parts = write_split_llama(tmp_path / "src", "tiny-Q4_K_M", 3, file_type=Q.MOSTLY_Q4_K_M)
    for part in parts:
        hub.add_file("acme/split-GGUF", f"Q4_K_M/{part.name}", part)
    hub.add_file("acme/split-GGUF", "other-Q8_0.gguf", write_tiny_llama(tmp_path / "o.gguf", seed=9))
    events = pull_events(daemon, "hf.co/acme/split-GGUF")
    assert events[-1] == {"status": "success"}
    pulled = {e["digest"] for e in events if e.get("digest")}
    assert pulled == {sha(p) for p in parts}
    manifest_path = daemon.home / "models" / "manifests" / "hf.co" / "acme" / "split-GGUF" / "latest"
    import json

    layers = json.loads(manifest_path.read_text())["layers"]
    models = [layer for layer in layers if layer["mediaType"] == "application/vnd.ollama.image.model"]
    assert [layer["digest"] for layer in models] == [sha(p) for p in parts]  # in split order
    assert [layer["annotations"]["org.opencontainers.image.title"] for layer in models] == [p.name for p in parts]
    assert tags(daemon)["hf.co/acme/split-GGUF:latest"]["size"] == sum(p.stat().st_size for p in parts)


def test_catalog_names_carry_template_params_and_license(daemon: Daemon, hub: FakeHub, tmp_path: Path) -> None:
    repo = "TheBloke/Mistral-7B-Instruct-v0.2-GGUF"
    files = publish(
        hub,
        tmp_path,
        repo,
        {
            "mistral-7b-instruct-v0.2.Q4_K_M.gguf": Q.MOSTLY_Q4_K_M,
            "mistral-7b-instruct-v0.2.Q8_0.gguf": Q.MOSTLY_Q8_0,
        },
    )
    assert pull_events(daemon, "mistral")[-1] == {"status": "success"}
    assert pull_events(daemon, "mistral:7b-instruct-q8_0")[-1] == {"status": "success"}
    assert model_digests(daemon, "mistral") == [sha(files["mistral-7b-instruct-v0.2.Q4_K_M.gguf"])[7:]]
    assert model_digests(daemon, "mistral:7b-instruct-q8_0") == [sha(files["mistral-7b-instruct-v0.2.Q8_0.gguf"])[7:]]
    assert set(tags(daemon)) == {"mistral:latest", "mistral:7b-instruct-q8_0"}
    with daemon.client() as client:
        info = client.post("/api/show", json={"model": "mistral"}).json()
    assert "[INST]" in info["template"]
    assert 'stop                           "[INST]"' in info["parameters"]
    assert "Apache License" in info["license"]


def test_catalog_size_tags_pick_the_repo(daemon: Daemon, hub: FakeHub, tmp_path: Path) -> None:
    publish(hub, tmp_path, "TheBloke/Llama-2-13B-Chat-GGUF", {"llama-2-13b-chat.Q4_K_M.gguf": Q.MOSTLY_Q4_K_M})
    assert pull_events(daemon, "llama2:13b")[-1] == {"status": "success"}
    with daemon.client() as client:
        info = client.post("/api/show", json={"model": "llama2:13b"}).json()
        unknown = client.post("/api/pull", json={"model": "llama2:70b-chat"})
    assert "<<SYS>>" in info["template"] and "LLAMA 2" in info["license"]
    assert unknown.status_code == 404 and "Try one of" in unknown.json()["error"]


def test_a_lying_hub_fails_the_pull_and_leaves_nothing(daemon: Daemon, hub: FakeHub, tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "x.gguf")
    hub.add_file("acme/liar", "x.Q4_K_M.gguf", path, advertised_sha256="ab" * 32)
    events = pull_events(daemon, "hf.co/acme/liar")
    assert "sha256 mismatch" in events[-1]["error"]
    assert all(e.get("status") != "success" for e in events)
    assert tags(daemon) == {}
    blobs = daemon.home / "models" / "blobs"
    assert [p.name for p in blobs.iterdir()] == []  # the bytes were deleted, no partial kept
    with daemon.client() as client:
        again = client.post("/api/pull", json={"model": "hf.co/acme/liar", "stream": False})
    assert again.status_code == 502 and "sha256 mismatch" in again.json()["error"]


def test_dropped_connection_mid_file_resumes_with_range(daemon: Daemon, hub: FakeHub, gemma_path: Path) -> None:
    hub.add_file("google/gemma-3-270m-GGUF", "gemma-3-270m-Q4_K_M.gguf", gemma_path)
    hub.drop_connection_after("google/gemma-3-270m-GGUF", "gemma-3-270m-Q4_K_M.gguf", 40 * 1024 * 1024)
    events = pull_events(daemon, "hf.co/google/gemma-3-270m-GGUF")
    assert events[-1] == {"status": "success"}
    gets = [r for r in hub.requests if r.method == "GET" and r.path.endswith(".gguf")]
    assert len(gets) == 2 and gets[1].range is not None and not gets[1].range.startswith("bytes=0-")
    assert tags(daemon)["hf.co/google/gemma-3-270m-GGUF:latest"]["details"]["family"] == "gemma3"


def _wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _pull_in_background(daemon: Daemon, model: str) -> threading.Thread:
    def run() -> None:
        try:
            pull_events(daemon, model)
        except httpx.HTTPError:
            pass  # the daemon was killed under it

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_killed_pull_resumes_and_lists_nothing_meanwhile(make_daemon, hub: FakeHub, gemma_path: Path) -> None:
    repo, file = "google/gemma-3-270m-GGUF", "gemma-3-270m-Q4_K_M.gguf"
    hub.add_file(repo, file, gemma_path)
    hub.throttle(repo, file, 40 * 1024 * 1024)
    first: Daemon = make_daemon().start()
    partial = first.home / "models" / "blobs" / f"{sha(gemma_path).replace(':', '-')}-partial"
    _pull_in_background(first, f"hf.co/{repo}")
    _wait_for(lambda: partial.exists() and partial.stat().st_size > 60 * 1024 * 1024)
    first.kill()
    kept = partial.stat().st_size

    second: Daemon = make_daemon().start()
    assert tags(second) == {}  # no half model listed
    hub.throttle(repo, file, None)
    hub.clear_requests()
    events = pull_events(second, f"hf.co/{repo}")
    assert events[-1] == {"status": "success"}
    progress = [e for e in events if e.get("digest")]
    assert progress[0]["completed"] >= kept  # it started from what was there
    gets = [r for r in hub.requests if r.method == "GET" and r.path.endswith(".gguf")]
    assert len(gets) == 1 and gets[0].range == f"bytes={kept}-"
    blob = second.home / "models" / "blobs" / sha(gemma_path).replace(":", "-")
    assert sha(blob) == sha(gemma_path) and not partial.exists()


def test_two_pulls_of_one_model_share_the_download(daemon: Daemon, hub: FakeHub, gemma_path: Path) -> None:
    repo, file = "google/gemma-3-270m-GGUF", "gemma-3-270m-Q4_K_M.gguf"
    hub.add_file(repo, file, gemma_path)
    hub.throttle(repo, file, 100 * 1024 * 1024)
    results: list[list[dict]] = []
    threads = [
        threading.Thread(target=lambda n=n: results.append(pull_events(daemon, n)))
        for n in (f"hf.co/{repo}", f"hf.co/{repo}:Q4_K_M")
    ]
    for t in threads:
        t.start()
        time.sleep(0.3)
    for t in threads:
        t.join(120)
    assert [r[-1] for r in results] == [{"status": "success"}] * 2
    gets = [r for r in hub.requests if r.method == "GET" and r.path.endswith(".gguf")]
    assert len(gets) == 1
    assert set(tags(daemon)) == {f"hf.co/{repo}:latest", f"hf.co/{repo}:Q4_K_M"}


def test_a_full_disk_fails_cleanly_and_the_next_pull_resumes(make_daemon, hub: FakeHub, gemma_path: Path) -> None:
    import resource

    repo, file = "google/gemma-3-270m-GGUF", "gemma-3-270m-Q4_K_M.gguf"
    hub.add_file(repo, file, gemma_path)
    limited: Daemon = make_daemon()
    limit = 50 * 1024 * 1024
    limited.preexec = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    limited.start()
    events = pull_events(limited, f"hf.co/{repo}")
    assert "error" in events[-1] and "File too large" in events[-1]["error"]
    assert tags(limited) == {}
    limited.stop()
    hub.clear_requests()
    roomy: Daemon = make_daemon().start()
    assert pull_events(roomy, f"hf.co/{repo}")[-1] == {"status": "success"}
    gets = [r for r in hub.requests if r.method == "GET" and r.path.endswith(".gguf")]
    assert gets[0].range is not None  # resumed, not restarted


@pytest.mark.parametrize(
    ("model", "status", "words"),
    [
        ("hf.co/acme/missing-repo", 404, "repository 'acme/missing-repo' not found"),
        ("hf.co/acme/tiny-GGUF:Q6_K", 404, "Available: Q2_K, Q4_K_M, Q8_0"),
        ("hf.co/acme/tiny-GGUF:nosuch.gguf", 404, "no GGUF file for 'nosuch.gguf'"),
        ("hf.co/acme/readme-only", 404, "no GGUF model files"),
        ("hf.co/acme/two-models", 400, "Available: a.gguf, b.gguf"),
        ("no-such-model", 404, "not in the catalog"),
        ("example.com/ns/model", 404, "only catalog names and hf.co"),
    ],
)
def test_pull_errors_speak_to_a_person(
    daemon: Daemon, hub: FakeHub, quants_repo: dict[str, Path], tmp_path: Path, model: str, status: int, words: str
) -> None:
    hub.add_file("acme/readme-only", "README.md", b"hi", lfs=False)
    publish(hub, tmp_path, "acme/two-models", {"a.gguf": Q.ALL_F32, "b.gguf": Q.ALL_F32})
    with daemon.client() as client:
        response = client.post("/api/pull", json={"model": model})
    assert response.status_code == status
    assert words in response.json()["error"]
    assert tags(daemon) == {}


def test_unreachable_hub_is_a_clear_error(make_daemon) -> None:
    daemon: Daemon = make_daemon(HF_ENDPOINT="http://127.0.0.1:9").start()
    with daemon.client() as client:
        response = client.post("/api/pull", json={"model": "hf.co/a/b"})
    assert response.status_code == 502
    assert "cannot reach the Hub at http://127.0.0.1:9" in response.json()["error"]


def test_embedded_default_needs_no_network(daemon: Daemon, hub: FakeHub, gemma_path: Path) -> None:
    events = pull_events(daemon, "gemma3:270m")
    assert events[-1] == {"status": "success"}
    assert hub.requests == []
    assert {e["digest"] for e in events if e.get("digest")} == {sha(gemma_path)}
    with daemon.client() as client:
        info = client.post("/api/show", json={"model": "gemma3:270m"}).json()
    assert "<start_of_turn>" in info["template"]
    assert '"<end_of_turn>"' in info["parameters"]
    assert info["license"].startswith("Gemma Terms of Use")
    assert info["details"]["parameter_size"] == "268.10M"
    assert info["model_info"]["general.architecture"] == "gemma3"
    # a second pull finds everything in place
    again = pull_events(daemon, "gemma3:270m")
    assert again[-1] == {"status": "success"}
    assert all(e["completed"] == e["total"] for e in again if e.get("digest"))


def test_a_server_that_ignores_range_restarts_cleanly(make_daemon, hub: FakeHub, gemma_path: Path) -> None:
    repo, file = "google/gemma-3-270m-GGUF", "gemma-3-270m-Q4_K_M.gguf"
    hub.add_file(repo, file, gemma_path)
    daemon: Daemon = make_daemon().start()
    partial = daemon.home / "models" / "blobs" / f"{sha(gemma_path).replace(':', '-')}-partial"
    partial.write_bytes(b"\xff" * 1_000_000)  # wrong bytes: only a restart from zero can succeed
    hub.ignore_range = True
    assert pull_events(daemon, f"hf.co/{repo}")[-1] == {"status": "success"}
    gets = [r for r in hub.requests if r.method == "GET" and r.path.endswith(".gguf")]
    assert gets[0].range == "bytes=1000000-" and gets[0].status == 200


def test_listings_without_lfs_details_use_the_file_etag(daemon: Daemon, hub: FakeHub, tmp_path: Path) -> None:
    files = publish(hub, tmp_path, "acme/plain", {"m.Q4_K_M.gguf": Q.MOSTLY_Q4_K_M})
    hub.lfs_in_listings = False
    hub.tree_api = False
    assert pull_events(daemon, "hf.co/acme/plain")[-1] == {"status": "success"}
    assert model_digests(daemon, "hf.co/acme/plain") == [sha(files["m.Q4_K_M.gguf"])[7:]]
    assert any("/tree/" in r.path for r in hub.requests)  # it tried the tree first
    assert any(r.path == "/api/models/acme/plain" for r in hub.requests)


def test_verified_bytes_that_are_no_gguf_are_refused(daemon: Daemon, hub: FakeHub) -> None:
    hub.add_file("acme/fake", "fake.Q4_K_M.gguf", b"GGUF" + b"\0" * 5000)
    with daemon.client() as client:
        response = client.post("/api/pull", json={"model": "hf.co/acme/fake", "stream": False})
    assert response.status_code == 422 and "not a valid GGUF" in response.json()["error"]
    assert tags(daemon) == {}
    assert list((daemon.home / "models" / "blobs").iterdir()) == []
