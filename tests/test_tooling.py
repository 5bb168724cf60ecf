"""Tests of the test tooling itself: the database fixtures reach real databases, and CI never skips.

If these fail, every storage test's green is suspect, so they check the plumbing directly rather
than through the node's code.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

POSTGRES_URL_ENV = "HASHFED_TEST_POSTGRES_URL"
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.postgresql
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_postgres_database_url_connects(database_url: str) -> None:
    import asyncpg

    url = make_url(database_url)
    assert url.drivername == "postgresql+asyncpg"
    assert url.database is not None and url.database.startswith("hashfed_t_")
    conn = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(False))
    try:
        version = await conn.fetchval("SELECT version()")
        current = await conn.fetchval("SELECT current_database()")
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
    finally:
        await conn.close()
    assert isinstance(version, str) and version.startswith("PostgreSQL ")
    # Each test gets its own empty database, not the shared hashfed_test one.
    assert current == url.database
    assert tables == 0


async def test_database_url_works_with_sqlalchemy(database_url: str, tmp_path: Path) -> None:
    metadata = MetaData()
    scratch = Table(
        "tooling_scratch",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("value", String(32), nullable=False),
    )
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(insert(scratch), [{"value": "a"}, {"value": "b"}])
        async with engine.connect() as conn:
            count = await conn.scalar(select(func.count()).select_from(scratch))
    finally:
        await engine.dispose()
    assert count == 2

    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        # A real file inside this test's tmp_path, not an in-memory database.
        assert url.database is not None
        db_file = Path(url.database)
        assert db_file.parent == tmp_path
        assert db_file.is_file() and db_file.stat().st_size > 0


def test_free_port_is_bindable_on_loopback(free_port: int) -> None:
    assert 0 < free_port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", free_port))


def _run_postgres_test_without_server(*, ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {POSTGRES_URL_ENV, "CI"}}
    if ci is not None:
        env["CI"] = ci
    # Only pytest-asyncio is needed; not loading every installed plugin halves the start-up time.
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "pytest_asyncio.plugin",
            "-p",
            "no:cacheprovider",
            "-q",
            f"{Path(__file__).resolve()}::test_postgres_database_url_connects",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_missing_postgres_fails_in_ci() -> None:
    result = _run_postgres_test_without_server(ci="true")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert POSTGRES_URL_ENV in output
    assert "skipped" not in output.lower().split("==")[-1], output


def test_missing_postgres_skips_outside_ci() -> None:
    result = _run_postgres_test_without_server(ci=None)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1 skipped" in output, output
