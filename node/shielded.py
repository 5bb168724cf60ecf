"""Calls that cancelling their caller must not cut in half, and that shutdown waits for.

Tasks are stopped by cancelling them: the sequencer's ticker at shutdown, sync followers, request
handlers past the shutdown timeout, witness collections. If the cancellation lands inside a
database transaction, SQLAlchemy gives up the connection while aiosqlite's thread may still run
its statement; on SQLite that connection could keep the write lock, and the next writer (the
final checkpoint at shutdown) waited out the 30 s busy timeout and failed with "database is
locked" (about one quick stop in thirty after a write, with a real server). So every write
transaction runs as a task of its own, awaited shielded (``node.storage.sql.shielded_write``): the
caller still stops at once, the transaction ends by itself, and the store's ``close`` waits for it
with :meth:`ShieldedCalls.drain`. The sequencer also shields each whole commit and checkpoint, so
that a commit's callers get their answer and a checkpoint's listeners (push, witnesses) hear of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")

log = logging.getLogger("hashfed.shielded")


class ShieldedCalls:
    """The shielded calls of one component, so that its stop can wait for them."""

    def __init__(self) -> None:
        self._busy: set[asyncio.Task[Any]] = set()

    async def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` as a task of its own; cancelling the caller does not cancel it."""
        task = asyncio.create_task(coro)
        self._busy.add(task)
        task.add_done_callback(self._busy.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                task.add_done_callback(_log_orphan_error)  # nobody else will hear of it
            raise

    async def drain(self) -> None:
        """Until every call under way has ended. Their results and errors are their callers';
        the error of a call whose caller was cancelled is logged."""
        while self._busy:
            await asyncio.gather(*self._busy, return_exceptions=True)


def _log_orphan_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("%s failed after its caller was cancelled: %r", task.get_coro(), error)


__all__ = ["ShieldedCalls"]
