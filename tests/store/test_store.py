import hashlib
import json
import threading
from pathlib import Path

import pytest

from localllm.errors import DigestMismatch, InvalidDigest, ModelNotFound
from localllm.names import ModelName
from localllm.store.blobs import parse_digest
from localllm.store.manifests import Layer, Manifest, MediaType
from localllm.store.models import ModelStore


def model(store: ModelStore, data: bytes, extra: bytes | None = None) -> Manifest:
    layers = [store.add_bytes(data, MediaType.MODEL)]
    if extra is not None:
        layers.append(store.add_bytes(extra, MediaType.TEMPLATE))
    return Manifest(config=store.add_config({"model_format": "gguf"}), layers=layers)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def test_blobs_are_content_addressed(store: ModelStore) -> None:
    digest, size = store.blobs.write_bytes(b"hello")
    assert digest == "sha256:" + hashlib.sha256(b"hello").hexdigest() and size == 5
    assert store.blobs.path(digest).name == "sha256-" + digest[7:]
    assert store.blobs.path(digest).read_bytes() == b"hello"


def test_mismatched_bytes_leave_nothing(store: ModelStore) -> None:
    with pytest.raises(DigestMismatch):
        store.blobs.write_chunks([b"abc"], expected="sha256:" + "0" * 64)
    assert list(store.blobs.root.iterdir()) == []


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:../../etc/passwd",
        "sha256:" + "0" * 63,
        "sha512:" + "0" * 64,
        "sha256:" + "g" * 64,
        "",
        "sha256-" + "0" * 65,
    ],
)
def test_bad_digests_never_become_paths(store: ModelStore, digest: str) -> None:
    with pytest.raises(InvalidDigest):
        store.blobs.path(digest)


def test_digest_forms() -> None:
    hexd = "AB" * 32
    assert parse_digest(f"sha256:{hexd}") == parse_digest(f"sha256-{hexd.lower()}") == f"sha256:{hexd.lower()}"


def test_commit_copy_delete_prune(store: ModelStore) -> None:
    a, b = ModelName.parse("a"), ModelName.parse("b:v1")
    store.commit(a, model(store, b"weights", b"template A"))
    store.copy(a, b)
    assert store.get(b).manifest == store.get(a).manifest  # a copy is a new manifest, same blobs
    blob_count = len(store.blobs.digests())

    store.delete(a)  # b still uses every blob
    assert len(store.blobs.digests()) == blob_count
    store.delete(b)
    assert store.blobs.digests() == []
    assert not (store.root / "manifests" / "registry.ollama.ai").exists()  # empty folders go too


def test_delete_keeps_shared_blobs_only(store: ModelStore) -> None:
    store.commit(ModelName.parse("one"), model(store, b"shared", b"t1"))
    store.commit(ModelName.parse("two"), model(store, b"shared", b"t2"))
    store.delete(ModelName.parse("one"))
    remaining = set(store.blobs.digests())
    t1 = "sha256:" + hashlib.sha256(b"t1").hexdigest()
    shared = "sha256:" + hashlib.sha256(b"shared").hexdigest()
    assert t1 not in remaining and shared in remaining


def test_pinned_blobs_survive_a_prune(store: ModelStore) -> None:
    digest, _ = store.blobs.write_bytes(b"arriving")
    with store.pinned([digest]):
        store.prune()
        assert store.blobs.exists(digest)
    store.prune()
    assert not store.blobs.exists(digest)


def test_names_match_case_insensitively(store: ModelStore) -> None:
    store.commit(ModelName.parse("hf.co/User/Repo:Q4_K_M"), model(store, b"w"))
    assert store.get(ModelName.parse("hf.co/user/repo:q4_k_m")).name.display == "hf.co/User/Repo:Q4_K_M"
    store.commit(ModelName.parse("HF.CO/user/repo:q4_k_m"), model(store, b"w2"))  # replaces, no duplicate
    assert len(store.list()) == 1
    with pytest.raises(ModelNotFound):
        store.get(ModelName.parse("hf.co/user/repo:Q8_0"))


def test_manifest_is_oci_shaped_json(store: ModelStore) -> None:
    name = ModelName.parse("m")
    store.commit(name, model(store, b"w", b"tmpl"))
    raw = json.loads(name.manifest_path(store.manifests.root).read_text())
    assert raw["schemaVersion"] == 2
    assert raw["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert [layer["mediaType"] for layer in raw["layers"]] == [MediaType.MODEL, MediaType.TEMPLATE]
    assert all(layer["digest"].startswith("sha256:") for layer in raw["layers"])


def test_commit_refuses_missing_blobs(store: ModelStore) -> None:
    manifest = model(store, b"w")
    manifest.layers.append(Layer(mediaType=MediaType.LICENSE, digest="sha256:" + "1" * 64, size=3))
    with pytest.raises(Exception, match="missing"):
        store.commit(ModelName.parse("m"), manifest)
    assert store.list() == []


def test_concurrent_commits_and_deletes_stay_consistent(store: ModelStore) -> None:
    errors: list[BaseException] = []

    def churn(i: int) -> None:
        try:
            for round_ in range(20):
                name = ModelName.parse(f"m{i}:r{round_ % 3}")
                store.commit(name, model(store, f"w{i}-{round_}".encode()))
                if round_ % 2:
                    store.delete(name)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for entry in store.list():
        for digest in entry.manifest.digests:
            assert store.blobs.exists(digest)
