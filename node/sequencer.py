"""The log writer: batches appends per set and signs checkpoints shortly after every write.

Order of durable steps for one batch (see node.storage's contract):

1. ``Store.append`` commits records + tiles + (size, root) in one transaction. Requests are
   acknowledged only after this commit, so an acknowledged record survives ``kill -9``.
   A crash before the commit leaves nothing of the batch; the callers got no acknowledgement.
2. ``Store.store_checkpoint`` signs (size, root) and stores the note. A crash between 1 and 2 leaves
   a tree that is larger than its last checkpoint; the next start signs it (``sign_all``), so no
   record stays uncovered by a checkpoint for longer than a restart takes.

Concurrent requests for one set are merged into one transaction (fewer fsyncs under load). If a
merged batch conflicts (e.g. one request revokes an already-revoked entry), each request is retried
alone so that one bad request cannot fail the others.

``stop()`` never cuts a transaction in half: commits and checkpoints are :mod:`node.shielded`
calls, which ``stop()`` waits for after cancelling the workers and the ticker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from node.errors import Conflict
from node.shielded import ShieldedCalls
from node.storage import AppendResult, PreparedRecord, Store
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.note import Signer

log = logging.getLogger("hashfed.sequencer")

#: most records merged into one append transaction
MAX_BATCH = 20_000


@dataclass
class _Pending:
    items: Sequence[PreparedRecord]
    done: asyncio.Future[list[AppendResult]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Sequencer:
    """Serializes and batches appends, and keeps checkpoints within ~1 s of the tree.

    A checkpoint is signed as soon as the tree grows, then the ticker rests for
    ``checkpoint_interval`` (0.25 s): under a stream of writes that is at most four checkpoints
    per second (each is a transaction, a stored note and a push to every subscriber), and a
    write waits at most that long for its checkpoint. With 1 s, back-to-back revocations waited
    up to a second at every hop of a re-share chain (bench_propagation: two-hop p95 up to 2.25 s).
    """

    def __init__(
        self,
        store: Store,
        signer_for: Callable[[str], Signer],
        *,
        checkpoint_interval: float = 0.25,
        on_checkpoint: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self._store = store
        self._signer_for = signer_for
        self._interval = checkpoint_interval
        #: called with (set name, note) after every checkpoint is stored (metrics, push events)
        self.on_checkpoint = on_checkpoint
        self._queues: dict[str, asyncio.Queue[_Pending]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None
        #: commits and checkpoints under way; stop() lets them end instead of cancelling them
        self._calls = ShieldedCalls()

    # -- appends --------------------------------------------------------------------------------

    async def append(self, set_name: str, items: Sequence[PreparedRecord]) -> list[AppendResult]:
        """Append, batched with concurrent callers; returns once the records are durable."""
        pending = _Pending(items)
        queue = self._queues.get(set_name)
        if queue is None:
            queue = self._queues[set_name] = asyncio.Queue()
            self._workers[set_name] = asyncio.create_task(self._worker(set_name, queue))
        await queue.put(pending)
        return await pending.done

    async def _worker(self, set_name: str, queue: asyncio.Queue[_Pending]) -> None:
        while True:
            batch = [await queue.get()]
            count = len(batch[0].items)
            while count < MAX_BATCH and not queue.empty():
                nxt = queue.get_nowait()
                batch.append(nxt)
                count += len(nxt.items)
            await self._calls.run(self._commit(set_name, batch))

    async def _commit(self, set_name: str, batch: list[_Pending]) -> None:
        merged = [it for p in batch for it in p.items]
        try:
            results = await self._store.append(set_name, merged)
        except Conflict as e:
            if len(batch) == 1:
                _fail(batch[0], e)
                return
            for p in batch:  # one bad request must not fail the others
                await self._commit(set_name, [p])
            return
        except Exception as e:  # every waiter must hear about it; the worker lives on
            for p in batch:
                _fail(p, e)
            return
        offset = 0
        for p in batch:
            if not p.done.done():
                p.done.set_result(results[offset : offset + len(p.items)])
            offset += len(p.items)
        self._dirty.add(set_name)
        self._wake.set()

    # -- checkpoints ----------------------------------------------------------------------------

    def _sign(self, origin: str, size: int, root: bytes) -> bytes:
        return sign_checkpoint(Checkpoint(origin, size, root), self._signer_for(origin))

    async def checkpoint(self, set_name: str) -> bytes | None:
        """Sign a checkpoint for the set now if its tree grew."""
        note = await self._store.store_checkpoint(set_name, self._sign)
        if note is not None and self.on_checkpoint is not None:
            self.on_checkpoint(set_name, note)
        return note

    async def sign_all(self) -> None:
        """Cover every set's tree with a checkpoint (at start-up, after a crash between steps)."""
        for info in await self._store.list_sets():
            await self.checkpoint(info.name)

    async def _tick(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for name in sorted(self._dirty):
                # Leave the name in _dirty until its checkpoint is stored: if stop() cancels us
                # mid-signature, stop() still signs it.
                try:
                    await self._calls.run(self.checkpoint(name))
                except Exception:
                    log.exception("signing a checkpoint for %s failed; will retry", name)
                    self._wake.set()
                else:
                    self._dirty.discard(name)
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        """Stop the workers and sign a final checkpoint for anything written."""
        tasks = [*self._workers.values(), *([self._ticker] if self._ticker else [])]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        # What they had under way ends by itself: a commit tells its own callers how it went,
        # and a checkpoint that failed is signed again just below (its set is still dirty).
        await self._calls.drain()
        self._workers.clear()
        self._queues.clear()
        self._ticker = None
        for name in sorted(self._dirty):
            await self.checkpoint(name)
        self._dirty.clear()


def _fail(p: _Pending, e: BaseException) -> None:
    if not p.done.done():
        p.done.set_exception(e)
