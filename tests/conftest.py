"""Shared pytest fixtures: a database URL for each storage backend, and free loopback ports.

``database_url`` runs a test once on SQLite and once on PostgreSQL. The PostgreSQL variant needs a
server named by ``HASHFED_TEST_POSTGRES_URL`` (``scripts/test`` starts a throwaway one and sets it);
every test gets its own freshly created database, dropped afterwards, so tests never see each
other's rows. Without the variable the PostgreSQL variant is skipped locally but fails under
``CI=true``: a CI run that silently tested only SQLite would be a false green.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Every property test runs without a per-example deadline and without the "generation is too
# slow" health check. Both time single examples on the wall clock, and CI runs on shared,
# noisy machines: a GC pause or a busy neighbour must not fail a test whose property held.
# Tests that set their own settings inherit this profile for whatever they leave out.
settings.register_profile("hashfed", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("hashfed")

POSTGRES_URL_ENV = "HASHFED_TEST_POSTGRES_URL"
DATABASE_BACKENDS = ("sqlite", "postgresql")


def in_ci() -> bool:
    """True when running under CI, where a missing service is a failure rather than a skip."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


# Locally each run draws new examples, to find what earlier runs missed. Under CI they derive from
# each test (derandomize): a main that was green stays green, and a failure found there repeats on
# the next run instead of passing as a "flake".
settings.register_profile("hashfed-ci", parent=settings.get_profile("hashfed"), derandomize=True)
if in_ci():
    settings.load_profile("hashfed-ci")


def pytest_configure(config: pytest.Config) -> None:
    # Registered here, next to the fixture that applies them, so that --strict-markers accepts them
    # and `-m "not postgresql"` selects the SQLite variants only.
    config.addinivalue_line("markers", "sqlite: test variant running against SQLite")
    config.addinivalue_line("markers", "postgresql: test variant running against PostgreSQL")


def _postgres_server_url() -> str:
    """The server URL from the environment; skip (locally) or fail (in CI) when it is missing."""
    url = os.environ.get(POSTGRES_URL_ENV, "").strip()
    if url:
        return url
    reason = (
        f"{POSTGRES_URL_ENV} is not set, so there is no PostgreSQL server to test against; "
        "run scripts/test (it starts one) or point the variable at a server"
    )
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@asynccontextmanager
async def _fresh_postgres_database(server_url: str) -> AsyncIterator[str]:
    # asyncpg and SQLAlchemy are imported here, not at module level, so that protocol-only test
    # runs work without the node extras installed.
    import asyncpg
    from sqlalchemy.engine import make_url

    server = make_url(server_url)
    # Accept postgres://, postgresql:// and postgresql+<driver>://; the node uses asyncpg.
    if not server.drivername.startswith("postgres"):
        raise pytest.UsageError(f"{POSTGRES_URL_ENV} is not a PostgreSQL URL: {server_url!r}")
    server = server.set(drivername="postgresql+asyncpg")
    connect_args = {
        "host": server.host or "127.0.0.1",
        "port": server.port or 5432,
        "user": server.username or "postgres",
        "password": server.password,
        # The maintenance database: CREATE/DROP DATABASE cannot run inside the target itself.
        "database": "postgres",
    }
    name = f"hashfed_t_{uuid.uuid4().hex[:16]}"

    admin = await asyncpg.connect(**connect_args)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        admin = await asyncpg.connect(**connect_args)
        try:
            # FORCE (PostgreSQL 13+) ends connections a failed test left open, which would
            # otherwise make DROP DATABASE fail and hide the test's own error.
            force = " WITH (FORCE)" if admin.get_server_version().major >= 13 else ""
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}"{force}')
        finally:
            await admin.close()


@pytest.fixture(
    params=[
        pytest.param(backend, marks=getattr(pytest.mark, backend), id=backend)
        for backend in DATABASE_BACKENDS
    ]
)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """SQLAlchemy async URL of an empty database, once per backend (sqlite, postgresql).

    Override the backends for one test with
    ``@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)``.
    """
    backend = request.param
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/node.db"
    elif backend == "postgresql":
        async with _fresh_postgres_database(_postgres_server_url()) as url:
            yield url
    else:
        raise pytest.UsageError(f"unknown database backend {backend!r}; use {DATABASE_BACKENDS}")


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, for servers started by a test.

    The port is released before the test binds it, so another process could take it in between;
    on a test machine that is rare enough, and binding port 0 in the server is better where the
    code under test allows it.
    """
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports on 127.0.0.1 that were free a moment ago (see ``free_port``).

    All n sockets stay bound until every port is chosen, so the ports differ. Never use a free
    port plus one instead: Linux hands out odd ports for port 0 and even ones to outgoing
    connections, so the port next to a free one is where client sockets (and their TIME_WAIT)
    sit, and binding it fails now and then.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
    return ports
