"""What every `hashfed` command module shares: declaring a command, opening the node's service."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from node.config import load_config
from node.service import NodeService

Command = Callable[[argparse.Namespace], Awaitable[int]]


def add_command(
    sub: Any, name: str, func: Command, help: str, *, data_default: Any = None
) -> argparse.ArgumentParser:
    """A subcommand with ``--data DIR`` (falling back to $HASHFED_DATA in node.cli.main).

    ``data_default=argparse.SUPPRESS`` for a nested subcommand, so that a ``--data`` given before
    it is not overwritten.
    """
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
    p.add_argument(
        "--data", metavar="DIR", type=Path, default=data_default,
        help="the node's data directory (default: $HASHFED_DATA)",
    )
    p.set_defaults(func=func, needs_data=True)
    return p


@contextlib.asynccontextmanager
async def open_service(data: Path) -> AsyncIterator[NodeService]:
    """The node's service for one command; closing it signs a final checkpoint if it wrote."""
    service = await NodeService.open(load_config(data))
    try:
        yield service
    finally:
        await service.close()
