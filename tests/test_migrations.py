"""Alembic migrations: each upgrade keeps existing data, and the schema matches schema.py."""

from __future__ import annotations

from sqlalchemy import inspect, text

from node.storage import migrate
from node.storage.schema import metadata
from node.storage.sql import SqlStore


async def test_upgrade_from_first_revision_keeps_data(database_url: str) -> None:
    store = SqlStore.engines(database_url)
    try:
        await migrate.upgrade(store._write, "0001")
        assert await migrate.current_revision(store._write) == "0001"
        async with store._write.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO sets (name, origin, description, tlp, created, size, root,"
                    " checkpoint_size) VALUES ('old', 'n.example/old', '', 'clear',"
                    " '2026-01-01T00:00:00Z', 0, :root, 0)"
                ),
                {"root": b"\0" * 32},
            )
            # a record referencing the set: a table-copy migration of `sets` would fail on it
            await conn.execute(
                text(
                    "INSERT INTO records (set_id, idx, record_id, kind, hash_key, data)"
                    " VALUES (1, 0, :rid, 'entry', NULL, :data)"
                ),
                {"rid": "0" * 32, "data": b"{}"},
            )
        await migrate.upgrade(store._write)
        assert await migrate.current_revision(store._write) == migrate.head_revision()
        await migrate.upgrade(store._write)  # idempotent
    finally:
        await store.close()
    store = await SqlStore.open(database_url)
    try:
        (info,) = await store.list_sets()
        assert info.name == "old"
        async with store._read.connect() as conn:
            kind = (await conn.execute(text("SELECT kind FROM sets"))).scalar_one()
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert kind == "local"
        assert set(metadata.tables) <= tables
    finally:
        await store.close()


async def test_0005_writes_the_bundles_of_existing_sets(database_url: str) -> None:
    from protocol.tiles import encode_entry_bundle

    store = SqlStore.engines(database_url)
    try:
        await migrate.upgrade(store._write, "0004")
        leaves = [f'{{"n":{i}}}'.encode() for i in range(300)]
        async with store._write.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO sets (name, origin, description, tlp, created, size, root,"
                    " checkpoint_size) VALUES ('old', 'n.example/old', '', 'clear',"
                    " '2026-01-01T00:00:00Z', 300, :root, 0)"
                ),
                {"root": b"\0" * 32},
            )
            for i, leaf in enumerate(leaves):
                await conn.execute(
                    text(
                        "INSERT INTO records (set_id, idx, record_id, kind, hash_key, data)"
                        " VALUES (1, :i, :rid, 'entry', NULL, :data)"
                    ),
                    {"i": i, "rid": f"{i:032x}", "data": leaf},
                )
        await migrate.upgrade(store._write)
    finally:
        await store.close()
    store = await SqlStore.open(database_url)
    try:
        assert await store.read_bundle(1, 0) == encode_entry_bundle(leaves[:256])
        assert await store.read_bundle(1, 1) is None  # partial: not stored
    finally:
        await store.close()


async def test_0006_keeps_old_rows_and_its_downgrade_restores_cleared_bytes(
    database_url: str,
) -> None:
    """Rows written before 0006 keep their bytes; rows cleared after it get them back from
    their bundles on a downgrade, before NOT NULL returns."""
    from test_storage import make_entry

    from node.storage import PreparedRecord

    store = SqlStore.engines(database_url)
    await migrate.upgrade(store._write)
    await store.close()
    store = await SqlStore.open(database_url)
    prepared = [PreparedRecord.of(make_entry()) for _ in range(300)]
    try:
        info = await store.create_set("s", "n.example/s", "clear", "")
        await store.append("s", prepared)
    finally:
        await store.close()
    store = SqlStore.engines(database_url)
    try:
        await migrate.downgrade(store._write, "0005")
        async with store._read.connect() as conn:
            rows = (
                await conn.execute(
                    text("SELECT data FROM records WHERE set_id = :s ORDER BY idx"),
                    {"s": info.id},
                )
            ).scalars().all()
        assert [bytes(d) for d in rows] == [p.data for p in prepared]
        await migrate.upgrade(store._write)
    finally:
        await store.close()


async def test_0007_adds_the_evidence_path_and_its_downgrade_drops_it(database_url: str) -> None:
    """Rows kept before 0007 read back with no path (they prove what their notes prove); the
    downgrade drops the column and keeps the rows."""
    store = SqlStore.engines(database_url)
    try:
        await migrate.upgrade(store._write, "0006")
        async with store._write.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO evidence (origin, kind, detail, note_a, note_b, created)"
                    " VALUES ('o.example/s', 'fork', 'old row', :a, :b, '2026-01-01T00:00:00Z')"
                ),
                {"a": b"a", "b": b"b"},
            )
        await migrate.upgrade(store._write)
    finally:
        await store.close()
    store = await SqlStore.open(database_url)
    try:
        await store.add_evidence("o.example/s", "fork", "new row", b"a", b"c", (b"\1" * 32,))
        rows = await store.list_evidence()
        assert [(r["detail"], r["path"]) for r in rows] == [
            ("old row", None), ("new row", b"\1" * 32)
        ]
        await migrate.downgrade(store._write, "0006")
        async with store._read.connect() as conn:
            columns = await conn.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns("evidence")}
            )
            count = (await conn.execute(text("SELECT count(*) FROM evidence"))).scalar_one()
        assert "path" not in columns and count == 2
    finally:
        await store.close()


def test_head_revision_is_alembics_and_opening_a_store_does_not_import_alembic() -> None:
    """HEAD_REVISION (what SqlStore.open compares with) is the head of the scripts; and the
    node's store, service and CLI modules import without Alembic (a few hundred ms per command)."""
    import subprocess
    import sys
    from pathlib import Path

    assert migrate.head_revision() == migrate.scripts_head()
    code = ("import sys, node.cli, node.service, node.storage.sql; "
            "sys.exit(1 if any(m.startswith('alembic') for m in sys.modules) else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr or "alembic was imported"


async def test_0007_marks_same_size_forks_kept_before_it_as_proofs(database_url: str) -> None:
    """A fork kept before 0007 as two notes of one size with two roots is a proof on its own:
    the upgrade gives it an empty path; a pair of other sizes stays without one."""
    from protocol.checkpoint import Checkpoint, sign_checkpoint
    from protocol.note import Signer

    signer = Signer.generate("o.example/s")
    same = [sign_checkpoint(Checkpoint("o.example/s", 5, bytes([i]) * 32), signer)
            for i in range(2)]
    sizes = [sign_checkpoint(Checkpoint("o.example/s", n, bytes([n]) * 32), signer)
             for n in (3, 5)]
    store = SqlStore.engines(database_url)
    try:
        await migrate.upgrade(store._write, "0006")
        async with store._write.begin() as conn:
            for detail, (a, b) in (("one size", same), ("two sizes", sizes)):
                await conn.execute(
                    text(
                        "INSERT INTO evidence (origin, kind, detail, note_a, note_b, created)"
                        " VALUES ('o.example/s', 'fork', :d, :a, :b, '2026-01-01T00:00:00Z')"
                    ),
                    {"d": detail, "a": a, "b": b},
                )
        await migrate.upgrade(store._write)
    finally:
        await store.close()
    store = await SqlStore.open(database_url)
    try:
        rows = await store.list_evidence()
        assert [(r["detail"], r["path"]) for r in rows] == [("one size", b""), ("two sizes", None)]
    finally:
        await store.close()
