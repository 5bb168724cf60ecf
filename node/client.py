"""The operator's HTTP client for a running node: create sets, publish and revoke over the API.

Errors come back as the node's own classes: the JSON error body's ``code`` picks the
:mod:`node.errors` class (``verification_failed`` becomes :class:`protocol.errors.
VerificationError`), with its message, field and details. Transport failures are
:class:`node.errors.Unavailable`. A request that could not connect is tried once more; one that
reached the server is never repeated, so a publish is never sent twice by this client.
"""

from __future__ import annotations

import asyncio
import io
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from node.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NodeError,
    NotFound,
    SetupError,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from node.service import MAX_PUBLISH_BATCH
from node.storage import AppendResult
from protocol.errors import VerificationError

#: a publish request is split so that each body stays well below the server's 16 MiB limit
MAX_CHUNK_BYTES = 8 * 1024 * 1024

DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=300, connect=10, sock_read=120)
_RETRY_DELAY = 0.5

_BY_CODE: dict[str, type[NodeError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        TooLarge,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        SetupError,
        Unavailable,
    )
}


def error_from_response(status: int, body: bytes) -> Exception:
    """The exception a node's error response stands for."""
    try:
        err = orjson.loads(body)["error"]
        code, message = str(err["code"]), str(err["message"])
        field, details = err.get("field"), err.get("details")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        text = body[:200].decode("utf-8", "replace").strip()
        exc = NodeError(f"HTTP {status} without a hashfed error body: {text}")
        exc.status = status
        return exc
    if code == "verification_failed":
        return VerificationError(message)
    cls = _BY_CODE.get(code)
    if cls is None:
        exc = NodeError(message, field=field, details=details)
        exc.status, exc.code = status, code
        return exc
    return cls(message, field=field, details=details)


def _result(obj: dict[str, Any]) -> AppendResult:
    return AppendResult(status=obj["status"], index=int(obj["index"]), record_id=obj["record_id"])


class OperatorClient:
    """``async with OperatorClient(url, token) as client: await client.publish(...)``."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> OperatorClient:
        self._session = aiohttp.ClientSession(
            timeout=DEFAULT_TIMEOUT,
            headers={"Authorization": f"Bearer {self._token}"},
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None
    ) -> bytes:
        """Send one request; the response body on 2xx, else the node's error raised."""
        if self._session is None:
            raise RuntimeError("use OperatorClient as an async context manager")
        data = None if json is None else orjson.dumps(json)
        headers = {"Content-Type": "application/json"} if data is not None else None
        url = self.base_url + path
        for attempt in (1, 2):
            try:
                # BytesIO: aiohttp warns about (and blocks the loop on) large raw-bytes bodies.
                payload = None if data is None else io.BytesIO(data)
                async with self._session.request(
                    method, url, data=payload, headers=headers, params=params
                ) as resp:
                    body = await resp.read()
                    if resp.status >= 400:
                        raise error_from_response(resp.status, body)
                    return body
            except aiohttp.ClientConnectorError as e:
                # Not connected means not sent: safe to try once more, even for a publish.
                if attempt == 2:
                    raise Unavailable(f"cannot connect to the node at {self.base_url}: {e}") from e
                await asyncio.sleep(_RETRY_DELAY)
            except (TimeoutError, aiohttp.ClientError) as e:
                raise Unavailable(f"request to {url} failed: {e!r}") from e
        raise AssertionError("unreachable")

    async def get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        return orjson.loads(await self.request("GET", path, params=params))

    async def post_json(self, path: str, body: Any) -> Any:
        return orjson.loads(await self.request("POST", path, json=body))

    # -- operator operations --------------------------------------------------------------------

    async def create_set(self, name: str, tlp: str, description: str = "") -> dict[str, Any]:
        body = {"name": name, "tlp": tlp, "description": description}
        result: dict[str, Any] = await self.post_json("/v1/sets", body)
        return result

    async def publish(self, set_name: str, entries: list[dict[str, Any]]) -> list[AppendResult]:
        """Publish bulk-input objects; one result per entry, in order.

        Sent in chunks of at most 10,000 entries and ~8 MiB; each chunk is all-or-nothing on the
        node. A bad entry raises BadRequest whose ``details`` items count from the start of
        ``entries``; chunks before it stay published (validate first to avoid that: the CLI does).
        """
        results: list[AppendResult] = []
        path = f"/v1/sets/{_q(set_name)}/records"
        for start, chunk in _chunks(entries):
            try:
                answer = await self.post_json(path, {"publish": chunk})
            except BadRequest as e:
                if start and isinstance(e.details, list):
                    for item in e.details:
                        if isinstance(item, dict) and isinstance(item.get("item"), int):
                            item["item"] += start
                raise
            results.extend(_result(r) for r in answer["published"])
        return results

    async def revoke(
        self,
        set_name: str,
        *,
        entry_id: str | None = None,
        hash_type: str | None = None,
        hash_value: str | None = None,
        reason: str,
        text: str | None = None,
    ) -> AppendResult:
        item: dict[str, Any] = {"reason": reason}
        if entry_id is not None:
            item["entry"] = entry_id
        if hash_type is not None:
            item["hash_type"] = hash_type
        if hash_value is not None:
            item["hash_value"] = hash_value
        if text is not None:
            item["text"] = text
        answer = await self.post_json(f"/v1/sets/{_q(set_name)}/records", {"revoke": [item]})
        return _result(answer["revoked"][0])

    # -- reads (the operator token also opens non-clear sets) -----------------------------------

    async def node_info(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.get_json("/v1/node")
        return result

    async def get_set(self, set_name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.get_json(f"/v1/sets/{_q(set_name)}")
        return result

    async def checkpoint(self, set_name: str) -> bytes:
        return await self.request("GET", f"/v1/sets/{_q(set_name)}/checkpoint")

    async def lookup(
        self, hash_type: str, hash_value: str, set_name: str | None = None
    ) -> list[dict[str, Any]]:
        path = "/v1/lookup" if set_name is None else f"/v1/sets/{_q(set_name)}/lookup"
        answer = await self.get_json(path, {"hash_type": hash_type, "hash_value": hash_value})
        matches: list[dict[str, Any]] = answer["matches"]
        return matches


def _q(set_name: str) -> str:
    return quote(set_name, safe="")


def _chunks(entries: list[dict[str, Any]]) -> list[tuple[int, list[dict[str, Any]]]]:
    out: list[tuple[int, list[dict[str, Any]]]] = []
    start, size = 0, 0
    current: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        n = len(orjson.dumps(entry)) + 1
        if current and (len(current) >= MAX_PUBLISH_BATCH or size + n > MAX_CHUNK_BYTES):
            out.append((start, current))
            start, size, current = i, 0, []
        current.append(entry)
        size += n
    if current:
        out.append((start, current))
    return out


__all__ = ["OperatorClient", "error_from_response"]
