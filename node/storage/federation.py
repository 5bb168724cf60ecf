"""Federation tables over a SqlStore's engines: trust anchors, set grants and seen nonces.

Contract (both backends):

* ``add_trust`` replaces the row for (org, kind) in one transaction: a reader sees the old anchor
  or the new one, never neither.
* ``grant`` / ``revoke_grant`` are idempotent; a grant names a *local* set (NotFound otherwise).
* ``remember_nonce`` returns True exactly once per (keyid, nonce) across every process on the
  database (the primary key decides, not a read-then-write), False for a replay. Rows expire;
  ``prune_nonces`` deletes expired ones and may run at any time, from any process.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import delete, func, select

from node.storage.schema import seen_nonces, set_grants, trust
from node.storage.sql import SqlStore, shielded_write
from protocol.records import timestamp

__all__ = ["TRUST_KINDS", "FederationStore", "TrustAnchor"]

TRUST_KINDS = ("coordinator", "partner")
#: most nonces in one transaction (3 bound parameters each)
_NONCE_BATCH = 500


@dataclass(frozen=True)
class TrustAnchor:
    """A coordinator whose ``members`` log this node follows, or a partner pinned directly."""

    org: str
    kind: str
    url: str
    vkey: str
    created: str


class FederationStore:
    """Trust, grants and nonces, on the engines of an open :class:`SqlStore`."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self._pending: list[tuple[str, str, int, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    # -- trust ----------------------------------------------------------------------------------

    @shielded_write
    async def add_trust(self, org: str, kind: str, url: str, vkey: str) -> TrustAnchor:
        if kind not in TRUST_KINDS:
            raise ValueError(f"unknown trust kind {kind!r}")
        created = timestamp()
        async with self.store._write_tx() as conn:
            await conn.execute(delete(trust).where(trust.c.org == org, trust.c.kind == kind))
            await conn.execute(
                trust.insert().values(org=org, kind=kind, url=url, vkey=vkey, created=created)
            )
        return TrustAnchor(org, kind, url, vkey, created)

    @shielded_write
    async def remove_trust(self, org: str, kind: str) -> bool:
        async with self.store._write_tx() as conn:
            result = await conn.execute(
                delete(trust).where(trust.c.org == org, trust.c.kind == kind)
            )
        return bool(result.rowcount)

    async def list_trust(self, kind: str | None = None) -> list[TrustAnchor]:
        # read on every signed request (the membership view's freshness check): small_read
        where = f" WHERE kind = {self.store._params(1)}" if kind is not None else ""
        rows = await self.store.small_read(
            f"SELECT org, kind, url, vkey, created FROM trust{where} ORDER BY kind, org",
            () if kind is None else (kind,),
        )
        return [TrustAnchor(*(str(v) for v in r)) for r in rows]

    # -- grants ---------------------------------------------------------------------------------

    async def _local_set_id(self, set_name: str) -> int:
        return (await self.store.get_set(set_name, kind="local")).id

    @shielded_write
    async def grant(self, set_name: str, org: str) -> bool:
        """Let ``org`` read ``set_name``; False if it already could."""
        set_id = await self._local_set_id(set_name)
        async with self.store._write_tx() as conn:
            exists = (
                await conn.execute(
                    select(set_grants.c.org).where(
                        set_grants.c.set_id == set_id, set_grants.c.org == org
                    )
                )
            ).first()
            if exists is not None:
                return False
            await conn.execute(set_grants.insert().values(set_id=set_id, org=org))
        return True

    @shielded_write
    async def revoke_grant(self, set_name: str, org: str) -> bool:
        """Withdraw a grant; False if there was none."""
        set_id = await self._local_set_id(set_name)
        async with self.store._write_tx() as conn:
            result = await conn.execute(
                delete(set_grants).where(set_grants.c.set_id == set_id, set_grants.c.org == org)
            )
        return bool(result.rowcount)

    async def grants_of_set(self, set_name: str) -> list[str]:
        set_id = await self._local_set_id(set_name)
        async with self.store._read.connect() as conn:
            rows = await conn.execute(
                select(set_grants.c.org)
                .where(set_grants.c.set_id == set_id)
                .order_by(set_grants.c.org)
            )
            return [str(org) for (org,) in rows]

    async def granted_set_ids(self, org: str) -> frozenset[int]:
        """Ids of the local sets ``org`` holds a grant for (one indexed query per request)."""
        rows = await self.store.small_read(
            "SELECT g.set_id FROM set_grants g JOIN sets s ON s.id = g.set_id"
            f" WHERE g.org = {self.store._params(1)} AND s.kind = 'local'",
            (org,),
        )
        return frozenset(int(i) for (i,) in rows)

    # -- nonces ---------------------------------------------------------------------------------

    async def remember_nonce(self, keyid: str, nonce: str, expires: int) -> bool:
        """Record a signature's nonce; False when (keyid, nonce) was seen before (a replay).

        Returns once the nonce is committed, like a transaction of its own; but the nonces of
        concurrent requests share one (group commit): each signed request used to wait for
        its own write transaction and fsync behind the others' on the single writer, ~68 ms
        per request (median) with eight bundle requests in flight, an AMBER bootstrap
        ~50% slower than a CLEAR one. While one batch commits, the next one gathers.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        self._pending.append((keyid, nonce, expires, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush_nonces())
        return await done

    async def _flush_nonces(self) -> None:
        """Commit the gathered nonces, batch after batch, until none are left.

        One multi-row INSERT ... ON CONFLICT DO NOTHING RETURNING (SQLite >= 3.35, PostgreSQL
        >= 9.5): the rows it returns are exactly the fresh ones, decided by the primary key even
        against other processes on the database (no read-then-write), and a conflict does not
        poison a PostgreSQL transaction as a caught IntegrityError would. A nonce twice in one
        batch is fresh once. A failed transaction fails every request of its batch.
        """
        while self._pending:
            batch, self._pending = self._pending[:_NONCE_BATCH], self._pending[_NONCE_BATCH:]
            rows = list({(k, n): (k, n, e) for k, n, e, _ in reversed(batch)}.values())
            try:
                fresh = await self._insert_nonces(rows)
            except Exception as e:
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(e)
                continue
            except BaseException:  # cancelled (shutdown): nobody is left to answer
                for *_, done in batch + self._pending:
                    done.cancel()
                self._pending = []
                raise
            for keyid, nonce, _, done in batch:
                # the first request with a nonce takes it; a second in the same batch is a replay
                ok = (keyid, nonce) in fresh
                fresh.discard((keyid, nonce))
                if not done.done():
                    done.set_result(ok)

    # Not the flusher itself: remember_nonce starts a new flusher when the last one is done, and a
    # shielded flusher ends a step after its loop (a nonce added in between would wait forever).
    @shielded_write
    async def _insert_nonces(self, rows: list[tuple[str, str, int]]) -> set[tuple[str, str]]:
        """Insert the rows; the (keyid, nonce) pairs that were not stored before."""
        async with self.store._write_tx() as conn:
            result = await conn.exec_driver_sql(
                "INSERT INTO seen_nonces (keyid, nonce, expires) VALUES "
                f"{self.store._value_rows(len(rows), 3)}"
                " ON CONFLICT (keyid, nonce) DO NOTHING RETURNING keyid, nonce",
                tuple(v for row in rows for v in row),
            )
            return {(str(k), str(n)) for k, n in cast(Any, result).all()}

    @shielded_write
    async def prune_nonces(self, now: int) -> int:
        """Delete nonces whose signatures can no longer be accepted anyway; how many."""
        async with self.store._write_tx() as conn:
            result = await conn.execute(delete(seen_nonces).where(seen_nonces.c.expires < now))
        return int(result.rowcount or 0)

    async def count_nonces(self) -> int:
        async with self.store._read.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(seen_nonces)))
                       .scalar_one())
