"""A small local stand-in for the Hugging Face Hub, for tests.

The real ``huggingface_hub`` client downloads real bytes from it: ``hf_hub_download``,
``get_hf_file_metadata``, ``file_download.http_get``, ``HfApi.model_info``,
``HfApi.list_repo_tree`` and ``HfApi.get_paths_info`` all work against ``FakeHub.endpoint``.

Stdlib only. Serves on 127.0.0.1 (a free port by default) from daemon threads::

    with FakeHub() as hub:
        sha = hub.add_file("user/repo", "model.gguf", b"...")
        hf_hub_download("user/repo", "model.gguf", endpoint=hub.endpoint, cache_dir=tmp)

Run it by hand (serves until Ctrl+C)::

    python tests/fakehub.py --file user/repo:path/in/repo.gguf=/local/file.gguf [--file ...] [--port N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

__all__ = ["FakeHub", "RequestRecord"]

_CHUNK = 1024 * 1024
_TIMESTAMP = "2024-01-01T00:00:00.000Z"
_API_ACTIONS = ("revision", "tree", "paths-info")
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


@dataclass(frozen=True)
class RequestRecord:
    """One request as the hub answered it."""

    method: str
    path: str  # URL path, percent-decoded, without the query string
    range: str | None  # the request's Range header
    status: int


@dataclass(frozen=True)
class _File:
    path: str
    size: int
    sha256: str  # the real one
    advertised_sha256: str  # what the tree, model info and X-Linked-Etag claim
    lfs: bool
    oid: str  # git blob id: of the content, or of the LFS pointer file
    pointer_size: int | None
    data: bytes | None
    source: pathlib.Path | None

    def entry(self, lfs: bool = True) -> dict[str, Any]:
        """Tree / paths-info entry."""
        out: dict[str, Any] = {"type": "file", "oid": self.oid, "size": self.size, "path": self.path}
        if self.lfs and lfs:
            out["lfs"] = {"oid": self.advertised_sha256, "size": self.size, "pointerSize": self.pointer_size}
        return out

    def sibling(self, lfs: bool = True) -> dict[str, Any]:
        """``siblings`` entry of the model info."""
        out: dict[str, Any] = {"rfilename": self.path, "size": self.size, "blobId": self.oid}
        if self.lfs and lfs:
            out["lfs"] = {"sha256": self.advertised_sha256, "size": self.size, "pointerSize": self.pointer_size}
        return out

    @property
    def etag(self) -> str:
        return self.advertised_sha256 if self.lfs else self.oid


@dataclass
class _Repo:
    repo_id: str
    files: dict[str, _File] = field(default_factory=dict)
    revisions: set[str] = field(default_factory=lambda: {"main"})
    commit: str = ""

    def __post_init__(self) -> None:
        self.recompute_commit()

    def recompute_commit(self) -> None:
        h = hashlib.sha1(f"fakehub:{self.repo_id}\n".encode())
        for path in sorted(self.files):
            f = self.files[path]
            h.update(f"{path}\0{f.oid}\0{int(f.lfs)}\n".encode())
        self.commit = h.hexdigest()

    def directories(self) -> set[str]:
        dirs: set[str] = set()
        for path in self.files:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        return dirs


def _digests(size: int, chunks: Iterable[bytes]) -> tuple[str, str]:
    """(sha256, git blob id) of some content; the git id is sha1 of ``b"blob <size>\\0" + content``."""
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    for chunk in chunks:
        sha256.update(chunk)
        sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def _file_chunks(path: pathlib.Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


class FakeHub:
    """A Hugging Face Hub look-alike serving in-memory and on-disk files over HTTP.

    Files are immutable once added (an on-disk ``data`` path must not change while served);
    adding a file again replaces it and gives the repo a new commit sha.
    """

    def __init__(self, *, port: int = 0, tree_page_size: int = 1000) -> None:
        self._port = port
        self.tree_page_size = tree_page_size
        self._lock = threading.Lock()
        self._repos: dict[str, _Repo] = {}
        self._drops: dict[tuple[str, str], list[int]] = {}  # -> [nbytes, times left]
        self._throttles: dict[tuple[str, str], int] = {}
        self.ignore_range = False  # answer 200 with the whole file to a Range request, as some CDNs do
        self.tree_api = True  # False: /tree answers 404, as a Hub mirror without it would
        self.lfs_in_listings = True  # False: tree and model info carry no lfs details (only the HEAD's ETag)
        self._requests: list[RequestRecord] = []
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeHub:
        """Bind 127.0.0.1 and serve from a daemon thread."""
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.hub = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fakehub", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and cut open (keep-alive or in-flight) connections."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` (only once started)."""
        if self._server is None:
            raise RuntimeError("FakeHub is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- content -----------------------------------------------------------------------------
    def add_repo(self, repo_id: str) -> None:
        """Create an empty model repo (no-op if it exists)."""
        with self._lock:
            self._repos.setdefault(repo_id, _Repo(repo_id))

    def add_revision(self, repo_id: str, revision: str) -> None:
        """Make branch/tag name ``revision`` resolve to the repo's (single) commit."""
        self.add_repo(repo_id)
        with self._lock:
            self._repos[repo_id].revisions.add(revision)

    def add_file(
        self,
        repo_id: str,
        path: str,
        data: bytes | pathlib.Path,
        *,
        lfs: bool = True,
        advertised_sha256: str | None = None,
    ) -> str:
        """Add (or replace) a file and return its real sha256 hex.

        ``data`` is kept in memory (bytes) or streamed from disk on every request (a path).
        ``advertised_sha256`` makes the hub lie: the tree's ``lfs.oid``, the model info and
        ``X-Linked-Etag`` carry it while the served bytes stay the real ones (LFS files only).
        """
        path = path.strip("/")
        if not path or any(p in ("", ".", "..") for p in path.split("/")):
            raise ValueError(f"bad path in repo: {path!r}")
        if advertised_sha256 is not None and not lfs:
            raise ValueError("advertised_sha256 needs an LFS file")
        blob: bytes | None = None
        source: pathlib.Path | None = None
        if isinstance(data, (bytes, bytearray, memoryview)):
            blob = bytes(data)
            size = len(blob)
            sha256, git_oid = _digests(size, [blob])
        else:
            source = pathlib.Path(data).resolve()
            size = source.stat().st_size
            sha256, git_oid = _digests(size, _file_chunks(source))
        advertised = (advertised_sha256 or sha256).lower()
        if lfs:
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{advertised}\nsize {size}\n".encode()
            oid, pointer_size = _digests(len(pointer), [pointer])[1], len(pointer)
        else:
            oid, pointer_size = git_oid, None
        entry = _File(path, size, sha256, advertised, lfs, oid, pointer_size, blob, source)
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo(repo_id))
            if path in repo.directories() or any(path.startswith(p + "/") for p in repo.files):
                raise ValueError(f"{path!r} clashes with a directory or file in {repo_id}")
            repo.files[path] = entry
            repo.recompute_commit()
        return sha256

    def commit_sha(self, repo_id: str) -> str:
        """The repo's current 40-hex commit sha (changes whenever a file is added)."""
        with self._lock:
            return self._repos[repo_id].commit

    # -- faults ------------------------------------------------------------------------------
    def drop_connection_after(self, repo_id: str, path: str, nbytes: int, times: int = 1) -> None:
        """Make the next ``times`` GETs of a file send headers and ``nbytes`` of body, then hang up."""
        with self._lock:
            self._drops[(repo_id, path.strip("/"))] = [nbytes, times]

    def throttle(self, repo_id: str, path: str, bytes_per_second: int | None) -> None:
        """Slow down a file's GET bodies (``None`` removes the limit)."""
        with self._lock:
            key = (repo_id, path.strip("/"))
            if bytes_per_second is None:
                self._throttles.pop(key, None)
            else:
                self._throttles[key] = max(1, bytes_per_second)

    # -- request log -------------------------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the requests answered so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- internals used by the handler -------------------------------------------------------
    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)

    def _canonical(self, repo_id: str) -> str:
        """Repo ids match case-insensitively, as on the Hub."""
        if repo_id in self._repos:
            return repo_id
        return next((r for r in self._repos if r.lower() == repo_id.lower()), repo_id)

    def _lookup(self, repo_id: str) -> tuple[str, dict[str, _File], set[str], set[str]] | None:
        """(commit, files, directories, revisions) of a repo, or None."""
        with self._lock:
            repo = self._repos.get(self._canonical(repo_id))
            if repo is None:
                return None
            return repo.commit, dict(repo.files), repo.directories(), set(repo.revisions)

    def _faults(self, repo_id: str, path: str) -> tuple[int | None, int | None]:
        """(drop after n bytes, bytes per second) for the next GET; consumes one drop."""
        key = (self._canonical(repo_id), path)
        with self._lock:
            drop = None
            if key in self._drops:
                nbytes, times = self._drops[key]
                drop = nbytes
                if times <= 1:
                    del self._drops[key]
                else:
                    self._drops[key][1] = times - 1
            return drop, self._throttles.get(key)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hub: FakeHub

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], _DISCONNECTS):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    server_version = "FakeHub/1.0"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms stalls

    # -- plumbing ----------------------------------------------------------------------------
    @property
    def hub(self) -> FakeHub:
        return self.server.hub

    def setup(self) -> None:
        super().setup()
        with self.hub._lock:
            self.hub._connections.add(self.connection)

    def finish(self) -> None:
        with self.hub._lock:
            self.hub._connections.discard(self.connection)
        try:
            super().finish()
        except _DISCONNECTS:
            pass

    def handle(self) -> None:
        try:
            super().handle()
        except _DISCONNECTS:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        headers = getattr(self, "headers", None)
        self.hub._record(
            RequestRecord(
                method=self.command or "",
                path=unquote(urlsplit(self.path).path),
                range=headers.get("Range") if headers is not None else None,
                status=_status(code),
            )
        )

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
        headers = {"X-Error-Message": message}
        if code is not None:
            headers["X-Error-Code"] = code
        if commit is not None:
            headers["X-Repo-Commit"] = commit
        self._json(status, {"error": message}, headers)

    # -- routing -----------------------------------------------------------------------------
    def _dispatch(self) -> None:
        body = self._read_body()
        url = urlsplit(self.path)
        segments = [unquote(s) for s in url.path.split("/")[1:]]
        query = parse_qs(url.query)
        if len(segments) >= 2 and segments[0] == "api" and segments[1] == "models":
            self._api(segments[2:], query, body)
        elif self.command in ("GET", "HEAD") and (route := self._split_resolve(segments)) is not None:
            self._resolve(*route)
        else:
            self._error(404, None, "Sorry, we can't find the page you are looking for.")

    @staticmethod
    def _split_resolve(segments: list[str]) -> tuple[str, str, str] | None:
        for n in (2, 1):  # "user/name" or "name" repo ids
            if len(segments) >= n + 3 and segments[n] == "resolve" and all(segments[:n]):
                return "/".join(segments[:n]), segments[n + 1], "/".join(segments[n + 2 :])
        return None

    def _split_api(self, rest: list[str]) -> tuple[str, str | None, list[str]] | None:
        """``{repo_id}[/{action}/{revision}[/{path}]]`` -> (repo_id, action, [revision, *path])."""
        if len(rest) in (1, 2) and all(rest):
            return "/".join(rest), None, []
        routes = [
            ("/".join(rest[:n]), rest[n], rest[n + 1 :])
            for n in (2, 1)
            if len(rest) > n + 1 and rest[n] in _API_ACTIONS and all(rest[:n])
        ]
        known = [r for r in routes if self.hub._lookup(r[0]) is not None]
        candidates = known or routes
        return candidates[0] if candidates else None

    def _api(self, rest: list[str], query: dict[str, list[str]], body: bytes) -> None:
        route = self._split_api(rest)
        if route is None:
            return self._error(404, None, "Sorry, we can't find the page you are looking for.")
        repo_id, action, args = route
        info = self.hub._lookup(repo_id)
        if info is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        commit, files, dirs, revisions = info
        revision = args[0] if args else "main"
        if revision not in revisions and revision != commit:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        subpath = "/".join(args[1:]).strip("/")

        if action in (None, "revision") and self.command == "GET" and len(args) <= 1:
            siblings = [files[p].sibling(self.hub.lfs_in_listings) for p in sorted(files)]
            return self._json(200, _model_info(repo_id, commit, siblings))
        if action == "tree" and self.command == "GET" and self.hub.tree_api:
            return self._tree(repo_id, commit, files, dirs, subpath, query)
        if action == "paths-info" and self.command == "POST" and len(args) == 1:
            paths = self._posted_paths(body)
            entries = [_entry(repo_id, commit, files, dirs, p.strip("/"), self.hub.lfs_in_listings) for p in paths]
            return self._json(200, [e for e in entries if e is not None])
        self._error(404, None, "Sorry, we can't find the page you are looking for.")

    def _posted_paths(self, body: bytes) -> list[str]:
        if "json" in (self.headers.get("Content-Type") or ""):
            paths = json.loads(body or b"{}").get("paths", [])
            return [paths] if isinstance(paths, str) else list(paths)
        return parse_qs(body.decode()).get("paths", [])

    def _tree(
        self,
        repo_id: str,
        commit: str,
        files: dict[str, _File],
        dirs: set[str],
        subpath: str,
        query: dict[str, list[str]],
    ) -> None:
        if subpath and subpath not in dirs:
            return self._error(404, "EntryNotFound", f"{subpath} does not exist", commit)
        recursive = (query.get("recursive") or ["false"])[0].lower() in ("true", "1")
        prefix = subpath + "/" if subpath else ""
        names = [p for p in sorted(dirs | set(files)) if p.startswith(prefix)]
        if not recursive:
            names = [p for p in names if "/" not in p[len(prefix) :]]
        page_size = max(1, self.hub.tree_page_size)
        cursor = int((query.get("cursor") or ["0"])[0])
        page = names[cursor : cursor + page_size]
        entries = [_entry(repo_id, commit, files, dirs, p, self.hub.lfs_in_listings) for p in page]
        headers = {}
        if cursor + page_size < len(names):
            params = {k: v[0] for k, v in query.items() if k != "cursor"} | {"cursor": str(cursor + page_size)}
            next_url = f"{self.hub.endpoint}{quote(urlsplit(self.path).path)}?{urlencode(params)}"
            headers["Link"] = f'<{next_url}>; rel="next"'
        self._json(200, entries, headers)

    # -- file downloads ----------------------------------------------------------------------
    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        info = self.hub._lookup(repo_id)
        if info is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        commit, files, _dirs, revisions = info
        if revision not in revisions and revision != commit:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        f = files.get(path)
        if f is None:
            return self._error(404, "EntryNotFound", "Entry not found", commit)

        start, end = 0, f.size - 1
        status = 200
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": f'"{f.etag}"',
            "X-Repo-Commit": commit,
        }
        if f.lfs:
            headers["X-Linked-Etag"] = f'"{f.advertised_sha256}"'
            headers["X-Linked-Size"] = str(f.size)
        range_header = self.headers.get("Range") if self.command == "GET" and not self.hub.ignore_range else None
        if range_header:
            parsed = _parse_range(range_header, f.size)
            if parsed is None:
                headers["Content-Range"] = f"bytes */{f.size}"
                return self._reply(416, b"", headers)
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
        length = max(0, end - start + 1)

        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            return
        drop, rate = self.hub._faults(repo_id, path)
        to_send = length if drop is None else min(drop, length)
        try:
            self._send_body(f, start, to_send, rate)
        except _DISCONNECTS:
            self.close_connection = True
            return
        if to_send < length:  # simulate a dropped connection: graceful FIN mid-body
            self.close_connection = True

    def _send_body(self, f: _File, start: int, count: int, rate: int | None) -> None:
        if count <= 0:
            return
        if rate is None and f.source is not None:
            with f.source.open("rb") as fh:
                self.connection.sendfile(fh, start, count)
            return
        step = _CHUNK if rate is None else max(1, min(_CHUNK, rate // 20))
        t0 = time.monotonic()
        sent = 0
        fh: BinaryIO | None = f.source.open("rb") if f.source is not None else None
        try:
            if fh is not None:
                fh.seek(start)
            view = memoryview(f.data) if f.data is not None else None
            while sent < count:
                n = min(step, count - sent)
                if rate is not None:  # never get ahead of `rate`
                    delay = t0 + (sent + n) / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                if view is not None:
                    chunk = view[start + sent : start + sent + n]
                else:
                    assert fh is not None
                    chunk = memoryview(fh.read(n))
                    if not chunk:
                        raise ConnectionAbortedError("source file shrank")
                self.wfile.write(chunk)
                sent += len(chunk)
        finally:
            if fh is not None:
                fh.close()


def _status(code: int | str) -> int:
    try:
        return int(code)
    except ValueError:
        return 0


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=N-``, ``bytes=N-M`` or ``bytes=-K`` -> inclusive (start, end); None if unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0 or size == 0:
                return None
            return max(0, size - suffix), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


def _entry(
    repo_id: str, commit: str, files: dict[str, _File], dirs: set[str], path: str, lfs: bool = True
) -> dict[str, Any] | None:
    if path in files:
        return files[path].entry(lfs)
    if path in dirs:
        oid = hashlib.sha1(f"tree:{repo_id}:{commit}:{path}".encode()).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": path}
    return None


def _model_info(repo_id: str, commit: str, siblings: list[dict[str, Any]]) -> dict[str, Any]:
    author = repo_id.split("/")[0] if "/" in repo_id else None
    return {
        "_id": commit[:24],
        "id": repo_id,
        "modelId": repo_id,
        "author": author,
        "sha": commit,
        "lastModified": _TIMESTAMP,
        "createdAt": _TIMESTAMP,
        "private": False,
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": ["gguf"] if any(s["rfilename"].endswith(".gguf") for s in siblings) else [],
        "library_name": None,
        "siblings": siblings,
        "spaces": [],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve local files as a fake Hugging Face Hub.")
    parser.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="REPO:PATH=LOCAL",
        help="serve LOCAL as PATH in model repo REPO (e.g. user/repo:model.gguf=/tmp/model.gguf)",
    )
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    hub = FakeHub(port=args.port)
    for spec in args.file:
        repo_and_path, sep, local = spec.partition("=")
        repo_id, sep2, path = repo_and_path.partition(":")
        if not (sep and sep2 and repo_id and path and local):
            parser.error(f"bad --file {spec!r}, want REPO:PATH=LOCAL")
        sha = hub.add_file(repo_id, path, pathlib.Path(local).expanduser())
        print(f"{repo_id}:{path} sha256={sha} size={os.path.getsize(local)}", flush=True)
    with hub:
        print(f"HF_ENDPOINT={hub.endpoint}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
