"""The Store contract, on real SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from node.errors import Conflict, NotFound, SetupError
from node.storage import MirrorLeaves, PreparedRecord, hash_key
from node.storage.schema import sets
from node.storage.sql import SqlStore, shielded_write
from protocol import merkle
from protocol import tiles as tlog
from protocol.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
from protocol.note import Signer
from protocol.records import Entry, decode_record, new_nonce, new_record_id, record_from_dict
from protocol.tiles import TileRef

ORIGIN = "node.example/test"


def make_entry(value: str | None = None) -> Entry:
    rid = new_record_id()
    rec = record_from_dict(
        {
            "type": "entry",
            "id": rid,
            "author": "org.example",
            "created": "2026-11-26T00:00:00Z",
            "nonce": new_nonce(),
            "hash": {"type": "sha256", "value": value or os.urandom(32).hex()},
            "media": "image",
            "vetting": {"status": "confirmed", "reviews": 1},
            "provenance": {"org": "org.example", "node": ORIGIN, "record": rid,
                           "first_seen": "2026-11-26T00:00:00Z"},
        }
    )
    assert isinstance(rec, Entry)
    return rec


def make_revocation(target: Entry, **extra: Any) -> PreparedRecord:
    rec = record_from_dict(
        {
            "type": "revocation",
            "id": new_record_id(),
            "author": "org.example",
            "created": "2026-11-26T00:00:00Z",
            "nonce": new_nonce(),
            "target": target.id,
            "target_hash": {"type": target.hash.type, "value": target.hash.value},
            "reason": "false_positive",
            **extra,
        }
    )
    return PreparedRecord.of(rec)


async def open_store(url: str) -> SqlStore:
    store = SqlStore.engines(url)
    await store.migrate()
    await store.close()
    return await SqlStore.open(url)


async def _check_leaf_bytes_stored_once(
    store: SqlStore, set_id: int, prepared: list[PreparedRecord]
) -> None:
    """Leaves of full bundles have no bytes on their rows (the bundle holds them, revision 0006),
    the partial bundle's rows keep theirs, and every read path returns the same bytes."""
    from sqlalchemy import text

    size = len(prepared)
    async with store._read.connect() as conn:
        nulls = (
            await conn.execute(
                text("SELECT idx FROM records WHERE set_id = :s AND data IS NULL ORDER BY idx"),
                {"s": set_id},
            )
        ).scalars().all()
    assert list(nulls) == list(range(size // 256 * 256))
    data = [p.data for p in prepared]
    assert await store.read_entries(set_id, 0, size) == data
    assert await store.read_entries(set_id, 250, 10) == data[250:260]  # across a bundle edge
    assert [r.data for r in await store.read_records(set_id, 0, size)] == data
    for i in (0, 255, 256, size - 1):
        rec = decode_record(data[i])
        assert (await store.get_record_at(set_id, i)).data == data[i]  # type: ignore[union-attr]
        assert (await store.get_record(set_id, rec.id)).data == data[i]  # type: ignore[union-attr]
        assert [r.data for r in await store.find_entries(prepared[i].hash_key or b"")] == [data[i]]
    page = await store.active_entries_after(set_id, 100, 300)
    assert [r.index for r in page] == list(range(101, 401))
    assert [r.data for r in page] == data[101:401]


async def test_open_refuses_an_unmigrated_database(database_url: str) -> None:
    with pytest.raises(SetupError, match="db upgrade"):
        await SqlStore.open(database_url)


async def test_append_tiles_root_and_checkpoint(database_url: str) -> None:
    store = await open_store(database_url)
    try:
        info = await store.create_set("test", ORIGIN, "clear", "a test set")
        assert info.size == 0 and info.root == merkle.EMPTY_ROOT
        with pytest.raises(Conflict):
            await store.create_set("test", ORIGIN + "2", "clear", "")
        with pytest.raises(NotFound):
            await store.get_set("nope")

        prepared = [PreparedRecord.of(make_entry()) for _ in range(600)]
        # several appends of awkward sizes, crossing tile boundaries
        results = []
        for lo, hi in [(0, 1), (1, 255), (255, 257), (257, 600)]:
            results += await store.append("test", prepared[lo:hi])
        assert [r.index for r in results] == list(range(600))
        assert all(r.status == "appended" for r in results)

        info = await store.get_set("test")
        leaves = [p.leaf_hash for p in prepared]
        assert info.size == 600
        assert info.root == merkle.root_from_leaf_hashes(leaves)

        # every tile at this size is stored and matches a from-scratch computation
        refs = tlog.tiles_for_size(600)
        got = await store.read_tiles(info.id, refs)
        assert got == tlog.update_tiles(0, {}, leaves)
        # entry bundles come back byte-exact; full ones are stored whole by the append that
        # completed them (even when the block spanned several appends)
        assert await store.read_entries(info.id, 256, 256) == [p.data for p in prepared[256:512]]
        for n in (0, 1):
            block = [p.data for p in prepared[n * 256 : (n + 1) * 256]]
            assert await store.read_bundle(info.id, n) == tlog.encode_entry_bundle(block)
        assert await store.read_bundle(info.id, 2) is None  # partial: built on demand
        await _check_leaf_bytes_stored_once(store, info.id, prepared)

        signer = Signer.generate(ORIGIN)

        def sign(origin: str, size: int, root: bytes) -> bytes:
            return sign_checkpoint(Checkpoint(origin, size, root), signer)

        note = await store.store_checkpoint("test", sign)
        assert note is not None
        cp = verify_checkpoint(note, signer.verifier())
        assert (cp.size, cp.root_hash) == (600, info.root)
        assert await store.store_checkpoint("test", sign) is None  # nothing new to sign
        assert await store.checkpoint_at(info.id, 600) == note
    finally:
        await store.close()


async def test_duplicates_and_revocations(database_url: str) -> None:
    store = await open_store(database_url)
    try:
        info = await store.create_set("s", ORIGIN, "green", "")
        a, b = make_entry(), make_entry()
        res = await store.append("s", [PreparedRecord.of(a), PreparedRecord.of(b)])
        assert [r.index for r in res] == [0, 1]

        # re-publishing the same hash (new record id) is a no-op, also within one call
        again = make_entry(a.hash.value)
        c = make_entry()
        c_again = make_entry(c.hash.value)
        res = await store.append(
            "s", [PreparedRecord.of(again), PreparedRecord.of(c), PreparedRecord.of(c_again)]
        )
        assert [(r.status, r.index) for r in res] == [
            ("duplicate", 0), ("appended", 2), ("duplicate", 2)]
        # a duplicate names the stored entry, not the refused copy
        assert [r.record_id for r in res] == [a.id, c.id, c.id]

        # revoke a; the view says so; a second revocation conflicts and stores nothing
        res = await store.append("s", [make_revocation(a)])
        assert res[0].index == 3
        found = await store.find_entries(hash_key("sha256", a.hash.value))
        assert [(f.index, f.revoked_by) for f in found] == [(0, 3)]
        size_before = (await store.get_set("s")).size
        with pytest.raises(Conflict, match="already revoked"):
            await store.append("s", [PreparedRecord.of(make_entry()), make_revocation(a)])
        with pytest.raises(Conflict, match="no entry"):
            await store.append("s", [make_revocation(make_entry())])
        wrong_hash = make_revocation(b, target_hash={"type": "sha256", "value": "0" * 64})
        with pytest.raises(Conflict, match="different hash"):
            await store.append("s", [wrong_hash])
        assert (await store.get_set("s")).size == size_before

        # once revoked, the same hash may be published again as a new entry
        res = await store.append("s", [PreparedRecord.of(make_entry(a.hash.value))])
        assert res[0].status == "appended"

        # entry and its revocation in one call
        d = make_entry()
        res = await store.append("s", [PreparedRecord.of(d), make_revocation(d)])
        assert [r.status for r in res] == ["appended", "appended"]
        (stored,) = await store.find_entries(hash_key("sha256", d.hash.value))
        assert stored.revoked_by == res[1].index
        rec = decode_record(stored.data)
        assert rec == d
        counts = await store.count_records(info.id)
        assert counts["entry"] == 5 and counts["revocation"] == 2 and counts["active"] == 3
    finally:
        await store.close()


async def test_concurrent_writers_never_share_an_index(database_url: str) -> None:
    """Two stores on one database stand for two node processes sequencing the same set."""
    first = await open_store(database_url)
    second = await SqlStore.open(database_url)
    try:
        await first.create_set("s", ORIGIN, "clear", "")
        batches = [[PreparedRecord.of(make_entry()) for _ in range(20)] for _ in range(10)]

        async def write(store: SqlStore, batch: list[PreparedRecord]) -> None:
            await store.append("s", batch)

        await asyncio.gather(
            *(write(first if i % 2 else second, b) for i, b in enumerate(batches))
        )
        info = await first.get_set("s")
        assert info.size == 200
        data = await first.read_entries(info.id, 0, 200)
        assert len(data) == 200
        leaves = [merkle.leaf_hash(d) for d in data]
        assert info.root == merkle.root_from_leaf_hashes(leaves)
        assert sorted(data) == sorted(p.data for b in batches for p in b)
    finally:
        await first.close()
        await second.close()


async def test_mirror_appends_exact_leaves_and_adopts_checkpoints(database_url: str) -> None:
    from protocol.errors import VerificationError

    store = await open_store(database_url)
    try:
        await store.create_mirror(
            "partner.example:csam", "partner.example/csam", remote_url="http://127.0.0.1:1",
            remote_org="partner.example", remote_set="csam", tlp="green",
        )
        # mirrors are invisible to everything that lists or serves local sets
        assert await store.list_sets() == []
        with pytest.raises(NotFound):
            await store.get_set("partner.example:csam")

        a, b = make_entry(), make_entry()
        dup = make_entry(a.hash.value)  # a partner's log may hold what we would call duplicates
        items = [PreparedRecord.of(a), PreparedRecord.of(b), PreparedRecord.of(dup)]
        info = await store.append_mirror("partner.example:csam", 0, [MirrorLeaves.of(0, items)])
        assert info.size == 3 and info.checkpoint is None
        with pytest.raises(Conflict):  # someone else advanced it: the cursor is the size
            await store.append_mirror("partner.example:csam", 0, [MirrorLeaves.of(0, items)])

        rev = make_revocation(a)
        leaves = [it.leaf_hash for it in items] + [rev.leaf_hash]
        root = merkle.root_from_leaf_hashes(leaves)
        with pytest.raises(VerificationError):  # wrong root: nothing adopted, nothing stored
            await store.append_mirror("partner.example:csam", 3, [MirrorLeaves.of(3, [rev])],
                                      checkpoint=(b"note", 4, b"\0" * 32))
        assert (await store.get_set("partner.example:csam", kind="mirror")).size == 3
        info = await store.append_mirror("partner.example:csam", 3, [MirrorLeaves.of(3, [rev])],
                                         checkpoint=(b"note", 4, root))
        assert (info.size, info.checkpoint, info.checkpoint_size, info.root) == (
            4, b"note", 4, root)
        found = await store.find_entries(hash_key("sha256", a.hash.value))
        assert sorted((f.index, f.revoked_by) for f in found) == [(0, 3), (2, None)]
        with pytest.raises(VerificationError, match="not an active entry"):
            await store.append_mirror(
                "partner.example:csam", 4, [MirrorLeaves.of(4, [make_revocation(a)])]
            )
    finally:
        await store.close()


async def test_sqlite_checkpoints_run_after_the_commit_and_keep_the_wal_small(
    tmp_path: Any,
) -> None:
    """The writer commits WAL frames only; a large transaction's frames are then copied into the
    database file on the checkpoint thread, and the next write starts the WAL over, cut back to
    its size limit. Everything stays readable, and after a reopen too."""
    from node.storage import sql as sql_module

    url = f"sqlite+aiosqlite:///{tmp_path}/node.db"
    db, wal = tmp_path / "node.db", tmp_path / "node.db-wal"
    store = await open_store(url)
    prepared = [PreparedRecord.of(make_entry()) for _ in range(12_000)]
    try:
        await store.create_set("s", ORIGIN, "clear", "")
        await store.append("s", prepared)  # ~15 MB of WAL frames
        checkpointer = store._checkpointer
        assert checkpointer is not None and checkpointer._running is not None
        await checkpointer.wait()
        assert db.stat().st_size > 8 << 20  # the pages are in the database file now
        assert wal.stat().st_size > sql_module._WAL_CHECKPOINT_BYTES  # not yet reset
        await store.append("s", [PreparedRecord.of(make_entry())])  # a small write
        assert checkpointer._running is None  # a small WAL is left for later
        assert wal.stat().st_size <= sql_module._WAL_CHECKPOINT_BYTES  # reset, cut back
    finally:
        await store.close()
    store = await SqlStore.open(url)
    try:
        info = await store.get_set("s")
        assert info.size == 12_001
        got = await store.read_entries(info.id, 0, 12_000)
        assert got == [p.data for p in prepared]
    finally:
        await store.close()


async def test_sqlite_new_database_has_16k_pages_and_an_old_one_keeps_its_own(
    tmp_path: Any,
) -> None:
    """A database created by this hashfed uses 16 KiB pages; a file created with 4 KiB pages by an
    earlier one opens, migrates and works unchanged (page_size cannot change without a VACUUM)."""
    import sqlite3

    from node.storage import sql as sql_module

    store = await open_store(f"sqlite+aiosqlite:///{tmp_path}/new.db")
    await store.close()
    with sqlite3.connect(tmp_path / "new.db") as con:
        assert con.execute("PRAGMA page_size").fetchone() == (sql_module.SQLITE_PAGE_SIZE,)

    with sqlite3.connect(tmp_path / "old.db") as con:  # what an earlier hashfed left behind
        con.execute("PRAGMA page_size=4096")
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE placeholder (x)")
        con.execute("DROP TABLE placeholder")
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path}/old.db")
    try:
        await store.create_set("s", ORIGIN, "clear", "")
        entry = PreparedRecord.of(make_entry())
        await store.append("s", [entry])
        info = await store.get_set("s")
        assert await store.read_entries(info.id, 0, 1) == [entry.data]
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "old.db") as con:
        assert con.execute("PRAGMA page_size").fetchone() == (4096,)


async def test_mirror_append_stores_given_whole_blocks_as_they_are(tmp_path: Any) -> None:
    """MirrorLeaves with a bundle: a whole block's bundle bytes and subtree hash, as a sync
    fetched and verified them, are stored and used instead of being encoded and hashed again;
    the result is the same database as without them, and partial blocks are unaffected."""

    def whole(start: int, items: list[PreparedRecord], bundle: bytes | None = None,
              root: bytes | None = None) -> MirrorLeaves:
        run = MirrorLeaves.of(start, items)
        return MirrorLeaves(
            start, [(*r[:4], None) for r in run.rows], run.hashes, run.records,
            tlog.encode_entry_bundle([p.data for p in items]) if bundle is None else bundle,
            merkle.root_from_leaf_hashes([p.leaf_hash for p in items]) if root is None else root,
        )

    prepared = [PreparedRecord.of(make_entry()) for _ in range(600)]
    leaves = [p.leaf_hash for p in prepared]
    states = []
    for name, given in (("plain", False), ("given", True)):
        store = await open_store(f"sqlite+aiosqlite:///{tmp_path}/{name}.db")
        try:
            await store.create_mirror(
                "p:s", "p.example/s", remote_url="http://127.0.0.1:1", remote_org="p.example",
                remote_set="s", tlp="clear",
            )
            await store.append_mirror("p:s", 0, [MirrorLeaves.of(0, prepared[:100])])
            # block 0 completes here but began earlier, block 1 is whole, block 2 stays partial
            runs = (
                [MirrorLeaves.of(100, prepared[100:256]), whole(256, prepared[256:512]),
                 MirrorLeaves.of(512, prepared[512:])]
                if given else [MirrorLeaves.of(100, prepared[100:])]
            )
            info = await store.append_mirror("p:s", 100, runs)
            assert info.root == merkle.root_from_leaf_hashes(leaves)
            got = await store.read_entries(info.id, 0, 600)
            assert got == [p.data for p in prepared]
            states.append((
                await store.read_tiles(info.id, tlog.tiles_for_size(600)),
                [await store.read_bundle(info.id, n) for n in range(2)],
            ))
        finally:
            await store.close()
    assert states[0] == states[1]

    # They are really what is stored (unchecked: the sync vouches for them, having verified them)
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path}/marked.db")
    try:
        await store.create_mirror(
            "p:s", "p.example/s", remote_url="http://127.0.0.1:1", remote_org="p.example",
            remote_set="s", tlp="clear",
        )
        marker = tlog.encode_entry_bundle([b"given"] * 256)
        info = await store.append_mirror(
            "p:s", 0, [whole(0, prepared[:256], marker, b"\1" * 32)]
        )
        assert await store.read_bundle(info.id, 0) == marker
        assert (await store.read_tiles(info.id, [TileRef(1, 0, 1)]))[TileRef(1, 0, 1)] == b"\1" * 32
        with pytest.raises(ValueError, match="do not follow"):  # runs must be consecutive
            await store.append_mirror("p:s", 256, [MirrorLeaves.of(300, prepared[:1])])
        with pytest.raises(ValueError, match="whole aligned block"):
            MirrorLeaves(1, [], b"", [], marker, b"\1" * 32)
    finally:
        await store.close()


# -- a cancelled caller never cuts a write transaction in half ------------------------------------


@shielded_write
async def _held_write(
    store: SqlStore, name: str, entered: asyncio.Event, release: asyncio.Event
) -> None:
    """A write transaction that waits for ``release`` after its first statement."""
    async with store._write_tx() as conn:
        await conn.execute(
            sets.insert().values(
                name=name, origin=f"{ORIGIN}/{name}", tlp="clear", description="",
                created="2026-01-01T00:00:00Z", size=0, root=merkle.EMPTY_ROOT,
                checkpoint=None, checkpoint_size=0,
            )
        )  # fmt: skip
        entered.set()
        await release.wait()


async def test_a_cancelled_caller_leaves_its_write_to_end_and_close_waits_for_it(
    database_url: str,
) -> None:
    store = await open_store(database_url)
    closed = False
    try:
        entered, release = asyncio.Event(), asyncio.Event()
        caller = asyncio.create_task(_held_write(store, "a", entered, release))
        await asyncio.wait_for(entered.wait(), 10)
        caller.cancel()  # mid-transaction: the caller stops, the transaction does not
        with pytest.raises(asyncio.CancelledError):
            await caller
        release.set()
        await asyncio.wait_for(store.writes.drain(), 10)
        assert (await store.get_set("a")).name == "a"  # committed, not cut and rolled back
        # the write lock is free again at once (it was held for the busy timeout, 30 s)
        await asyncio.wait_for(store.create_set("b", ORIGIN + "/b", "clear", ""), 5)

        entered, release = asyncio.Event(), asyncio.Event()
        caller = asyncio.create_task(_held_write(store, "c", entered, release))
        await asyncio.wait_for(entered.wait(), 10)
        caller.cancel()
        closing = asyncio.create_task(store.close())
        await asyncio.sleep(0.1)
        assert not closing.done(), "close() did not wait for the write under way"
        release.set()
        await asyncio.wait_for(closing, 10)
        closed = True
    finally:
        if not closed:
            await store.close()
    store = await SqlStore.open(database_url)
    try:
        assert (await store.get_set("c")).name == "c"
    finally:
        await store.close()


def test_every_write_transaction_is_a_shielded_write() -> None:
    """Every function that opens ``_write_tx`` carries ``@shielded_write`` (see its docstring)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "node"
    found, missing = [], []
    for path in sorted(root.rglob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.AsyncFunctionDef) or fn.name == "_write_tx":
                continue
            uses = (n for n in ast.walk(fn) if isinstance(n, ast.Attribute))
            if not any(n.attr == "_write_tx" for n in uses):
                continue
            names = {d.id for d in fn.decorator_list if isinstance(d, ast.Name)}
            found.append(fn.name)
            if "shielded_write" not in names:
                missing.append(f"{path.relative_to(root.parent)}: {fn.name}")
    assert len(found) >= 20  # the check sees the store's writers
    assert missing == []
