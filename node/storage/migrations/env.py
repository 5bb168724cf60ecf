"""Alembic environment: runs on the connection that node.storage.migrate hands over."""

from __future__ import annotations

from alembic import context

from node.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - we never run alembic's own CLI against a URL
    raise RuntimeError("run migrations through 'hashfed db upgrade', not the alembic CLI")

context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
