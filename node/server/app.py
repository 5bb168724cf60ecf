"""The node's aiohttp application and the ``serve`` loop: middleware, lifecycle, shutdown.

:func:`build_app` wires a :class:`~node.service.NodeService` into routes with one error middleware
(every 4xx/5xx body comes from :func:`node.errors.error_body`) and one metrics middleware.
:func:`serve` runs a node until SIGINT/SIGTERM or cancellation and shuts it down in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from node.config import (
    NodeConfig,
    load_operator_token,
    parse_listen,
    remove_serve_file,
    write_serve_file,
)
from node.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NodeError,
    NotFound,
    TooLarge,
    Unauthorized,
    Unavailable,
    error_body,
)
from node.federation.members import Federation
from node.federation.push import add_push_routes, run_subscriptions
from node.server.auth import Authenticator
from node.server.cache import ByteLRU
from node.server.metrics import NodeMetrics
from node.server.routes import MAX_BODY, STATE, NodeState, add_routes, json_response
from node.service import NodeService
from node.witness import install_witness
from protocol.errors import ProtocolError

log = logging.getLogger("hashfed.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: seconds open connections get to finish when the server stops
SHUTDOWN_TIMEOUT = 5.0

_BY_STATUS: dict[int, type[NodeError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    503: Unavailable,
}


def _from_http_exception(e: web.HTTPException, request: web.Request) -> NodeError:
    """aiohttp's own errors (no route, wrong method, body too large) as NodeErrors."""
    if e.status == 404:
        return NotFound(f"no such resource: {request.path}")
    if e.status == 405:
        err = NodeError(f"method {request.method} is not allowed on {request.path}")
        err.status, err.code = 405, "method_not_allowed"
        return err
    if e.status == 413:
        return TooLarge(f"the request body is larger than {MAX_BODY} bytes", field="body")
    cls = _BY_STATUS.get(e.status)
    if cls is not None:
        return cls(e.reason)
    err = NodeError(e.reason)
    err.status, err.code = e.status, e.reason.lower().replace(" ", "_") or "error"
    return err


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place where exceptions become HTTP responses."""
    allow: str | None = None
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        allow = e.headers.get("Allow")
        exc: BaseException = _from_http_exception(e, request)
    except (NodeError, ProtocolError) as e:
        exc = e
    except Exception as e:
        log.exception("unhandled error answering %s %s", request.method, request.path)
        exc = e
    status, body = error_body(exc)
    if status >= 500 and isinstance(exc, NodeError):
        log.error("%s %s -> %d: %s", request.method, request.path, status, exc)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="hashfed"'
    if allow is not None:
        headers["Allow"] = allow
    response = json_response(body, status=status)
    response.headers.update(headers)
    return response


def _route_label(request: web.Request) -> str:
    # Route templates, not raw paths: a label per tile path would grow the registry without end.
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _metrics_middleware(metrics: NodeMetrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as e:
            status = e.status
            raise
        finally:
            metrics.observe_request(
                _route_label(request), request.method, status, time.perf_counter() - start
            )

    return middleware


def build_app(service: NodeService, operator_token: str) -> web.Application:
    """The node's HTTP application over an open service (the caller owns the service)."""
    metrics = NodeMetrics()
    # The sequencer has no public hook yet; it calls this after every checkpoint it signs.
    service.sequencer.on_checkpoint = metrics.checkpoint_signed
    federation = Federation(service.store, service.cfg.org)
    auth = Authenticator(operator_token, federation, public_url=service.cfg.public_url)
    app = web.Application(
        # auth inside the error middleware: a refused signature gets the one JSON error shape
        middlewares=[_metrics_middleware(metrics), error_middleware, auth.middleware],
        client_max_size=MAX_BODY,
    )
    app[STATE] = NodeState(service, auth, metrics, ByteLRU())
    add_routes(app)
    add_push_routes(app)  # after the metrics hook: it chains with it
    install_witness(app, service)  # POST /add-checkpoint; cosignatures on our checkpoints
    return app


def _url_for(sockname: tuple[str, int] | tuple[str, int, int, int], family: int) -> str:
    host, port = sockname[0], sockname[1]
    if family == socket.AF_INET6:
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def serve(
    cfg: NodeConfig, listen: str | None = None, *, ready: asyncio.Event | None = None
) -> None:
    """Run the node until SIGINT/SIGTERM or cancellation, then shut down gracefully.

    Order: open the service; sign checkpoints for anything a crash left uncovered; start the
    checkpoint ticker; bind; write DIR/serve.json with the bound URL; set ``ready``. On the way
    out: stop accepting and let open requests finish, close the service (final checkpoint), and
    remove serve.json. A crash after the bind leaves a stale serve.json, which
    ``running_server_url`` ignores because its pid is gone.
    """
    host, port = parse_listen(listen or cfg.listen)
    token = load_operator_token(cfg)
    service = await NodeService.open(cfg)
    runner: web.AppRunner | None = None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled: list[signal.Signals] = []
    stop_subscriptions = asyncio.Event()
    subscriptions: asyncio.Task[None] | None = None
    try:
        await service.sequencer.sign_all()
        service.sequencer.start()
        # Keep every subscription in sync (push events, polling as the fallback).
        subscriptions = asyncio.create_task(run_subscriptions(service, stop_subscriptions))
        app = build_app(service, token)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if not sockets:
            raise RuntimeError(f"the server did not bind {host}:{port}")
        url = _url_for(sockets[0].getsockname(), sockets[0].family)
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Only the main thread may install handlers; elsewhere, cancellation stops us.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
                handled.append(sig)
        write_serve_file(cfg, url)
        log.info("hashfed node %s serving at %s", cfg.origin, url)
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("stopping on signal")
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        if subscriptions is not None:
            stop_subscriptions.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(subscriptions, SHUTDOWN_TIMEOUT)
        try:
            if runner is not None:
                await runner.cleanup()
        finally:
            try:
                # stop() signs what the sequencer still marks dirty, but a ticker cancelled while
                # signing has already dropped its set from that mark; sign_all() covers every
                # set whose tree outgrew its checkpoint, whatever the ticker was doing.
                await service.sequencer.stop()
                await service.sequencer.sign_all()
            finally:
                try:
                    await service.close()
                finally:
                    remove_serve_file(cfg)


__all__ = ["build_app", "error_middleware", "serve"]
