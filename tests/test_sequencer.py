"""The sequencer's stop, on a real store: what is under way when it is called ends by itself.

Each test holds one store call open (a gate in front of the real call) while ``stop()`` runs, so
the moment of the stop is exact rather than a race. Before, ``stop()`` cancelled the worker or the
ticker in the middle of that call; on SQLite a connection cancelled mid-transaction could keep the
write lock, and the final checkpoint then waited out the busy timeout (30 s) and failed with
"database is locked" — about one quick stop in thirty after a write, over a real server.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from test_service import open_service

from node.bulkinput import entry_input
from node.service import NodeService

WAIT = 10.0


@pytest.fixture
async def service(tmp_path: Path, database_url: str) -> AsyncIterator[NodeService]:
    svc = await open_service(tmp_path / "node", database_url)
    try:
        await svc.create_set("s", "clear")
        yield svc
    finally:
        await svc.close()


class Gate:
    """Wraps an async store method: the call waits at the gate, then runs the real method.

    ``outcomes`` says how each call ended: "done", or "cancelled" if it was cut short.
    """

    def __init__(self, real: Callable[..., Awaitable[Any]]) -> None:
        self.real = real
        self.entered = asyncio.Event()
        self.open = asyncio.Event()
        self.outcomes: list[str] = []

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        try:
            await self.open.wait()
            result = await self.real(*args, **kwargs)
        except asyncio.CancelledError:
            self.outcomes.append("cancelled")
            raise
        self.outcomes.append("done")
        return result


def items(n: int) -> list[Any]:
    return [entry_input({"hash_type": "sha256", "hash_value": os.urandom(32).hex()})
            for _ in range(n)]  # fmt: skip


async def stop_while_held(service: NodeService, gate: Gate) -> None:
    """Stop the sequencer while ``gate`` holds a call; it must wait for the call to end."""
    await asyncio.wait_for(gate.entered.wait(), WAIT)
    stopping = asyncio.create_task(service.sequencer.stop())
    await asyncio.sleep(0.1)
    assert not stopping.done(), "stop() returned while a store call was still under way"
    gate.open.set()
    await asyncio.wait_for(stopping, WAIT)


async def test_stop_lets_a_checkpoint_under_way_end(
    service: NodeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(service.store.store_checkpoint)
    monkeypatch.setattr(service.store, "store_checkpoint", gate)
    service.sequencer.start()
    await service.publish("s", items(3))  # the ticker starts signing, and waits at the gate
    await stop_while_held(service, gate)
    assert gate.outcomes[0] == "done"
    info = await service.store.get_set("s")
    assert (info.size, info.checkpoint_size) == (3, 3)


async def test_stop_lets_a_commit_under_way_end_and_answers_its_caller(
    service: NodeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(service.store.append)
    monkeypatch.setattr(service.store, "append", gate)
    publishing = asyncio.create_task(service.publish("s", items(5)))
    await stop_while_held(service, gate)
    results = await asyncio.wait_for(publishing, WAIT)
    assert [r.status for r in results] == ["appended"] * 5
    assert gate.outcomes == ["done"]
    info = await service.store.get_set("s")
    assert (info.size, info.checkpoint_size) == (5, 5)  # stop() signed what was written
