"""Test helper: a real node (data dir, migrated database, running HTTP server on 127.0.0.1:0).

    async with running_node(tmp_path / "a", database_url) as node:
        async with node.client() as client:
            await client.create_set("csam", "clear")

``make_node_dir`` creates a node without serving it (for CLI tests); ``serving`` runs
``node.server.serve`` on an existing node directory until the block exits (for restarts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from node.client import OperatorClient
from node.config import (
    SERVE_FILE,
    NodeConfig,
    create_data_dir,
    load_config,
    load_operator_token,
    load_signer,
)
from node.server.app import serve
from node.storage.sql import SqlStore

#: seconds a node gets to start or stop before the helper gives up
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class RunningNode:
    cfg: NodeConfig
    url: str
    token: str

    @property
    def data_dir(self) -> Path:
        return self.cfg.data_dir

    @property
    def vkey(self) -> str:
        """The node key's verifier key (each set's log key is the same key under its origin)."""
        return load_signer(self.cfg).verifier().vkey()

    def client(self) -> OperatorClient:
        return OperatorClient(self.url, self.token)


async def make_node_dir(
    data_dir: Path,
    database_url: str | None = None,
    *,
    origin: str = "node-a.test",
    org: str = "org-a.test",
) -> NodeConfig:
    """``hashfed init`` + ``hashfed db upgrade``: a node directory with a migrated database.

    ``database_url=None`` uses the default SQLite file inside ``data_dir``.
    """
    cfg = create_data_dir(
        data_dir, origin=origin, org=org, database_url=database_url, listen="127.0.0.1:0"
    )
    store = SqlStore.engines(cfg.database_url)
    try:
        await store.migrate()
    finally:
        await store.close()
    return load_config(data_dir)


@contextlib.asynccontextmanager
async def serving(cfg: NodeConfig, listen: str = "127.0.0.1:0") -> AsyncIterator[RunningNode]:
    """Run ``serve`` for an existing node directory until the block exits (then shut it down)."""
    ready = asyncio.Event()
    task = asyncio.create_task(serve(cfg, listen, ready=ready))
    waiter = asyncio.create_task(ready.wait())
    try:
        await asyncio.wait(
            {task, waiter}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        waiter.cancel()
    if task.done():
        task.result()  # raises what made serve() fail
        raise RuntimeError("serve() returned before it was ready")
    if not ready.is_set():
        task.cancel()
        raise TimeoutError(f"the node did not start within {START_TIMEOUT} s")
    try:
        url = json.loads((cfg.data_dir / SERVE_FILE).read_text())["url"]
        yield RunningNode(cfg=cfg, url=url, token=load_operator_token(cfg))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, START_TIMEOUT)


@contextlib.asynccontextmanager
async def running_node(
    data_dir: Path,
    database_url: str | None = None,
    *,
    origin: str = "node-a.test",
    org: str = "org-a.test",
) -> AsyncIterator[RunningNode]:
    """A new node (directory + migrated database) serving on 127.0.0.1 for the block's length."""
    cfg = await make_node_dir(data_dir, database_url, origin=origin, org=org)
    async with serving(cfg) as node:
        yield node


__all__ = ["RunningNode", "make_node_dir", "running_node", "serving"]
