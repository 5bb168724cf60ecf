"""Schema management through Alembic: the only code that creates or changes tables.

Opening a store only compares the database's revision with :data:`HEAD_REVISION`, without
importing Alembic (which adds a few hundred milliseconds to every ``hashfed`` command) or
loading its scripts; Alembic itself runs only to upgrade or downgrade. tests/test_migrations.py
checks that HEAD_REVISION is Alembic's own head.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from alembic.config import Config

_MIGRATIONS = Path(__file__).parent / "migrations"

#: the newest revision under migrations/versions: raise it with every new revision
HEAD_REVISION = "0007"


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    return HEAD_REVISION


def scripts_head() -> str:
    """The head revision as Alembic computes it from the scripts (for the test and tools)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    """The database's revision (Alembic's ``alembic_version`` row); None for a database that
    was never migrated."""

    def read(conn: Connection) -> str | None:
        if not inspect(conn).has_table("alembic_version"):
            return None
        rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        if len(rows) > 1:  # Alembic branches: hashfed's history is one line
            raise RuntimeError(f"the database has several schema heads: {rows}")
        return str(rows[0][0]) if rows else None

    async with engine.connect() as conn:
        return await conn.run_sync(read)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (default: newest); idempotent, one transaction."""
    from alembic import command

    def run(conn: Connection) -> None:
        command.upgrade(_config(conn), revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Take the schema back to ``revision`` (to run an older hashfed), one transaction."""
    from alembic import command

    def run(conn: Connection) -> None:
        command.downgrade(_config(conn), revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)
