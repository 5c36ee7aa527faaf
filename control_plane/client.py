"""A small client of the control plane's REST API, for the operator commands and scripts.

It needs only aiohttp (no database driver), so an operator's laptop can run `edgefleet push`
without the control-plane extra. Every failure becomes an `ApiCallFailed` whose message says
what went wrong and what to do next: the control plane cannot be reached, the token was
refused, or the server's own `{"error": ...}` message with its status. An https:// control
plane whose certificate comes from a private CA is checked against `--ca-file` (or
`EDGEFLEET_CA_FILE`): see `tls_from`.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from shared.errors import EdgeFleetError
from shared.tls import TlsFileError, client_context

CP_ENV = "EDGEFLEET_CP"
TOKEN_ENV = "EDGEFLEET_TOKEN"
CA_FILE_ENV = "EDGEFLEET_CA_FILE"
DEFAULT_CP = "http://127.0.0.1:8080"
UPLOAD_CHUNK = 1 << 20


class ApiCallFailed(EdgeFleetError):
    """A call to the control plane failed; the message says why and what to try."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def endpoint_from(cp: str | None, token: str | None, env: Mapping[str, str]) -> tuple[str, str]:
    """The control plane URL and token: flags first, then `EDGEFLEET_CP` / `EDGEFLEET_TOKEN`."""
    url = (cp or env.get(CP_ENV) or DEFAULT_CP).rstrip("/")
    secret = token or env.get(TOKEN_ENV) or ""
    if not secret:
        raise ApiCallFailed(
            f"no operator token: pass --token or set {TOKEN_ENV} "
            "(an admin creates one with `edgefleet cp token create`)"
        )
    return url, secret


def tls_from(ca_file: Path | None, env: Mapping[str, str]) -> ssl.SSLContext | None:
    """The context checking an https:// control plane: `--ca-file`, else `EDGEFLEET_CA_FILE`.

    None without either: the system's trusted CAs. Blocking (reads the file).
    """
    path = ca_file or (Path(env[CA_FILE_ENV]) if env.get(CA_FILE_ENV) else None)
    if path is None:
        return None
    try:
        return client_context(path.expanduser())
    except TlsFileError as error:
        raise ApiCallFailed(f"{error} (check --ca-file or {CA_FILE_ENV})") from None


class ControlPlaneClient:
    """Calls `/api/v1` with a bearer token; use as an async context manager.

    `tls` checks an https:// control plane's certificate (`tls_from`; None: the system's CAs).
    """

    def __init__(
        self, url: str, token: str, timeout_s: float = 60.0, tls: ssl.SSLContext | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_s)
        self._tls = tls
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ControlPlaneClient:
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            timeout=self._timeout,
            connector=aiohttp.TCPConnector(ssl=self._tls if self._tls is not None else True),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET a JSON document."""
        return await self.call("GET", path, params=params)

    async def post(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """POST a JSON body, return the JSON answer."""
        return await self.call("POST", path, json=body or {})

    async def patch(self, path: str, body: Mapping[str, Any]) -> Any:
        """PATCH a JSON body, return the JSON answer."""
        return await self.call("PATCH", path, json=body)

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request under `/api/v1`; JSON in, JSON out, errors explained."""
        if self._session is None:
            raise RuntimeError("use ControlPlaneClient as `async with`")
        url = f"{self.url}/api/v1{path}"
        try:
            async with self._session.request(method, url, **kwargs) as response:
                if response.status >= 400:
                    raise await _failure(response, self.url)
                if response.status == 204:
                    return None
                return await response.json()
        except aiohttp.ClientConnectorCertificateError as error:
            reason = getattr(error.certificate_error, "verify_message", "") or error
            raise ApiCallFailed(
                f"the control plane at {self.url} presented a certificate that is not trusted "
                f"({reason}): when a private CA issued it, pass that CA's certificate with "
                f"--ca-file FILE or {CA_FILE_ENV}"
            ) from None
        except aiohttp.ClientConnectionError as error:
            raise ApiCallFailed(
                f"cannot reach the control plane at {self.url}: {error}; check --cp or {CP_ENV} "
                "and that `edgefleet cp serve` is running"
            ) from None
        except TimeoutError:
            raise ApiCallFailed(f"the control plane at {self.url} did not answer in time") from None

    async def upload(self, path: Path, progress: Callable[[int, int], None] | None = None) -> Any:
        """Stream a bundle file to `POST /models`, reporting (sent, total) bytes as it goes."""
        total = (await asyncio.to_thread(path.stat)).st_size

        async def chunks() -> AsyncIterator[bytes]:
            sent = 0
            with path.open("rb") as source:
                while chunk := await asyncio.to_thread(source.read, UPLOAD_CHUNK):
                    sent += len(chunk)
                    yield chunk
                    if progress is not None:
                        progress(sent, total)

        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(total)}
        return await self.call("POST", "/models", data=chunks(), headers=headers)


async def _failure(response: aiohttp.ClientResponse, base: str) -> ApiCallFailed:
    try:
        message = str((await response.json())["error"])
    except (aiohttp.ContentTypeError, ValueError, KeyError, TypeError):
        message = (await response.text())[:200] or response.reason or "no details"
    status = response.status
    if status == 401:
        message += f" (check --token or {TOKEN_ENV})"
    elif status == 403:
        message += " (ask an admin for a token with a higher role)"
    return ApiCallFailed(f"{base} answered {status}: {message}", status)


def environment() -> Mapping[str, str]:
    """The process environment (a seam for tests)."""
    return os.environ
