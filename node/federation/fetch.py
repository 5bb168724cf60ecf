"""Fetching from a partner node: signed GETs with timeouts and byte limits, and one error family.

Everything the sync client reads from a partner goes through :class:`PeerClient`, so every fetch
has the same protections (design.md "Sync": "every fetch has a timeout and a byte limit"):

* **Timeouts**: connect 5 s and total 30 s per request by default (the SSE stream, which is meant
  to stay open, has no total but a 45 s read timeout: three missed keepalives);
* **Byte limits** per kind of response, enforced *while streaming*: a ``Content-Length`` above the
  limit is refused before the body is read, and a body that grows past the limit (an endless
  stream) is cut at limit + 1 bytes and refused;
* **Signatures**: with a signer, every request is signed with the node key (RFC 9421,
  :mod:`node.federation.httpsig`); without one it goes unsigned, which only ``clear`` sets accept
  (and which a partner that does not know our key needs: it refuses signatures it cannot check).

Errors (hierarchy)::

    PeerError (node.errors.NodeError, 502 "peer_error")   the partner could not give us an answer
     │    .transient: True when trying again later may help (timeouts, refused connections, 5xx)
     └── PeerResponseTooLarge                              a body over its limit (not transient)

Answers that arrive but do not check out (bad signature, bad tile, bad record) are not raised
here: the caller verifies and raises :class:`protocol.errors.VerificationError` /
:class:`~protocol.errors.FormatError`. Keeping the two apart is what lets the sync loop back off on
transport failures and keep evidence only for verification failures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from node.errors import NodeError, SetupError
from node.federation import httpsig
from protocol.note import Signer
from protocol.records import MAX_RECORD_SIZE
from protocol.tiles import TileRef

__all__ = [
    "BUNDLE_LIMIT_PER_ENTRY",
    "CHECKPOINT_LIMIT",
    "DEFAULT_TIMEOUT",
    "JSON_LIMIT",
    "STREAM_TIMEOUT",
    "PeerClient",
    "PeerError",
    "PeerResponseTooLarge",
    "bundle_limit",
]

#: a signed checkpoint note: a few lines plus up to 100 signature lines
CHECKPOINT_LIMIT: Final = 64 * 1024
#: JSON documents (node info, set objects)
JSON_LIMIT: Final = 1024 * 1024
#: an entry bundle entry: the uint16 length prefix plus a record at the 16 KiB limit
BUNDLE_LIMIT_PER_ENTRY: Final = 2 + MAX_RECORD_SIZE
#: one SSE line (``data: {"size": N}`` is tens of bytes; anything long is not ours)
SSE_LINE_LIMIT: Final = 4096

DEFAULT_TIMEOUT: Final = aiohttp.ClientTimeout(total=30, connect=5, sock_connect=5)
STREAM_TIMEOUT: Final = aiohttp.ClientTimeout(total=None, connect=5, sock_connect=5, sock_read=45)

_CHUNK = 64 * 1024


def bundle_limit(ref: TileRef) -> int:
    """Most bytes entry bundle ``ref`` can have: ``width`` records at the size limit, framed."""
    return ref.width * BUNDLE_LIMIT_PER_ENTRY


class PeerError(NodeError):
    """A partner did not give a usable answer (transport failure, error status, over a limit)."""

    status = 502
    code = "peer_error"

    def __init__(self, message: str, *, transient: bool, http_status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.http_status = http_status


class PeerResponseTooLarge(PeerError):
    """A response body over its limit: cut off and refused (an endless body ends here too)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False)


def _q(segment: str) -> str:
    return quote(segment, safe="")


class PeerClient:
    """GETs against one partner node's HTTP API (``async with PeerClient(url, signer) as p``).

    ``signer`` is this node's key (``NodeService.signer``); ``None`` sends unsigned requests.
    """

    def __init__(
        self,
        base_url: str,
        signer: Signer | None,
        *,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        stream_timeout: aiohttp.ClientTimeout = STREAM_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._signer = signer
        self._timeout = timeout
        self._stream_timeout = stream_timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        # No cookies: a partner must not be able to make our requests stateful.
        self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
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

    # -- raw requests ---------------------------------------------------------------------------

    def _headers(self, url: str) -> dict[str, str]:
        headers: dict[str, str] = {"Accept-Encoding": "identity"}
        if self._signer is not None:
            try:
                httpsig.sign_request("GET", url, headers, None, self._signer)
            except ValueError as e:  # our key or URL, not the partner: a setup problem
                raise SetupError(f"cannot sign the request to {url}: {e}") from e
        return headers

    def _session_or_raise(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use PeerClient as an async context manager")
        return self._session

    async def get(self, path: str, limit: int) -> bytes:
        """The body of ``GET base_url + path`` (a 2xx answer of at most ``limit`` bytes)."""
        url = self.base_url + path
        session = self._session_or_raise()
        try:
            # encoded=True: the URL we signed is byte for byte the URL that is sent.
            async with session.get(
                URL(url, encoded=True),
                headers=self._headers(url),
                timeout=self._timeout,
                allow_redirects=False,
                auto_decompress=False,
            ) as resp:
                if resp.status != 200:
                    raise _status_error(resp.status, url, await _read_limited(resp, 2048, url))
                return await _read_limited(resp, limit, url)
        except PeerError:
            raise
        except TimeoutError as e:
            raise PeerError(f"{url}: no complete answer in time ({e!r})", transient=True) from e
        except aiohttp.ClientError as e:
            raise PeerError(f"{url}: {type(e).__name__}: {e}", transient=True) from e

    async def get_json(self, path: str, limit: int = JSON_LIMIT) -> Any:
        body = await self.get(path, limit)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise PeerError(
                f"{self.base_url + path}: the answer is not JSON", transient=False
            ) from e

    # -- the partner's API ------------------------------------------------------------------------

    async def node_info(self) -> Mapping[str, Any]:
        info = await self.get_json("/v1/node")
        if not isinstance(info, dict):
            raise PeerError(f"{self.base_url}/v1/node is not a JSON object", transient=False)
        return info

    async def set_info(self, set_name: str) -> Mapping[str, Any]:
        info = await self.get_json(f"/v1/sets/{_q(set_name)}")
        if not isinstance(info, dict):
            raise PeerError(f"set {set_name} of {self.base_url} is not a JSON object",
                            transient=False)
        return info

    async def checkpoint(self, set_name: str) -> bytes:
        return await self.get(f"/v1/sets/{_q(set_name)}/checkpoint", CHECKPOINT_LIMIT)

    async def tile(self, set_name: str, ref: TileRef) -> bytes:
        """A hash tile; its exact length is checked by the verifier, the limit here."""
        return await self.get(f"/v1/sets/{_q(set_name)}/{ref.path()}", ref.byte_length)

    async def bundle(self, set_name: str, ref: TileRef) -> bytes:
        return await self.get(f"/v1/sets/{_q(set_name)}/{ref.path()}", bundle_limit(ref))

    async def events(self, set_name: str) -> AsyncIterator[int]:
        """Follow the partner's push stream: yields the size of each ``checkpoint`` event.

        Ends when the partner closes the stream; PeerError on transport failure, an error
        status, or a line over :data:`SSE_LINE_LIMIT`. Comments (keepalives) are skipped.
        """
        url = f"{self.base_url}/v1/sets/{_q(set_name)}/events"
        session = self._session_or_raise()
        headers = self._headers(url)
        headers["Accept"] = "text/event-stream"
        try:
            async with session.get(
                URL(url, encoded=True),
                headers=headers,
                timeout=self._stream_timeout,
                allow_redirects=False,
                auto_decompress=False,
            ) as resp:
                if resp.status != 200:
                    raise _status_error(resp.status, url, await _read_limited(resp, 2048, url))
                event, data = "message", ""
                buf = b""
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    if len(buf) > SSE_LINE_LIMIT:
                        raise PeerResponseTooLarge(f"{url}: an event line over the limit")
                    for raw in lines:
                        line = raw.rstrip(b"\r").decode("utf-8", "replace")
                        if line == "":
                            size = _event_size(event, data)
                            if size is not None:
                                yield size
                            event, data = "message", ""
                        elif line.startswith(":"):
                            continue
                        else:
                            name, _, value = line.partition(":")
                            value = value.removeprefix(" ")
                            if name == "event":
                                event = value
                            elif name == "data":
                                data = value if not data else data + "\n" + value
                            if len(data) > SSE_LINE_LIMIT:
                                raise PeerResponseTooLarge(f"{url}: an event over the limit")
        except PeerError:
            raise
        except TimeoutError as e:
            raise PeerError(f"{url}: the event stream went silent", transient=True) from e
        except aiohttp.ClientError as e:
            raise PeerError(f"{url}: {type(e).__name__}: {e}", transient=True) from e


def _event_size(event: str, data: str) -> int | None:
    if event != "checkpoint" or not data:
        return None
    try:
        size = orjson.loads(data)["size"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None


async def _read_limited(resp: aiohttp.ClientResponse, limit: int, url: str) -> bytes:
    """The body, refusing more than ``limit`` bytes (checked on the header and while reading)."""
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise PeerResponseTooLarge(
            f"{url}: the answer announces {declared} bytes; the limit is {limit}"
        )
    parts: list[bytes] = []
    got = 0
    async for chunk in resp.content.iter_chunked(_CHUNK):
        got += len(chunk)
        if got > limit:
            # Stop reading here: an endless body costs us limit + one chunk, not more.
            resp.close()
            raise PeerResponseTooLarge(f"{url}: the answer exceeds the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def _status_error(status: int, url: str, body: bytes) -> PeerError:
    message = ""
    try:
        err = orjson.loads(body)["error"]
        message = f": {err['code']}: {err['message']}"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        text = body[:200].decode("utf-8", "replace").strip()
        message = f": {text}" if text else ""
    # 5xx and 429 may pass; 404 may be a partner that has not caught up yet (a race between its
    # checkpoint and a partial tile is impossible by the tile rules, so it is not expected).
    transient = status >= 500 or status in (408, 429)
    return PeerError(f"{url}: HTTP {status}{message}", transient=transient, http_status=status)
