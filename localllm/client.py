"""A small client of the daemon's native API, used by the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from .config import get_settings
from .errors import ApiError, DaemonUnavailable


class Client:
    def __init__(self, base_url: str | None = None, timeout: float | None = None) -> None:
        settings = get_settings()
        self.base_url = base_url or settings.base_url
        key = settings.api_key.get_secret_value() if settings.api_key else ""
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout or 60.0, read=None),
            headers={"Authorization": f"Bearer {key}"} if key else None,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------
    def _unavailable(self, exc: Exception) -> DaemonUnavailable:
        return DaemonUnavailable(
            f"could not connect to localllm at {self.base_url} ({type(exc).__name__}); "
            "start it with 'localllm serve' or set LOCALLLM_HOST"
        )

    @staticmethod
    def _error_of(response: httpx.Response) -> ApiError:
        try:
            message = response.json().get("error") or response.text
        except ValueError:
            message = response.text or response.reason_phrase
        return ApiError(str(message), response.status_code)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from exc
        if response.status_code >= 400:
            raise self._error_of(response)
        return response

    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        try:
            with self._http.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._error_of(response)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if "error" in event:
                        raise ApiError(str(event["error"]), 500)
                    yield event
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from exc

    # --- API -----------------------------------------------------------------
    def version(self) -> str:
        return self.request("GET", "/api/version").json()["version"]

    def list(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/tags").json()["models"]

    def show(self, model: str, verbose: bool = False) -> dict[str, Any]:
        return self.request("POST", "/api/show", json={"model": model, "verbose": verbose}).json()

    def pull(self, model: str, insecure: bool = False) -> Iterator[dict[str, Any]]:
        return self.stream("POST", "/api/pull", json={"model": model, "insecure": insecure, "stream": True})

    def generate(self, model: str, prompt: str = "", *, stream: bool = True, **fields: Any) -> Iterator[dict[str, Any]]:
        """``/api/generate`` chunks (one final chunk when ``stream`` is false). ``fields``: any request field."""
        body = {"model": model, "prompt": prompt, "stream": stream, **_present(fields)}
        if stream:
            return self.stream("POST", "/api/generate", json=body)
        return iter([self.request("POST", "/api/generate", json=body).json()])

    def chat(
        self, model: str, messages: list[dict[str, Any]], *, stream: bool = True, **fields: Any
    ) -> Iterator[dict[str, Any]]:
        """``/api/chat`` chunks; ``fields``: ``options``, ``format``, ``keep_alive``, ``tools``, ..."""
        body = {"model": model, "messages": messages, "stream": stream, **_present(fields)}
        if stream:
            return self.stream("POST", "/api/chat", json=body)
        return iter([self.request("POST", "/api/chat", json=body).json()])

    def embed(self, model: str, input: str | list[str], **fields: Any) -> dict[str, Any]:
        return self.request("POST", "/api/embed", json={"model": model, "input": input, **_present(fields)}).json()

    def ps(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/ps").json()["models"]

    def stop(self, model: str) -> None:
        """Unload a model now (an empty generate with ``keep_alive: 0``, as Ollama's CLI does)."""
        self.request("POST", "/api/generate", json={"model": model, "prompt": "", "keep_alive": 0, "stream": False})

    def copy(self, source: str, destination: str) -> None:
        self.request("POST", "/api/copy", json={"source": source, "destination": destination})

    def blob_exists(self, digest: str) -> bool:
        try:
            response = self._http.head(f"/api/blobs/{digest}")
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from exc
        return response.status_code == 200

    def upload_blob(self, digest: str, chunks: Iterator[bytes]) -> None:
        """Send a file's bytes; the daemon checks them against ``digest``."""
        self.request("POST", f"/api/blobs/{digest}", content=chunks)

    def create(self, model: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """``/api/create`` status events; ``fields``: ``from``, ``files``, ``adapters``, ``template``, ..."""
        return self.stream("POST", "/api/create", json={"model": model, "stream": True, **_present(fields)})

    def delete(self, model: str) -> None:
        self.request("DELETE", "/api/delete", json={"model": model})


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}
