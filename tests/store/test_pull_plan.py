"""Pull planning and the fetch-verify-commit path, driven in-process: the real huggingface_hub client
against the local Hub stand-in, a real store, no daemon."""

from __future__ import annotations

import hashlib
from pathlib import Path

import gguf
import pytest

from conftest import publish
from fakehub import FakeHub
from ggufs import write_split_llama, write_tiny_llama
from localllm.config import Settings
from localllm.errors import RemoteNotFound, VerificationFailed
from localllm.names import ModelName
from localllm.store.gguf_pull import GGUFPulls
from localllm.store.models import ModelStore
from localllm.store.pull import Puller

Q = gguf.LlamaFileType


def sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


@pytest.fixture
def puller(store: ModelStore, hub: FakeHub) -> Puller:
    return Puller(store, Settings(hf_endpoint=hub.endpoint), [GGUFPulls()])


@pytest.fixture
def quants(hub: FakeHub, tmp_path: Path) -> dict[str, Path]:
    files = publish(hub, tmp_path, "acme/tiny-GGUF", {
        "tiny.Q2_K.gguf": Q.MOSTLY_Q2_K, "tiny.Q4_K_M.gguf": Q.MOSTLY_Q4_K_M, "tiny.Q8_0.gguf": Q.MOSTLY_Q8_0})
    hub.add_file("acme/tiny-GGUF", "README.md", b"# tiny\n", lfs=False)
    return files


def planned(puller: Puller, name: str) -> list[tuple[str, str]]:
    plan = puller.plan(ModelName.parse(name)).plan
    return [(file.filename, file.digest) for file in plan.files]


def test_a_repo_without_a_tag_plans_the_default_quant_with_the_hubs_sha256(puller, quants) -> None:
    assert planned(puller, "hf.co/acme/tiny-GGUF") == [("tiny.Q4_K_M.gguf", sha(quants["tiny.Q4_K_M.gguf"]))]


@pytest.mark.parametrize("tag", ["Q8_0", "q8_0", "tiny.Q8_0.gguf"])
def test_a_tag_picks_the_file(puller, quants, tag) -> None:
    assert planned(puller, f"hf.co/acme/tiny-GGUF:{tag}") == [("tiny.Q8_0.gguf", sha(quants["tiny.Q8_0.gguf"]))]


def test_a_split_model_plans_every_part_in_order(puller, hub, tmp_path) -> None:
    parts = write_split_llama(tmp_path / "src", "tiny-Q4_K_M", 3, file_type=Q.MOSTLY_Q4_K_M)
    for part in reversed(parts):
        hub.add_file("acme/split-GGUF", f"Q4_K_M/{part.name}", part)
    assert planned(puller, "hf.co/acme/split-GGUF") == [(part.name, sha(part)) for part in parts]


def test_the_embedded_default_plans_without_the_network(store) -> None:
    offline = Puller(store, Settings(hf_endpoint="http://127.0.0.1:9"), [GGUFPulls()])
    pull = offline.plan(ModelName.parse("smollm2:135m"))
    assert pull.plan.repo is None and pull.plan.source.startswith("embedded:")


@pytest.mark.parametrize(("name", "says"), [
    ("nosuchmodel", "it is not in the catalog"),
    ("example.com/acme/model", "only catalog names and hf.co/<user>/<repo>"),
])
def test_names_nobody_serves_are_refused_before_any_download(puller, name, says) -> None:
    with pytest.raises(RemoteNotFound) as caught:
        puller.plan(ModelName.parse(name))
    assert says in caught.value.message
    assert caught.value.status_code == 404


def test_a_repo_without_gguf_files_is_refused(puller, hub) -> None:
    hub.add_file("acme/docs", "README.md", b"# nothing here\n", lfs=False)
    with pytest.raises(RemoteNotFound) as caught:
        puller.plan(ModelName.parse("hf.co/acme/docs"))
    assert "no GGUF" in caught.value.message or "holds no" in caught.value.message


def test_an_executed_plan_stores_verified_bytes_and_reports_progress(puller, store, quants) -> None:
    events: list[dict] = []
    puller.execute(puller.plan(ModelName.parse("hf.co/acme/tiny-GGUF:Q2_K")), events.append)
    assert events[-1] == {"status": "success"}
    entry = store.get(ModelName.parse("hf.co/acme/tiny-GGUF:Q2_K"))
    [model] = store.model_paths(entry.manifest)
    assert sha(model) == sha(quants["tiny.Q2_K.gguf"])
    progress = [e for e in events if e.get("digest") == sha(model)]
    assert progress and progress[-1]["completed"] == progress[-1]["total"] == model.stat().st_size


def test_bytes_that_do_not_match_the_hubs_sha256_leave_nothing(puller, store, hub, tmp_path) -> None:
    hub.add_file("acme/liar", "x.Q4_K_M.gguf", write_tiny_llama(tmp_path / "x.gguf"), advertised_sha256="ab" * 32)
    pull = puller.plan(ModelName.parse("hf.co/acme/liar"))
    with pytest.raises(VerificationFailed):
        puller.execute(pull, lambda _event: None)
    assert store.list() == []
    assert list((store.root / "blobs").iterdir()) == []
