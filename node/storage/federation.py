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

from dataclasses import dataclass

from sqlalchemy import delete, func, select

from node.storage.schema import seen_nonces, set_grants, sets, trust
from node.storage.sql import SqlStore
from protocol.records import timestamp

__all__ = ["TRUST_KINDS", "FederationStore", "TrustAnchor"]

TRUST_KINDS = ("coordinator", "partner")


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

    # -- trust ----------------------------------------------------------------------------------

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

    async def remove_trust(self, org: str, kind: str) -> bool:
        async with self.store._write_tx() as conn:
            result = await conn.execute(
                delete(trust).where(trust.c.org == org, trust.c.kind == kind)
            )
        return bool(result.rowcount)

    async def list_trust(self, kind: str | None = None) -> list[TrustAnchor]:
        query = select(trust).order_by(trust.c.kind, trust.c.org)
        if kind is not None:
            query = query.where(trust.c.kind == kind)
        async with self.store._read.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            TrustAnchor(str(r.org), str(r.kind), str(r.url), str(r.vkey), str(r.created))
            for r in rows
        ]

    # -- grants ---------------------------------------------------------------------------------

    async def _local_set_id(self, set_name: str) -> int:
        return (await self.store.get_set(set_name, kind="local")).id

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
        async with self.store._read.connect() as conn:
            rows = await conn.execute(
                select(set_grants.c.set_id)
                .join(sets, sets.c.id == set_grants.c.set_id)
                .where(set_grants.c.org == org, sets.c.kind == "local")
            )
            return frozenset(int(i) for (i,) in rows)

    # -- nonces ---------------------------------------------------------------------------------

    async def remember_nonce(self, keyid: str, nonce: str, expires: int) -> bool:
        """Record a signature's nonce; False when (keyid, nonce) was seen before (a replay).

        ON CONFLICT DO NOTHING (SQLite >= 3.24, PostgreSQL >= 9.5) rather than catching an
        IntegrityError: on PostgreSQL a failed INSERT would poison the transaction.
        """
        async with self.store._write_tx() as conn:
            result = await conn.exec_driver_sql(
                "INSERT INTO seen_nonces (keyid, nonce, expires)"
                f" VALUES ({self.store._params(3)}) ON CONFLICT (keyid, nonce) DO NOTHING",
                (keyid, nonce, expires),
            )
        return result.rowcount == 1

    async def prune_nonces(self, now: int) -> int:
        """Delete nonces whose signatures can no longer be accepted anyway; how many."""
        async with self.store._write_tx() as conn:
            result = await conn.execute(delete(seen_nonces).where(seen_nonces.c.expires < now))
        return int(result.rowcount or 0)

    async def count_nonces(self) -> int:
        async with self.store._read.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(seen_nonces)))
                       .scalar_one())
