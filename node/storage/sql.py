"""SQLAlchemy (async) implementation of the Store contract, for SQLite and PostgreSQL.

SQLite: one file in WAL mode, ``synchronous=FULL`` (a commit survives power loss, not just a killed
process), and every write transaction opened with ``BEGIN IMMEDIATE`` so that a writer holds the
database lock from its first read: two writers can never both read size N and both append at N.

PostgreSQL: every write transaction first takes ``SELECT ... FOR UPDATE`` on the set's row, which
serializes sequencing of one set across any number of node processes while reads go on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, ParamSpec, TypeVar, cast

from sqlalchemy import URL, Row, and_, bindparam, event, func, make_url, select, tuple_, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import SQLAlchemyError as _SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from node.errors import Conflict, NotFound, SetupError, Unavailable
from node.shielded import ShieldedCalls
from node.storage import (
    ATTESTATION_TYPES,
    ENTRY_TYPES,
    REVOCATION_TYPES,
    AppendResult,
    CheckpointSigner,
    MirrorLeaves,
    PreparedRecord,
    RecordRow,
    SetInfo,
    StoredRecord,
    hash_key,
)
from node.storage import migrate as _migrate
from node.storage.schema import (
    attestation_view,
    checkpoints,
    evidence,
    records,
    reshare_pending,
    reshares,
    sets,
    tiles,
)
from protocol import merkle
from protocol import tiles as tlog
from protocol.errors import VerificationError
from protocol.records import Attestation, Revocation, timestamp
from protocol.scan import AttestationView, RevocationView
from protocol.tiles import TileRef

_log = logging.getLogger(__name__)

#: parameters per IN (...) list: far below SQLite's and asyncpg's limits
_IN_CHUNK = 500



def _bundled_below(size: int, count: int) -> int:
    """Leaves below this index are in full bundles once ``count`` leaves are appended at
    ``size``: an append stores them with data NULL (revision 0006, see _write_out)."""
    return (size + count) // tlog.TILE_WIDTH * tlog.TILE_WIDTH


def _chunks(seq: Sequence[Any], n: int) -> list[Sequence[Any]]:
    return [seq[i : i + n] for i in range(0, len(seq), n)]


_P = ParamSpec("_P")
_T = TypeVar("_T")


def shielded_write(
    fn: Callable[_P, Coroutine[Any, Any, _T]],
) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """Decorates every function that opens a write transaction (``_write_tx``): it runs as a
    shielded call of its store (:mod:`node.shielded`), so a cancelled caller never cuts the
    transaction in half, and :meth:`SqlStore.close` waits for it. The first argument is the
    store, or an object whose ``store`` is (FederationStore, WitnessStore).

    :mod:`node.shielded` says what went wrong without it. tests/test_storage.py checks that
    every function using ``_write_tx`` carries this decorator.
    """

    @functools.wraps(fn)
    async def run(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        owner = args[0]
        store = owner if isinstance(owner, SqlStore) else cast(Any, owner).store
        return await cast(SqlStore, store).writes.run(fn(*args, **kwargs))

    return run


class SqlStore:
    """A Store on SQLite or PostgreSQL. Build with :meth:`open`; schema via :func:`migrate`."""

    def __init__(self, url: URL, read_engine: AsyncEngine, write_engine: AsyncEngine) -> None:
        self.url = url
        self._read = read_engine
        self._write = write_engine
        self.is_sqlite = url.get_backend_name() == "sqlite"
        # SQLite only: raw read-only connections for immutable blob reads (see read_bundle)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._raw_conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._checkpointer = _Checkpointer(url.database or "") if self.is_sqlite else None
        #: write transactions under way (see shielded_write); close() waits for them
        self.writes = ShieldedCalls()

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def engines(cls, database_url: str) -> SqlStore:
        """Engines for the URL without checking the schema (for migrations)."""
        try:
            url = make_url(database_url)
        except _SQLAlchemyError as e:
            raise SetupError(f"invalid database URL: {e}") from e
        backend = url.get_backend_name()
        if backend == "sqlite":
            read = create_async_engine(url, pool_size=4, max_overflow=4)
            write = create_async_engine(url, pool_size=1, max_overflow=0)
            _sqlite_pragmas(read, immediate=False)
            _sqlite_pragmas(write, immediate=True)
            return cls(url, read, write)
        if backend == "postgresql":
            if url.drivername == "postgresql":
                url = url.set(drivername="postgresql+asyncpg")
            engine = create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
            return cls(url, engine, engine)
        raise SetupError(f"unsupported database {backend!r}: use sqlite or postgresql")

    @classmethod
    async def open(cls, database_url: str) -> SqlStore:
        """Open a store whose schema is at the newest revision; SetupError otherwise."""
        store = cls.engines(database_url)
        try:
            current = await _migrate.current_revision(store._write)
        except (OSError, _SQLAlchemyError) as e:
            await store.close()
            raise SetupError(f"cannot open the database: {e}") from e
        if current != _migrate.head_revision():
            await store.close()
            raise SetupError(
                f"database schema is at revision {current or 'none'}, this hashfed needs "
                f"{_migrate.head_revision()}: run 'hashfed db upgrade --data DIR'"
            )
        return store

    async def migrate(self) -> None:
        try:
            await _migrate.upgrade(self._write)
        except (OSError, _SQLAlchemyError) as e:
            raise SetupError(f"cannot migrate the database: {e}") from e

    async def close(self) -> None:
        await self.writes.drain()
        if self._checkpointer is not None:
            await self._checkpointer.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        with self._conns_lock:
            for conn in self._raw_conns:
                conn.close()
            self._raw_conns.clear()
        await self._read.dispose()
        if self._write is not self._read:
            await self._write.dispose()

    async def ping(self) -> None:
        try:
            async with self._read.connect() as conn:
                await conn.execute(select(1))
        except (OSError, _SQLAlchemyError) as e:
            raise Unavailable("database is not answering") from e

    @asynccontextmanager
    async def _write_tx(self) -> AsyncIterator[AsyncConnection]:
        if self._checkpointer is not None:
            await self._checkpointer.wait()
        try:
            async with self._write.begin() as conn:
                yield conn
        except OperationalError as e:
            raise Unavailable(f"database write failed: {e.orig}") from e
        if self._checkpointer is not None:
            self._checkpointer.after_commit()

    # -- sets -----------------------------------------------------------------------------------

    @shielded_write
    async def create_set(self, name: str, origin: str, tlp: str, description: str) -> SetInfo:
        try:
            async with self._write_tx() as conn:
                await conn.execute(
                    sets.insert().values(
                        name=name,
                        origin=origin,
                        tlp=tlp,
                        description=description,
                        created=timestamp(),
                        size=0,
                        root=merkle.EMPTY_ROOT,
                        checkpoint=None,
                        checkpoint_size=0,
                    )
                )
        except IntegrityError as e:
            raise Conflict(f"a set called {name!r} already exists", field="name") from e
        return await self.get_set(name)

    async def get_set(self, name: str, kind: str | None = "local") -> SetInfo:
        query = select(sets).where(sets.c.name == name)
        if kind is not None:
            query = query.where(sets.c.kind == kind)
        async with self._read.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound(f"no set called {name!r}", field="set")
        return _set_info(row)

    async def list_sets(self, kind: str | None = "local") -> list[SetInfo]:
        query = select(sets).order_by(sets.c.name)
        if kind is not None:
            query = query.where(sets.c.kind == kind)
        async with self._read.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_set_info(r) for r in rows]

    async def set_sizes(
        self, names: Sequence[tuple[str, str]]
    ) -> tuple[tuple[str, str, int, int], ...]:
        """(name, kind, id, size) of those of the (name, kind) sets that exist, sorted: one
        cheap query telling whether any of them changed (sets only grow, or are replaced)."""
        if not names:
            return ()
        unique = sorted({n for n, _ in names})
        rows = await self.small_read(
            f"SELECT name, kind, id, size FROM sets WHERE name IN ({self._params(len(unique))})",
            unique,
        )
        wanted = set(names)
        return tuple(sorted(
            (str(n), str(k), int(i), int(z)) for n, k, i, z in rows if (n, k) in wanted
        ))

    async def _lock_set(
        self, conn: AsyncConnection, set_name: str, kind: str = "local"
    ) -> Row[Any]:
        query = select(sets).where(sets.c.name == set_name, sets.c.kind == kind)
        if not self.is_sqlite:
            query = query.with_for_update()
        row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound(f"no set called {set_name!r}", field="set")
        return row

    # -- the sequencer's transaction --------------------------------------------------------------

    @shielded_write
    async def append(self, set_name: str, items: Sequence[PreparedRecord]) -> list[AppendResult]:
        if not items:
            return []
        async with self._write_tx() as conn:
            row = await self._lock_set(conn, set_name)
            set_id, size = int(row.id), int(row.size)

            # 1. Which entries are already active in the set? (idempotent re-publication)
            keys = list(
                {it.hash_key for it in items if it.hash_key is not None}
                | {
                    hash_key(it.record.target_hash.type, it.record.target_hash.value)
                    for it in items
                    if isinstance(it.record, REVOCATION_TYPES)
                }
            )
            active: dict[bytes, tuple[int, str]] = {}
            for chunk in _chunks(keys, _IN_CHUNK):
                result = await conn.exec_driver_sql(
                    "SELECT hash_key, idx, record_id FROM records WHERE kind = 'entry'"
                    f" AND revoked_by IS NULL AND set_id = {set_id:d}"
                    f" AND hash_key IN ({self._params(len(chunk))})",
                    tuple(chunk),
                )
                active.update({bytes(k): (int(i), str(r)) for k, i, r in cast(Any, result)})

            # 2. Which earlier entries do the revocations target?
            targets = [
                it.record.target
                for it in items
                if isinstance(it.record, REVOCATION_TYPES)
            ]
            found: dict[str, tuple[int, bytes | None, int | None]] = {}
            for chunk in _chunks(targets, _IN_CHUNK):
                result = await conn.execute(
                    select(
                        records.c.record_id, records.c.idx, records.c.hash_key,
                        records.c.revoked_by,
                    ).where(
                        records.c.set_id == set_id,
                        records.c.record_id.in_(chunk),
                        records.c.kind == "entry",
                    )
                )
                for r in result:
                    key = bytes(r.hash_key) if r.hash_key is not None else None
                    found[str(r.record_id)] = (int(r.idx), key, r.revoked_by)

            # 3. Assign indices, in order, deciding duplicates and checking revocations.
            results: list[AppendResult] = []
            new_rows: list[tuple[Any, ...]] = []
            leaf_hashes: list[bytes] = []
            revoked: list[dict[str, Any]] = []
            batch_entries: dict[str, tuple[int, bytes | None]] = {}
            attestations: list[dict[str, Any]] = []
            next_index = size
            leaves: list[bytes] = []
            for it in items:
                rec = it.record
                if isinstance(rec, ENTRY_TYPES):
                    assert it.hash_key is not None
                    existing = active.get(it.hash_key)
                    if existing is not None:
                        # the stored entry's index and id: the refused copy's id is never stored
                        results.append(AppendResult("duplicate", *existing))
                        continue
                    active[it.hash_key] = (next_index, rec.id)
                    batch_entries[rec.id] = (next_index, it.hash_key)
                elif isinstance(rec, REVOCATION_TYPES):
                    target_idx, target_key = self._revocation_target(rec, found, batch_entries)
                    if active.get(target_key, (None,))[0] != target_idx:
                        raise Conflict(
                            f"entry {rec.target} is already revoked", field="target"
                        )
                    del active[target_key]
                    revoked.append({"b_set": set_id, "b_idx": target_idx, "b_by": next_index})
                elif isinstance(rec, ATTESTATION_TYPES):
                    attestations.append(_attestation_row(set_id, next_index, rec))
                new_rows.append((next_index, rec.id, rec.type, it.hash_key, it.data))
                leaves.append(it.data)
                leaf_hashes.append(it.leaf_hash)
                results.append(AppendResult("appended", next_index, rec.id))
                next_index += 1
            if not new_rows:
                return results
            # Duplicates are skipped, so which rows end up in a full bundle is known only now.
            bundled = _bundled_below(size, len(new_rows))
            if bundled > size:
                new_rows = [r if r[0] >= bundled else (*r[:4], None) for r in new_rows]

            # 4. Records, view updates and tiles, all in this one transaction: a crash anywhere
            # before COMMIT leaves the log exactly as it was; after it, all of it is there.
            root = await self._write_out(conn, set_id, size, new_rows, leaves,
                                         b"".join(leaf_hashes), revoked)
            if attestations:
                await conn.execute(attestation_view.insert(), attestations)
            await conn.execute(
                update(sets).where(sets.c.id == set_id).values(size=next_index, root=root)
            )
        return results

    async def _write_out(
        self,
        conn: AsyncConnection,
        set_id: int,
        size: int,
        rows: list[tuple[Any, ...]],
        leaves: list[bytes],
        hashes: bytes,
        revoked: list[dict[str, Any]],
        blocks: Mapping[int, tuple[bytes, bytes]] | None = None,
    ) -> bytes:
        """Insert rows, update the revoked_by view, write tiles and bundles; return the new root.

        ``rows`` are (index, id, kind, hash key, data) with data None below
        :func:`_bundled_below`: leaves that this append puts into a full bundle are stored in
        that bundle only (written below, in this same transaction), so each leaf's bytes are
        written once, ~550 MB less to write and to keep on a 1M-entry set. ``leaves`` are the
        bytes of all of them, for the bundles, and ``hashes`` their leaf hashes concatenated.
        ``blocks``: whole blocks given as (bundle, root), see MirrorLeaves.
        """
        try:
            # Raw DBAPI executemany: SQLAlchemy's per-value type processing costs more than
            # SQLite's insert itself for a million rows (and constants are not bound per row).
            await conn.exec_driver_sql(
                "INSERT INTO records (set_id, idx, record_id, kind, hash_key, data, revoked_by)"
                f" VALUES ({set_id:d}, {self._params(5)}, NULL)",
                rows,
            )
        except IntegrityError as e:
            raise Conflict("a record with this id is already in the set", field="id") from e
        # Rows appended in this very batch get their revoked_by set after the insert.
        if revoked:
            await conn.execute(
                update(records)
                .where(
                    and_(
                        records.c.set_id == bindparam("b_set"),
                        records.c.idx == bindparam("b_idx"),
                    )
                )
                .values(revoked_by=bindparam("b_by")),
                revoked,
            )
        edge = await self._read_tiles(conn, set_id, tlog.right_edge_tiles(size))
        known = {n: root for n, (_, root) in blocks.items()} if blocks else None
        changed = tlog.update_tiles_concatenated(size, edge, hashes, known_roots=known)
        await self._upsert_tiles(conn, set_id, changed)
        await self._write_full_bundles(conn, set_id, size, leaves, changed, blocks or {})
        new_size = size + len(hashes) // merkle.HASH_SIZE
        needed = [r for r in tlog.root_tiles(new_size) if r not in changed]
        have = dict(changed)
        have.update(await self._read_tiles(conn, set_id, needed))
        return tlog.root_from_tiles(new_size, have)

    # -- mirrors: verified copies of partners' logs -----------------------------------------------

    @shielded_write
    async def create_mirror(
        self,
        name: str,
        origin: str,
        *,
        remote_url: str,
        remote_org: str,
        remote_set: str,
        tlp: str,
        reshare_into: str | None = None,
        reshare_policy: str | None = None,
    ) -> SetInfo:
        try:
            async with self._write_tx() as conn:
                await conn.execute(
                    sets.insert().values(
                        name=name, origin=origin, tlp=tlp, description="", kind="mirror",
                        created=timestamp(), size=0, root=merkle.EMPTY_ROOT, checkpoint=None,
                        checkpoint_size=0, remote_url=remote_url, remote_org=remote_org,
                        remote_set=remote_set, reshare_into=reshare_into,
                        reshare_policy=reshare_policy,
                    )
                )
        except IntegrityError as e:
            raise Conflict(f"already subscribed to {origin}", field="set") from e
        return await self.get_set(name, kind="mirror")

    @shielded_write
    async def append_mirror(
        self,
        name: str,
        start: int,
        runs: Sequence[MirrorLeaves],
        *,
        checkpoint: tuple[bytes, int, bytes] | None = None,
    ) -> SetInfo:
        """Append a partner's leaves at exactly their indices; optionally adopt its checkpoint.

        The caller has verified every leaf against a signed checkpoint (node.federation.sync);
        ``runs`` are consecutive from ``start`` (see MirrorLeaves, whose whole-block bundles and
        roots are stored as given). This transaction checks what only the database knows: that
        the mirror is still at ``start`` (no other process synced it meanwhile: Conflict), that
        revocations name active entries of this log (VerificationError otherwise: the partner's
        log is invalid), and, with ``checkpoint=(note, size, root)``, that the stored tree now
        has exactly that size and root before the note is adopted. Any failure rolls back
        everything: the cursor (the mirror's size) advances in the same transaction as the
        data, so a killed sync resumes cleanly.
        """
        position = start
        for run in runs:
            if run.start != position:
                raise ValueError(f"leaves from {run.start} do not follow leaf {position - 1}")
            position += len(run.rows)
        async with self._write_tx() as conn:
            row = await self._lock_set(conn, name, kind="mirror")
            set_id, size = int(row.id), int(row.size)
            if size != start:
                raise Conflict(f"mirror {name} is at size {size}, not {start}")
            specials = [pair for run in runs for pair in run.records]
            targets = [rec.target for _, rec in specials if isinstance(rec, REVOCATION_TYPES)]
            found: dict[str, tuple[int, int | None]] = {}
            for chunk in _chunks(targets, _IN_CHUNK):
                result = await conn.execute(
                    select(records.c.record_id, records.c.idx, records.c.revoked_by).where(
                        records.c.set_id == set_id,
                        records.c.record_id.in_(chunk),
                        records.c.kind == "entry",
                    )
                )
                for r in result:
                    found[str(r.record_id)] = (int(r.idx), r.revoked_by)
            if targets:
                # Entries of this very append that a revocation names (~1% of a log's records).
                wanted = set(targets)
                for run in runs:
                    for leaf_row in run.rows:
                        if leaf_row[1] in wanted and leaf_row[2] == "entry":
                            found[leaf_row[1]] = (leaf_row[0], None)
            revoked: list[dict[str, Any]] = []
            attestations: list[dict[str, Any]] = []
            for index, rec in specials:
                if isinstance(rec, REVOCATION_TYPES):
                    target = found.get(rec.target)
                    # an entry later in the log than its revocation is no target either
                    if target is None or target[1] is not None or target[0] > index:
                        raise VerificationError(
                            f"{row.origin} record {index} revokes {rec.target}, which is not an"
                            " active entry of that log"
                        )
                    found[rec.target] = (target[0], index)
                    revoked.append({"b_set": set_id, "b_idx": target[0], "b_by": index})
                elif isinstance(rec, ATTESTATION_TYPES):
                    attestations.append(_attestation_row(set_id, index, rec))
            root = (
                await self._write_mirror_runs(conn, set_id, size, runs, revoked)
                if position > size
                else bytes(row.root)
            )
            if attestations:
                await conn.execute(attestation_view.insert(), attestations)
            values: dict[str, Any] = {"size": position, "root": root, "synced_at": timestamp(),
                                      "sync_error": None}
            if checkpoint is not None:
                note, cp_size, cp_root = checkpoint
                if (position, root) != (cp_size, cp_root):
                    raise VerificationError(
                        f"mirror of {row.origin} has size {position} and a different root than"
                        f" the checkpoint for size {cp_size}"
                    )
                values.update(checkpoint=note, checkpoint_size=cp_size)
            await conn.execute(update(sets).where(sets.c.id == set_id).values(**values))
        return await self.get_set(name, kind="mirror")

    async def _write_mirror_runs(
        self,
        conn: AsyncConnection,
        set_id: int,
        size: int,
        runs: Sequence[MirrorLeaves],
        revoked: list[dict[str, Any]],
    ) -> bytes:
        """_write_out for a mirror's runs: their rows in one list (whole blocks' rows already
        without bytes, other rows' bytes cleared below the bundled mark), the bytes of leaves
        not in a given bundle for the bundles this append completes, and the given blocks."""
        count = sum(len(run.rows) for run in runs)
        bundled = _bundled_below(size, count)
        rows: list[RecordRow] = []
        leaves: list[bytes] = []
        blocks: dict[int, tuple[bytes, bytes]] = {}
        for run in runs:
            if run.bundle is not None:
                assert run.root is not None  # MirrorLeaves guarantees it
                blocks[run.start // tlog.TILE_WIDTH] = (run.bundle, run.root)
                rows.extend(run.rows)
                leaves.extend([b""] * len(run.rows))  # never read: the block is given
                continue
            for r in run.rows:
                assert r[4] is not None  # rows outside a given bundle carry their bytes
                leaves.append(r[4])
                rows.append(r if r[0] >= bundled else (*r[:4], None))
        hashes = b"".join([run.hashes for run in runs])
        return await self._write_out(conn, set_id, size, rows, leaves, hashes, revoked, blocks)

    @shielded_write
    async def add_pending(self, set_id: int, index: int) -> None:
        """Hold a mirror entry back until it meets its re-share policy (idempotent)."""
        async with self._write_tx() as conn:
            exists = (
                await conn.execute(
                    select(reshare_pending.c.idx).where(
                        reshare_pending.c.set_id == set_id, reshare_pending.c.idx == index
                    )
                )
            ).first()
            if exists is None:
                await conn.execute(reshare_pending.insert().values(set_id=set_id, idx=index))

    @shielded_write
    async def drop_pending(self, set_id: int, index: int) -> None:
        async with self._write_tx() as conn:
            await conn.execute(
                reshare_pending.delete().where(
                    reshare_pending.c.set_id == set_id, reshare_pending.c.idx == index
                )
            )

    async def list_pending(self, set_id: int) -> list[int]:
        async with self._read.connect() as conn:
            rows = await conn.execute(
                select(reshare_pending.c.idx)
                .where(reshare_pending.c.set_id == set_id)
                .order_by(reshare_pending.c.idx)
            )
            return [int(i) for (i,) in rows]

    @shielded_write
    async def set_sync_error(self, name: str, message: str | None) -> None:
        async with self._write_tx() as conn:
            await conn.execute(
                update(sets).where(sets.c.name == name).values(sync_error=message)
            )

    @shielded_write
    async def add_evidence(
        self,
        origin: str,
        kind: str,
        detail: str,
        note_a: bytes | None,
        note_b: bytes | None,
        path: tuple[bytes, ...] | None = None,
    ) -> None:
        """Keep proof of misbehaviour (fork, rollback, bad tile) forever.

        ``path`` as InconsistentTreeError's: ``()`` when the two notes alone prove equivocation,
        the larger tree's consistency path when their sizes differ, None when they prove none.
        """
        async with self._write_tx() as conn:
            await conn.execute(
                evidence.insert().values(
                    origin=origin, kind=kind, detail=detail, note_a=note_a, note_b=note_b,
                    created=timestamp(), path=None if path is None else b"".join(path),
                )
            )

    async def list_evidence(self) -> list[dict[str, Any]]:
        async with self._read.connect() as conn:
            rows = (await conn.execute(select(evidence).order_by(evidence.c.id))).all()
        return [dict(r._mapping) for r in rows]

    @staticmethod
    def _revocation_target(
        rec: Revocation | RevocationView,
        found: dict[str, tuple[int, bytes | None, int | None]],
        batch_entries: dict[str, tuple[int, bytes | None]],
    ) -> tuple[int, bytes]:
        if rec.target in batch_entries:
            idx, key = batch_entries[rec.target]
        elif rec.target in found:
            idx, key, _ = found[rec.target]
        else:
            raise Conflict(f"no entry {rec.target} in this set to revoke", field="target")
        if key is None or key != hash_key(rec.target_hash.type, rec.target_hash.value):
            raise Conflict(
                f"entry {rec.target} has a different hash than target_hash", field="target_hash"
            )
        return idx, key

    async def _upsert_tiles(
        self, conn: AsyncConnection, set_id: int, changed: dict[TileRef, bytes]
    ) -> None:
        rows = [(set_id, ref.level, ref.n, data) for ref, data in changed.items()]
        # Both dialects spell an upsert this way (SQLite >= 3.24, PostgreSQL >= 9.5).
        await conn.exec_driver_sql(
            f"INSERT INTO tiles (set_id, level, n, data) VALUES ({self._params(4)})"
            " ON CONFLICT (set_id, level, n) DO UPDATE SET data = excluded.data",
            rows,
        )

    async def _write_full_bundles(
        self,
        conn: AsyncConnection,
        set_id: int,
        size: int,
        leaves: list[bytes],
        changed: dict[TileRef, bytes],
        blocks: Mapping[int, tuple[bytes, bytes]],
    ) -> None:
        """Store every entry bundle this append completes (same transaction as its records),
        and clear the bytes of its leaves from ``records`` (the new rows were inserted without
        them): from the commit on, the bundle is where those leaves are. A block in ``blocks``
        is stored as the bundle bytes given there (see append_mirror)."""
        width = tlog.TILE_WIDTH
        out: list[tuple[int, int, bytes]] = []
        head_start: int | None = None
        for ref in changed:
            if ref.level != 0 or not ref.is_full:
                continue
            start = ref.n * width
            given = blocks.get(ref.n)
            if given is not None and start >= size:
                out.append((set_id, ref.n, given[0]))
                continue
            head: list[bytes] = []
            if start < size:  # the block began in an earlier append: its rows still have data
                head_start = start
                result = await conn.exec_driver_sql(
                    f"SELECT data FROM records WHERE set_id = {set_id:d} AND idx >= {start:d}"
                    f" AND idx < {size:d} ORDER BY idx"
                )
                head = [bytes(d) for (d,) in cast(Any, result)]
            lo = max(start, size) - size
            tail = leaves[lo : start + width - size]
            out.append((set_id, ref.n, tlog.encode_entry_bundle(head + tail)))
        if out:
            await conn.exec_driver_sql(
                f"INSERT INTO bundles (set_id, n, data) VALUES ({self._params(3)})", out
            )
        if head_start is not None:
            await conn.exec_driver_sql(
                f"UPDATE records SET data = NULL WHERE set_id = {set_id:d}"
                f" AND idx >= {head_start:d} AND idx < {size:d}"
            )

    async def _leaves_from_bundles(
        self, conn: AsyncConnection, wanted: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], bytes]:
        """The bytes of leaves (set_id, index) whose record holds none: from their bundles.

        Such a leaf's bundle was written in the transaction that cleared its bytes, and bundles
        are never changed or deleted, so it is there whatever this connection's snapshot.
        """
        width = tlog.TILE_WIDTH
        out: dict[tuple[int, int], bytes] = {}
        for set_id, n in sorted({(int(s), int(i) // width) for s, i in wanted}):
            result = await conn.exec_driver_sql(
                f"SELECT data FROM bundles WHERE set_id = {set_id:d} AND n = {n:d}"
            )
            row = result.first()
            if row is None:  # cannot happen unless the database was edited by hand
                raise Unavailable(f"entry bundle {n} of set {set_id} is missing from the database")
            for offset, leaf in enumerate(tlog.decode_entry_bundle(bytes(row[0]), width)):
                out[(set_id, n * width + offset)] = leaf
        return out

    async def _stored_rows(self, conn: AsyncConnection, query: Any) -> list[StoredRecord]:
        """Run a :func:`_stored_query` and build its StoredRecords, leaf bytes filled in."""
        rows = (await conn.execute(query)).all()
        missing = [(r.set_id, r.idx) for r in rows if r.data is None]
        leaves = await self._leaves_from_bundles(conn, missing) if missing else {}
        return [
            _stored(r, leaves[(int(r.set_id), int(r.idx))] if r.data is None else bytes(r.data))
            for r in rows
        ]

    async def read_bundle(self, set_id: int, n: int) -> bytes | None:
        """A stored full entry bundle, or None (not full yet, or written before revision 0005)."""
        # The hottest read of a serving node: a single-row lookup of an immutable blob.
        rows = await self.small_read(
            f"SELECT data FROM bundles WHERE set_id = {int(set_id):d} AND n = {int(n):d}"
        )
        return bytes(rows[0][0]) if rows else None

    def _blob_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix="hashfed-blob"
            )
        return self._executor

    async def small_read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of a small indexed read, as plain tuples; placeholders from :meth:`_params`.

        For the reads of every request: a bundle (read_bundle), and on every signed request the
        trust rows, the grants and a few sets' sizes. Through the async engine each such query
        costs far more than SQLite's work (~15x for a bundle; ~1.5 ms of CPU for a trust read,
        measured), so on SQLite it runs on a plain read-only sqlite3 connection (WAL: readers do
        not wait for the writer), on the event loop itself: a bundle read takes ~70-100 us for
        130 KB, less than the hop to a worker thread and back under load (bench_serve, 1M set:
        1,650 req/s through a pool of 4 threads, 2,435 inline). A short busy timeout keeps the
        loop from ever waiting on a lock; in the rare case SQLite is busy (WAL recovery after a
        crash of another process), the read goes to a worker thread that may wait. PostgreSQL
        goes through the engine.
        """
        if self.is_sqlite:
            try:
                return self._small_read_sync(sql, params, inline=True)
            except sqlite3.OperationalError:
                return await asyncio.get_running_loop().run_in_executor(
                    self._blob_executor(), self._small_read_sync, sql, params
                )
        async with self._read.connect() as conn:
            result = await conn.exec_driver_sql(sql, tuple(params))
            return [tuple(r) for r in result.all()]

    def _small_read_sync(
        self, sql: str, params: Sequence[Any], *, inline: bool = False
    ) -> list[tuple[Any, ...]]:
        return self._raw_read_conn(inline).execute(sql, tuple(params)).fetchall()

    def _raw_read_conn(self, inline: bool) -> sqlite3.Connection:
        """This thread's own read-only connection (``inline``: the event loop's, which gives up
        after 20 ms instead of waiting for a lock)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            path = self.url.database or ""
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={20 if inline else 30000}")
            # Memory-mapped reads of the main database file: a bundle is ~33 overflow pages,
            # read ~30% faster without a pread() and a copy per page. SQLite maps the file
            # read-only and never truncates it here (no VACUUM); WAL pages are still read
            # normally. The mapping is address space, not memory: pages are the OS's cache.
            conn.execute(f"PRAGMA mmap_size={1 << 36}")
            self._local.conn = conn
            with self._conns_lock:
                self._raw_conns.append(conn)
        return conn

    def _params(self, n: int) -> str:
        """DBAPI placeholders: qmark for sqlite3, numbered for SQLAlchemy's asyncpg adapter."""
        if self.is_sqlite:
            return ", ".join("?" * n)
        return ", ".join(f"${i}" for i in range(1, n + 1))

    def _value_rows(self, rows: int, width: int) -> str:
        """Placeholders of a multi-row ``VALUES`` list: ``rows`` rows of ``width`` values."""
        if self.is_sqlite:
            return ", ".join([f"({self._params(width)})"] * rows)
        return ", ".join(
            "(" + ", ".join(f"${r * width + c}" for c in range(1, width + 1)) + ")"
            for r in range(rows)
        )

    @shielded_write
    async def store_checkpoint(self, set_name: str, sign: CheckpointSigner) -> bytes | None:
        async with self._write_tx() as conn:
            row = await self._lock_set(conn, set_name)
            size = int(row.size)
            if row.checkpoint is not None and size <= int(row.checkpoint_size):
                return None
            note = sign(str(row.origin), size, bytes(row.root))
            await conn.execute(
                checkpoints.insert().values(
                    set_id=row.id, size=size, note=note, created=timestamp()
                )
            )
            await conn.execute(
                update(sets)
                .where(sets.c.id == row.id)
                .values(checkpoint=note, checkpoint_size=size)
            )
            return note

    async def checkpoint_at(self, set_id: int, size: int) -> bytes | None:
        async with self._read.connect() as conn:
            note = (
                await conn.execute(
                    select(checkpoints.c.note).where(
                        checkpoints.c.set_id == set_id, checkpoints.c.size == size
                    )
                )
            ).scalar()
        return None if note is None else bytes(note)

    # -- reads ----------------------------------------------------------------------------------

    async def read_tiles(self, set_id: int, refs: Sequence[TileRef]) -> dict[TileRef, bytes]:
        async with self._read.connect() as conn:
            return await self._read_tiles(conn, set_id, refs)

    @staticmethod
    async def _read_tiles(
        conn: AsyncConnection, set_id: int, refs: Sequence[TileRef]
    ) -> dict[TileRef, bytes]:
        wanted = {(r.level, r.n): r for r in refs}
        out: dict[TileRef, bytes] = {}
        for chunk in _chunks(list(wanted), _IN_CHUNK):
            result = await conn.execute(
                select(tiles.c.level, tiles.c.n, tiles.c.data).where(
                    tiles.c.set_id == set_id, tuple_(tiles.c.level, tiles.c.n).in_(chunk)
                )
            )
            for level, n, data in result:
                ref = wanted[(int(level), int(n))]
                if len(data) >= ref.byte_length:
                    out[ref] = bytes(data[: ref.byte_length])
        return out

    async def read_entries(self, set_id: int, start: int, count: int) -> list[bytes]:
        # Raw SQL: SQLAlchemy's per-row processing tripled the cost of a 256-row read.
        set_id, start, count = int(set_id), int(start), int(count)
        async with self._read.connect() as conn:
            result = await conn.exec_driver_sql(
                f"SELECT data FROM records WHERE set_id = {set_id:d} AND idx >= {start:d}"
                f" AND idx < {start + count:d} ORDER BY idx"
            )
            # indices are contiguous from 0, so the i-th row is leaf start + i
            data = [d for (d,) in cast(Any, result)]
            missing = [(set_id, start + i) for i, d in enumerate(data) if d is None]
            if not missing:
                return [bytes(d) for d in data]
            leaves = await self._leaves_from_bundles(conn, missing)
            return [
                leaves[(set_id, start + i)] if d is None else bytes(d) for i, d in enumerate(data)
            ]

    async def find_entries(
        self, key: bytes, set_ids: Sequence[int] | None = None
    ) -> list[StoredRecord]:
        query = _stored_query().where(records.c.hash_key == key, records.c.kind == "entry")
        if set_ids is not None:
            query = query.where(records.c.set_id.in_(list(set_ids)))
        async with self._read.connect() as conn:
            return await self._stored_rows(conn, query.order_by(sets.c.name, records.c.idx))

    async def get_record(self, set_id: int, record_id: str) -> StoredRecord | None:
        query = _stored_query().where(
            records.c.set_id == set_id, records.c.record_id == record_id
        )
        async with self._read.connect() as conn:
            rows = await self._stored_rows(conn, query)
        return rows[0] if rows else None

    async def get_record_at(self, set_id: int, index: int) -> StoredRecord | None:
        query = _stored_query().where(records.c.set_id == set_id, records.c.idx == index)
        async with self._read.connect() as conn:
            rows = await self._stored_rows(conn, query)
        return rows[0] if rows else None

    async def count_records(self, set_id: int) -> dict[str, int]:
        """Records per kind, and active entries (for `set list` and metrics)."""
        async with self._read.connect() as conn:
            rows = (
                await conn.execute(
                    select(records.c.kind, func.count())
                    .where(records.c.set_id == set_id)
                    .group_by(records.c.kind)
                )
            ).all()
            active = (
                await conn.execute(
                    select(func.count()).where(
                        records.c.set_id == set_id,
                        records.c.kind == "entry",
                        records.c.revoked_by.is_(None),
                    )
                )
            ).scalar_one()
        out = {str(k): int(c) for k, c in rows}
        out["active"] = int(active)
        return out

    # -- re-shares and attestations (node.federation.reshare, the merged view) --------------------

    async def read_records(self, set_id: int, start: int, count: int) -> list[StoredRecord]:
        """Records ``start .. start+count-1`` with their revocation state, by index."""
        query = _stored_query().where(
            records.c.set_id == set_id, records.c.idx >= start, records.c.idx < start + count
        )
        async with self._read.connect() as conn:
            return await self._stored_rows(conn, query.order_by(records.c.idx))

    async def active_entries_after(
        self, set_id: int, after: int, limit: int
    ) -> list[StoredRecord]:
        """Up to ``limit`` active entries with index > ``after`` (keyset paging: an export
        holds one page at a time, whatever the log's size)."""
        query = _stored_query().where(
            records.c.set_id == set_id,
            records.c.idx > after,
            records.c.kind == "entry",
            records.c.revoked_by.is_(None),
        )
        async with self._read.connect() as conn:
            return await self._stored_rows(conn, query.order_by(records.c.idx).limit(limit))

    @shielded_write
    async def add_reshare(
        self, set_id: int, index: int, upstream_origin: str, upstream_record: str, receipt: bytes
    ) -> None:
        """Keep the receipt of the re-shared entry at (set_id, index); a second call for the
        same entry is a no-op (a re-run after a crash stores it once)."""
        try:
            async with self._write_tx() as conn:
                await conn.execute(
                    reshares.insert().values(
                        set_id=set_id, idx=index, upstream_origin=upstream_origin,
                        upstream_record=upstream_record, receipt=receipt,
                    )
                )
        except IntegrityError:
            return

    async def find_reshares(
        self, upstream_origin: str, upstream_record: str
    ) -> list[tuple[int, int]]:
        """(set_id, index) of every entry this node re-shared from that upstream record."""
        async with self._read.connect() as conn:
            rows = (
                await conn.execute(
                    select(reshares.c.set_id, reshares.c.idx).where(
                        reshares.c.upstream_origin == upstream_origin,
                        reshares.c.upstream_record == upstream_record,
                    )
                )
            ).all()
        return [(int(s), int(i)) for s, i in rows]

    async def last_reshare_receipt(self, upstream_origin: str) -> bytes | None:
        """The receipt of the newest entry re-shared from ``upstream_origin`` (its highest
        index), if any: where a re-share pass resumes after a crash."""
        async with self._read.connect() as conn:
            data = (
                await conn.execute(
                    select(reshares.c.receipt)
                    .where(reshares.c.upstream_origin == upstream_origin)
                    .order_by(reshares.c.idx.desc())
                    .limit(1)
                )
            ).scalar()
        return None if data is None else bytes(data)

    async def get_receipt(self, set_id: int, index: int) -> bytes | None:
        async with self._read.connect() as conn:
            data = (
                await conn.execute(
                    select(reshares.c.receipt).where(
                        reshares.c.set_id == set_id, reshares.c.idx == index
                    )
                )
            ).scalar()
        return None if data is None else bytes(data)

    async def attestations_for(
        self, targets: Sequence[tuple[str, str]]
    ) -> list[tuple[int, int, str, str, int | None]]:
        """Rows of the attestation view about any of ``targets`` ((origin, record id) pairs):
        (set_id, index, attester, opinion, count), each attestation record once."""
        if not targets:
            return []
        async with self._read.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        attestation_view.c.set_id, attestation_view.c.idx,
                        attestation_view.c.attester, attestation_view.c.opinion,
                        attestation_view.c.count,
                    ).where(
                        tuple_(
                            attestation_view.c.target_origin, attestation_view.c.target_record
                        ).in_(list(targets))
                    )
                )
            ).all()
        seen: dict[tuple[int, int], tuple[int, int, str, str, int | None]] = {}
        for s, i, attester, opinion, count in rows:
            seen[(int(s), int(i))] = (
                int(s), int(i), str(attester), str(opinion), None if count is None else int(count)
            )
        return list(seen.values())


def _attestation_row(
    set_id: int, index: int, rec: Attestation | AttestationView
) -> dict[str, Any]:
    return {
        "set_id": set_id, "idx": index, "target_origin": rec.target_origin,
        "target_record": rec.target, "attester": rec.author, "opinion": rec.opinion,
        "count": rec.count,
    }


def _stored_query() -> Any:
    return select(
        sets.c.name, sets.c.origin, records.c.set_id, records.c.idx, records.c.data,
        records.c.revoked_by,
    ).join(sets, sets.c.id == records.c.set_id)


def _stored(row: Row[Any], data: bytes) -> StoredRecord:
    return StoredRecord(
        set_name=str(row.name),
        origin=str(row.origin),
        index=int(row.idx),
        data=data,
        revoked_by=None if row.revoked_by is None else int(row.revoked_by),
    )


def _set_info(row: Row[Any]) -> SetInfo:
    return SetInfo(
        id=int(row.id),
        name=str(row.name),
        origin=str(row.origin),
        description=str(row.description),
        tlp=str(row.tlp),
        created=str(row.created),
        size=int(row.size),
        root=bytes(row.root),
        checkpoint=None if row.checkpoint is None else bytes(row.checkpoint),
        checkpoint_size=int(row.checkpoint_size),
        kind=str(row.kind),
        remote_url=row.remote_url,
        remote_org=row.remote_org,
        remote_set=row.remote_set,
        reshare_into=row.reshare_into,
        reshare_policy=row.reshare_policy,
    )


#: a WAL holding more than this is checkpointed after the write transaction that took it past
#: (SQLite's own automatic threshold is 1000 pages: 4 MB with its default 4 KiB pages, which
#: this keeps for databases with 16 KiB pages too; a larger one measured no faster)
_WAL_CHECKPOINT_BYTES = 1000 * 4096


class _Checkpointer:
    """SQLite WAL checkpoints on a thread of their own, overlapping the writer's other work.

    SQLite's automatic checkpoint runs inside the COMMIT that takes the WAL past 1000 pages, so
    the transaction waits while every page it wrote is copied into the database file and that
    file is fsynced: for the 32k-record transactions of a bulk sync, about 40% of each commit.
    The writer connection therefore has automatic checkpoints off, and after a write transaction
    that left the WAL larger than _WAL_CHECKPOINT_BYTES, this runs ``PRAGMA
    wal_checkpoint(PASSIVE)`` on its own connection and thread while the writer's process goes
    on (a sync checks and prepares its next batch meanwhile). The next write transaction first
    waits for it to end, so the WAL is reset at that transaction's start exactly as after an
    automatic checkpoint: it never holds more than one large transaction more than before.

    Durability is unchanged: a commit is durable once its WAL frames are fsynced
    (``synchronous=FULL``), before any checkpoint. A crash during a checkpoint leaves the WAL
    with frames not yet copied, which SQLite copies at the next open, as after a crash during an
    automatic one. A failed checkpoint is logged and skipped: the next one copies those frames.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._running: concurrent.futures.Future[None] | None = None

    async def wait(self) -> None:
        """Until the checkpoint in progress, if any, has ended."""
        running = self._running
        if running is not None:
            await asyncio.wrap_future(running)
            if self._running is running:
                self._running = None

    def after_commit(self) -> None:
        if self._running is not None or not self.path:
            return
        try:
            size = os.stat(self.path + "-wal").st_size
        except OSError:
            return  # no WAL file (yet): nothing to copy
        if size > _WAL_CHECKPOINT_BYTES:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="hashfed-checkpoint"
                )
            self._running = self._pool.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(self.path, check_same_thread=False)
                self._conn.execute("PRAGMA busy_timeout=30000")
            # PASSIVE: copies what it can without waiting for readers or taking the write lock.
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as e:
            _log.warning("WAL checkpoint of %s failed (the next one retries): %s", self.path, e)

    async def close(self) -> None:
        await self.wait()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


SQLITE_PAGE_SIZE = 16384


def _sqlite_pragmas(engine: AsyncEngine, *, immediate: bool) -> None:
    """WAL, full durability, a busy timeout; and BEGIN IMMEDIATE for the writer engine.

    pysqlite's own transaction handling is switched off (isolation_level=None) so that we emit
    BEGIN ourselves: that is the documented SQLAlchemy recipe for SQLite's locking modes.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # Applies only to a database that has no tables yet (an existing file keeps its page
        # size), so it must come before anything writes. 16 KiB pages: SQLite writes a WAL frame
        # per page with its own system call, and a commit that inserts random hash keys dirties
        # pages all over the hash index. Measured in plain sqlite3 with our schema (bench/README):
        # 1M rows 24.6 s with 4 KiB pages, 16.4 s with 16 KiB, 16.9 s with 32 KiB.
        cur.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        if immediate:
            # The writer only: 64 MiB keeps random-key index inserts in memory. Readers keep
            # SQLite's default (2 MiB each): a page cache per pooled read connection would grow
            # the process by 64 MiB per connection as the database grows.
            cur.execute("PRAGMA cache_size=-65536")
            # Checkpoints run on a thread of their own after the commit (see _Checkpointer),
            # not inside it. At each WAL reset the file is cut back to _WAL_CHECKPOINT_BYTES, so
            # that its size past that mark says how much the WAL holds.
            cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.execute(f"PRAGMA journal_size_limit={_WAL_CHECKPOINT_BYTES}")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
