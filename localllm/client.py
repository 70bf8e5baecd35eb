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
        self.base_url = base_url or get_settings().base_url
        self._http = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout or 60.0, read=None))

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

    def copy(self, source: str, destination: str) -> None:
        self.request("POST", "/api/copy", json={"source": source, "destination": destination})

    def delete(self, model: str) -> None:
        self.request("DELETE", "/api/delete", json={"model": model})
