"""The real ``huggingface_hub`` client against ``FakeHub``, and the tiny GGUF writers."""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator

import gguf
import httpx
import pytest
from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.file_download import http_get
from huggingface_hub.hf_api import RepoFile, RepoFolder

from fakehub import FakeHub
from ggufs import TOKENS, write_split_llama, write_tiny_llama

REPO = "someone/tiny-GGUF"
MIB = 1024 * 1024


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as h:
        yield h


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf", file_type=gguf.LlamaFileType.MOSTLY_Q4_K_M)


def _gets(hub: FakeHub, path: str) -> list[tuple[str | None, int]]:
    return [(r.range, r.status) for r in hub.requests if r.method == "GET" and r.path.endswith(path)]


# -- downloads -------------------------------------------------------------------------------


def test_hf_hub_download_gives_identical_bytes(hub: FakeHub, tiny_gguf: pathlib.Path, tmp_path: pathlib.Path) -> None:
    sha = hub.add_file(REPO, "sub/dir/tiny-Q4_K_M.gguf", tiny_gguf)
    hub.add_file(REPO, "README.md", b"# tiny\n", lfs=False)
    assert sha == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()

    local = hf_hub_download(REPO, "sub/dir/tiny-Q4_K_M.gguf", endpoint=hub.endpoint, cache_dir=tmp_path)
    assert pathlib.Path(local).read_bytes() == tiny_gguf.read_bytes()
    commit = hub.commit_sha(REPO)
    assert f"snapshots/{commit}/sub/dir/tiny-Q4_K_M.gguf" in local
    assert (tmp_path / "models--someone--tiny-GGUF" / "blobs" / sha).is_file()
    assert (tmp_path / "models--someone--tiny-GGUF" / "refs" / "main").read_text() == commit

    readme = hf_hub_download(REPO, "README.md", endpoint=hub.endpoint, cache_dir=tmp_path)
    assert pathlib.Path(readme).read_bytes() == b"# tiny\n"
    # by commit sha too, served from cache without a request
    hub.clear_requests()
    again = hf_hub_download(REPO, "README.md", revision=commit, endpoint=hub.endpoint, cache_dir=tmp_path)
    assert again == readme and hub.requests == []


def test_large_file_from_disk(hub: FakeHub, tmp_path: pathlib.Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(24 * MIB))
    sha = hub.add_file(REPO, "big.bin", src)
    local = hf_hub_download(REPO, "big.bin", endpoint=hub.endpoint, cache_dir=tmp_path / "cache")
    assert hashlib.sha256(pathlib.Path(local).read_bytes()).hexdigest() == sha


def test_get_hf_file_metadata(hub: FakeHub) -> None:
    sha = hub.add_file(REPO, "m.gguf", b"x" * 1000)
    hub.add_file(REPO, "config.json", b"{}", lfs=False)
    meta = get_hf_file_metadata(hf_hub_url(REPO, "m.gguf", endpoint=hub.endpoint))
    assert (meta.etag, meta.size, meta.commit_hash) == (sha, 1000, hub.commit_sha(REPO))
    assert meta.xet_file_data is None

    meta = get_hf_file_metadata(hf_hub_url(REPO, "config.json", endpoint=hub.endpoint))
    assert meta.etag == hashlib.sha1(b"blob 2\0{}").hexdigest()  # git blob id for non-LFS files
    assert meta.size == 2


def test_http_get_resumes_with_range(hub: FakeHub, tmp_path: pathlib.Path) -> None:
    data = os.urandom(100_000)
    hub.add_file(REPO, "m.gguf", data)
    part = tmp_path / "m.gguf.incomplete"
    part.write_bytes(data[:30_000])
    hub.clear_requests()
    with part.open("ab") as f:
        http_get(hf_hub_url(REPO, "m.gguf", endpoint=hub.endpoint), f, resume_size=30_000, expected_size=len(data))
    assert part.read_bytes() == data
    assert _gets(hub, "m.gguf") == [("bytes=30000-", 206)]


def test_dropped_connection_is_resumed_by_the_client(hub: FakeHub, tmp_path: pathlib.Path) -> None:
    # The client keeps only whole DOWNLOAD_CHUNK_SIZE (10 MiB) chunks of a broken response,
    # so a Range retry needs a drop past the first chunk.
    chunk = constants.DOWNLOAD_CHUNK_SIZE
    data = os.urandom(chunk + 2 * MIB)
    sha = hub.add_file(REPO, "big.gguf", data)
    hub.drop_connection_after(REPO, "big.gguf", chunk + MIB)
    local = hf_hub_download(REPO, "big.gguf", endpoint=hub.endpoint, cache_dir=tmp_path)
    assert hashlib.sha256(pathlib.Path(local).read_bytes()).hexdigest() == sha
    assert _gets(hub, "big.gguf") == [(None, 200), (f"bytes={chunk}-", 206)]


def test_drop_small_file_restarts_and_times_counts(hub: FakeHub) -> None:
    hub.add_file(REPO, "m.gguf", b"abcdefgh" * 1000)
    hub.drop_connection_after(REPO, "m.gguf", 100, times=2)
    url = hf_hub_url(REPO, "m.gguf", endpoint=hub.endpoint)
    with httpx.Client() as client:
        for _ in range(2):
            with pytest.raises(httpx.RemoteProtocolError):
                client.get(url)
        assert client.get(url).content == b"abcdefgh" * 1000


# -- API endpoints -----------------------------------------------------------------------------


def test_list_repo_tree_shows_lfs_sha256(hub: FakeHub) -> None:
    sha = hub.add_file(REPO, "Q4_K_M/model-Q4_K_M.gguf", b"q4" * 500)
    hub.add_file(REPO, "README.md", b"hi", lfs=False)
    api = HfApi(endpoint=hub.endpoint)

    entries = {e.path: e for e in api.list_repo_tree(REPO, recursive=True)}
    assert set(entries) == {"Q4_K_M", "Q4_K_M/model-Q4_K_M.gguf", "README.md"}
    gguf_entry = entries["Q4_K_M/model-Q4_K_M.gguf"]
    assert isinstance(gguf_entry, RepoFile) and gguf_entry.lfs is not None
    assert (gguf_entry.lfs.sha256, gguf_entry.lfs.size, gguf_entry.size) == (sha, 1000, 1000)
    assert isinstance(entries["README.md"], RepoFile) and entries["README.md"].lfs is None

    top = {e.path: type(e) for e in api.list_repo_tree(REPO)}
    assert top == {"Q4_K_M": RepoFolder, "README.md": RepoFile}
    sub = [e.path for e in api.list_repo_tree(REPO, path_in_repo="Q4_K_M")]
    assert sub == ["Q4_K_M/model-Q4_K_M.gguf"]


def test_list_repo_tree_follows_pagination(tmp_path: pathlib.Path) -> None:
    with FakeHub(tree_page_size=2) as hub:
        for i in range(5):
            hub.add_file(REPO, f"part-{i}.gguf", bytes([i]) * 10)
        paths = [e.path for e in HfApi(endpoint=hub.endpoint).list_repo_tree(REPO, recursive=True)]
        assert paths == [f"part-{i}.gguf" for i in range(5)]
        assert len([r for r in hub.requests if "/tree/" in r.path]) == 3


def test_model_info_and_paths_info(hub: FakeHub) -> None:
    sha = hub.add_file(REPO, "sub/m.gguf", b"m" * 10)
    api = HfApi(endpoint=hub.endpoint)
    for revision in (None, "main", hub.commit_sha(REPO)):
        info = api.model_info(REPO, revision=revision, files_metadata=True)
        assert info.id == REPO and info.sha == hub.commit_sha(REPO) and info.private is False
        assert info.siblings is not None
        (sibling,) = info.siblings
        assert sibling.rfilename == "sub/m.gguf" and sibling.lfs is not None and sibling.lfs.sha256 == sha

    got = api.get_paths_info(REPO, ["sub/m.gguf", "sub", "missing.gguf"])
    assert [(type(e), e.path) for e in got] == [(RepoFile, "sub/m.gguf"), (RepoFolder, "sub")]
    assert api.file_exists(REPO, "sub/m.gguf") and not api.file_exists(REPO, "nope.gguf")
    assert api.repo_exists(REPO) and not api.repo_exists("someone/else")


def test_advertised_sha256_lies_but_bytes_are_real(hub: FakeHub, tmp_path: pathlib.Path) -> None:
    lie = "0" * 64
    real = hub.add_file(REPO, "m.gguf", b"real bytes", advertised_sha256=lie)
    assert real == hashlib.sha256(b"real bytes").hexdigest()
    (entry,) = HfApi(endpoint=hub.endpoint).list_repo_tree(REPO)
    assert isinstance(entry, RepoFile) and entry.lfs is not None and entry.lfs.sha256 == lie
    assert get_hf_file_metadata(hf_hub_url(REPO, "m.gguf", endpoint=hub.endpoint)).etag == lie
    # the client only checks the size: it stores the bytes under the lying etag
    local = hf_hub_download(REPO, "m.gguf", endpoint=hub.endpoint, cache_dir=tmp_path)
    assert pathlib.Path(local).read_bytes() == b"real bytes"
    assert (tmp_path / "models--someone--tiny-GGUF" / "blobs" / lie).is_file()


def test_errors_map_to_client_exceptions(hub: FakeHub, tmp_path: pathlib.Path) -> None:
    hub.add_file(REPO, "m.gguf", b"m")
    hub.add_repo("someone/empty")
    api = HfApi(endpoint=hub.endpoint)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("someone/missing", "m.gguf", endpoint=hub.endpoint, cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("someone/missing")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "nope.gguf", endpoint=hub.endpoint, cache_dir=tmp_path)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("someone/empty", "m.gguf", endpoint=hub.endpoint, cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "m.gguf", revision="v9", endpoint=hub.endpoint, cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        list(api.list_repo_tree(REPO, revision="v9"))
    hub.add_revision(REPO, "v9")
    assert hf_hub_download(REPO, "m.gguf", revision="v9", endpoint=hub.endpoint, cache_dir=tmp_path)
    assert list(api.list_repo_tree("someone/empty")) == []


# -- raw HTTP behaviour ----------------------------------------------------------------------


def test_ranges_head_and_keep_alive(hub: FakeHub) -> None:
    data = bytes(range(256)) * 4
    sha = hub.add_file(REPO, "m.gguf", data)
    url = hf_hub_url(REPO, "m.gguf", endpoint=hub.endpoint)
    with httpx.Client() as client:
        head = client.head(url)
        assert head.status_code == 200
        assert head.headers["X-Linked-Etag"] == f'"{sha}"' and head.headers["X-Linked-Size"] == "1024"
        assert head.headers["Content-Length"] == "1024" and head.headers["Accept-Ranges"] == "bytes"
        assert len(head.headers["X-Repo-Commit"]) == 40
        assert "X-Xet-Hash" not in head.headers and "Link" not in head.headers

        r = client.get(url, headers={"Range": "bytes=10-19"})
        assert (r.status_code, r.content, r.headers["Content-Range"]) == (206, data[10:20], "bytes 10-19/1024")
        r = client.get(url, headers={"Range": "bytes=1000-"})
        assert (r.status_code, r.content) == (206, data[1000:])
        r = client.get(url, headers={"Range": "bytes=-4"})
        assert (r.status_code, r.content) == (206, data[-4:])
        r = client.get(url, headers={"Range": "bytes=1024-"})
        assert (r.status_code, r.headers["Content-Range"]) == (416, "bytes */1024")
        r = client.get(url)
        assert (r.status_code, r.content) == (200, data)

        missing = client.get(hf_hub_url(REPO, "nope", endpoint=hub.endpoint))
        assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"
        assert missing.json() == {"error": "Entry not found"}
        assert client.get(f"{hub.endpoint}/api/models/x/y").headers["X-Error-Code"] == "RepoNotFound"
    assert [r.status for r in hub.requests] == [200, 206, 206, 206, 416, 200, 404, 404]


def test_throttle_slows_the_body(hub: FakeHub, tmp_path: pathlib.Path) -> None:
    src = tmp_path / "slow.bin"
    src.write_bytes(b"s" * 40_000)
    hub.add_file(REPO, "slow.bin", src)
    hub.throttle(REPO, "slow.bin", 200_000)
    url = hf_hub_url(REPO, "slow.bin", endpoint=hub.endpoint)
    with httpx.Client() as client:
        t0 = time.monotonic()
        assert client.get(url).content == b"s" * 40_000
        assert time.monotonic() - t0 >= 0.18
        hub.throttle(REPO, "slow.bin", None)
        t0 = time.monotonic()
        assert client.get(url).content == b"s" * 40_000
        assert time.monotonic() - t0 < 0.15


def test_close_cuts_in_flight_downloads(tmp_path: pathlib.Path) -> None:
    hub = FakeHub().start()
    hub.add_file(REPO, "slow.bin", b"s" * 100_000)
    hub.throttle(REPO, "slow.bin", 10_000)
    with httpx.stream("GET", hf_hub_url(REPO, "slow.bin", endpoint=hub.endpoint)) as r:
        body = r.iter_bytes()
        first = next(body)
        t0 = time.monotonic()
        hub.close()
        with pytest.raises(httpx.RemoteProtocolError):
            for _ in body:
                pass
    assert first and time.monotonic() - t0 < 2
    with pytest.raises(RuntimeError):
        hub.endpoint  # noqa: B018


def test_command_line(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "m.gguf"
    src.write_bytes(b"cli")
    script = pathlib.Path(__file__).with_name("fakehub.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), "--file", f"{REPO}:q/m.gguf={src}"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        endpoint = lines[1].strip().removeprefix("HF_ENDPOINT=")
        assert httpx.get(hf_hub_url(REPO, "q/m.gguf", endpoint=endpoint)).content == b"cli"
    finally:
        proc.terminate()
        proc.wait(timeout=5)


# -- tiny GGUF files -------------------------------------------------------------------------


def test_tiny_llama_metadata(tiny_gguf: pathlib.Path) -> None:
    assert tiny_gguf.stat().st_size < 1 * MIB
    reader = gguf.GGUFReader(tiny_gguf)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.architecture"] == "llama"
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert fields["llama.context_length"] == 256
    assert len(fields["tokenizer.ggml.tokens"]) == TOKENS
    assert "<0x0A>" in fields["tokenizer.ggml.tokens"]
    assert len(reader.tensors) == 3 + 9 * 2


def test_split_llama_parts(tmp_path: pathlib.Path) -> None:
    paths = write_split_llama(tmp_path, "tiny-Q8_0", 3, seed=3)
    assert [p.name for p in paths] == [f"tiny-Q8_0-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    n_tensors = 0
    for i, path in enumerate(paths):
        reader = gguf.GGUFReader(path)
        fields = {k: f.contents() for k, f in reader.fields.items()}
        assert (fields["split.no"], fields["split.count"], fields["split.tensors.count"]) == (i, 3, 21)
        assert ("tokenizer.ggml.tokens" in fields) == (i == 0)
        n_tensors += len(reader.tensors)
    assert n_tensors == 21


def test_tiny_llama_runs_in_llama_cpp(tiny_gguf: pathlib.Path, tmp_path: pathlib.Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}</s>{% endfor %}<|assistant|>"
    model = write_tiny_llama(tmp_path / "chat.gguf", chat_template=template, seed=1)
    for path in (tiny_gguf, model, write_split_llama(tmp_path, "split", 3)[0]):
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, verbose=False)
        try:
            out = llm.create_completion("hello world", max_tokens=8)
            assert out["choices"][0]["finish_reason"] in ("stop", "length")
            assert llm.n_vocab() == TOKENS
            # unknown characters fall back to the byte tokens <0x00>..<0xFF> (ids 3..258)
            assert llm.tokenize(b"hello \xe2\x82\xac", add_bos=False)[-3:] == [3 + 0xE2, 3 + 0x82, 3 + 0xAC]
        finally:
            llm.close()
