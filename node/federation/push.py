"""Push: a server-sent-events stream of new checkpoints, and the subscriber loop that follows it.

Server side, ``GET /v1/sets/{set}/events`` (``text/event-stream``) sends, on connect and whenever
the sequencer signs a checkpoint for the set::

    event: checkpoint
    data: {"size": N}

and a comment line (``: keepalive``) every :data:`KEEPALIVE` seconds of silence, so that proxies
keep the connection and the subscriber notices a dead one. Reading the stream follows the same
rules as reading the set (the server's :class:`~node.server.auth.Authenticator`). Events carry only
a size: a subscriber always fetches and verifies the signed checkpoint itself, so a forged event
costs one checkpoint fetch and nothing else.

Client side, :func:`run_subscriptions` keeps, per mirror, one event stream open and syncs on every
event, polls every ``poll_interval`` seconds as a fallback (a stream can be down or blocked by a
proxy), and backs off exponentially (capped, jittered) after failures. It is bounded: one follower
and one stream per mirror, at most :data:`MAX_CONCURRENT_SYNCS` syncs at a time, and bursts of
events while a sync runs collapse into one more sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Final

import orjson
from aiohttp import web

from node.errors import NodeError, Unavailable
from node.federation.fetch import PeerClient, PeerError
from node.federation.sync import Backoff, sync_once
from node.server.routes import STATE
from node.service import NodeService
from node.storage import SetInfo
from protocol.checkpoint import parse_checkpoint
from protocol.errors import ProtocolError
from protocol.note import split_note

log = logging.getLogger("hashfed.push")

__all__ = [
    "KEEPALIVE",
    "MAX_CONCURRENT_SYNCS",
    "MAX_STREAMS",
    "POLL_INTERVAL",
    "PushHub",
    "add_push_routes",
    "run_subscriptions",
]

#: seconds of silence after which the server sends a keepalive comment
KEEPALIVE: Final = 15.0
#: open event streams one node serves at most (503 beyond)
MAX_STREAMS: Final = 1000
#: seconds between fallback polls of each subscription
POLL_INTERVAL: Final = 30.0
#: syncs running at once across all subscriptions
MAX_CONCURRENT_SYNCS: Final = 4


def _event(size: int) -> bytes:
    return b"event: checkpoint\ndata: " + orjson.dumps({"size": size}) + b"\n\n"


class _Listener:
    """One open stream: the newest size signed since it last looked, and a wake-up."""

    __slots__ = ("set_name", "size", "wake")

    def __init__(self, set_name: str) -> None:
        self.set_name = set_name
        self.size: int | None = None
        self.wake = asyncio.Event()


class PushHub:
    """Fans checkpoint sizes out to the open event streams of one application.

    Each stream keeps only the newest size (a slow reader skips sizes, never queues them), so the
    memory per stream is constant.
    """

    def __init__(self, max_streams: int = MAX_STREAMS) -> None:
        self.max_streams = max_streams
        self._listeners: set[_Listener] = set()
        self.closed = False

    @contextlib.contextmanager
    def listen(self, set_name: str) -> Iterator[_Listener]:
        if len(self._listeners) >= self.max_streams:
            raise Unavailable(f"this node serves at most {self.max_streams} event streams")
        listener = _Listener(set_name)
        self._listeners.add(listener)
        try:
            yield listener
        finally:
            self._listeners.discard(listener)

    def checkpoint_signed(self, set_name: str, note: bytes) -> None:
        """The sequencer's hook: tell every stream of ``set_name`` the new size."""
        try:
            size = parse_checkpoint(split_note(note)[0]).size
        except ProtocolError:  # our own sequencer's note; cannot happen, must not break signing
            log.exception("cannot read the size of a checkpoint just signed for %s", set_name)
            return
        for listener in self._listeners:
            if listener.set_name == set_name:
                listener.size = size
                listener.wake.set()

    async def close(self, _app: web.Application | None = None) -> None:
        """End every stream (on shutdown, so that open streams do not hold it up)."""
        self.closed = True
        for listener in self._listeners:
            listener.wake.set()


HUB = web.AppKey("hashfed_push_hub", PushHub)


async def set_events(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    hub = request.app[HUB]
    info = await state.service.store.get_set(request.match_info["set"])
    state.auth.require_read(request, info)
    with hub.listen(info.name) as listener:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                # nginx and friends would otherwise buffer the stream
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        last = info.checkpoint_size
        try:
            await response.write(_event(last))
            while not hub.closed:
                try:
                    await asyncio.wait_for(listener.wake.wait(), KEEPALIVE)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                listener.wake.clear()
                size = listener.size
                if size is not None and size > last:
                    last = size
                    await response.write(_event(size))
        except (ConnectionResetError, ConnectionError):
            pass  # the subscriber went away
        return response


def add_push_routes(app: web.Application) -> None:
    """Serve ``GET /v1/sets/{set}/events`` and hook the sequencer (chained with any hook set
    before: call this after the metrics hook is in place)."""
    hub = PushHub()
    app[HUB] = hub
    sequencer = app[STATE].service.sequencer
    previous = sequencer.on_checkpoint

    def on_checkpoint(set_name: str, note: bytes) -> None:
        if previous is not None:
            previous(set_name, note)
        hub.checkpoint_signed(set_name, note)

    sequencer.on_checkpoint = on_checkpoint
    app.on_shutdown.append(hub.close)
    app.router.add_get("/v1/sets/{set}/events", set_events)


# -- the subscriber ------------------------------------------------------------------------------


async def _wait_any(events: list[asyncio.Event], timeout: float | None) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def _listen(service: NodeService, info: SetInfo, wake: asyncio.Event) -> None:
    """Keep the partner's event stream open; set ``wake`` on every event. Runs until cancelled."""
    backoff = Backoff(base=1.0, cap=60.0)
    url, remote_set = info.remote_url or "", info.remote_set or ""
    # Signed like the sync's own requests: not for clear sets (see sync_once).
    signer = None if info.tlp == "clear" else service.signer
    async with PeerClient(url, signer) as client:
        while True:
            try:
                async for _size in client.events(remote_set):
                    backoff.reset()
                    wake.set()
            except PeerError as e:
                log.debug("event stream of %s/%s: %s", url, remote_set, e)
            except NodeError as e:  # e.g. cannot sign: the timer still polls
                log.warning("event stream of %s/%s: %s", url, remote_set, e)
            await asyncio.sleep(backoff.next_delay())


async def _follow(
    service: NodeService,
    name: str,
    stop: asyncio.Event,
    slots: asyncio.Semaphore,
    poll_interval: float,
) -> None:
    """Keep one mirror in sync until ``stop``: on events, on a timer, with backoff on errors."""
    info = await service.store.get_set(name, kind="mirror")
    wake = asyncio.Event()
    listener = asyncio.create_task(_listen(service, info, wake))
    backoff = Backoff()
    try:
        while not stop.is_set():
            # Cleared before the sync: an event that arrives during it causes one more sync.
            wake.clear()
            try:
                async with slots:
                    await sync_once(service, name)
            except (NodeError, ProtocolError) as e:
                delay = backoff.next_delay()
                transient = isinstance(e, PeerError) and e.transient
                log.warning(
                    "sync of %s failed (%s); retrying in %.0f s: %s",
                    name, "transient" if transient else "refused", delay, e,
                )
                await _wait_any([stop], delay)  # events do not cut a backoff short
                continue
            backoff.reset()
            await _wait_any([stop, wake], poll_interval)
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


async def run_subscriptions(
    service: NodeService,
    stop: asyncio.Event,
    *,
    poll_interval: float = POLL_INTERVAL,
) -> None:
    """Follow every mirror until ``stop`` is set; new subscriptions are picked up on each poll."""
    slots = asyncio.Semaphore(MAX_CONCURRENT_SYNCS)
    followers: dict[str, asyncio.Task[None]] = {}
    try:
        while not stop.is_set():
            try:
                mirrors = await service.store.list_sets(kind="mirror")
            except NodeError as e:
                log.warning("cannot list subscriptions: %s", e)
                mirrors = []
            for info in mirrors:
                task = followers.get(info.name)
                if task is not None and task.done() and not task.cancelled():
                    exc = task.exception()
                    if exc is not None:
                        log.error("follower of %s stopped: %r", info.name, exc)
                if task is None or task.done():
                    followers[info.name] = asyncio.create_task(
                        _follow(service, info.name, stop, slots, poll_interval)
                    )
            await _wait_any([stop], poll_interval)
    finally:
        for task in followers.values():
            task.cancel()
        await asyncio.gather(*followers.values(), return_exceptions=True)
