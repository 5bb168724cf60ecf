"""``hashfed witness ...``: run a witness, choose the logs it witnesses, the witnesses a node uses,
and the witness quorum a subscriber requires.

Wired into ``node/cli.py`` with :func:`register`. Errors are raised; ``node.cli.main`` prints them.

    hashfed witness init     --data DIR [--name NAME]      create DIR/witness.key (0600)
    hashfed witness vkey     --data DIR                    print the witness's cosignature vkey
    hashfed witness          --data DIR [--listen H:P]     run a standalone witness
    hashfed witness add-log  --data DIR --origin O --vkey V
    hashfed witness logs     --data DIR [--json]
    hashfed witness use      --data DIR --url URL --vkey WITNESS_VKEY
    hashfed witness require  --data DIR [--set MIRROR] --witness VKEY ... --quorum K
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from node.cli_common import Command, add_command
from node.config import load_config, parse_listen
from node.storage.sql import SqlStore
from node.witness import (
    ALL_MIRRORS,
    WitnessStore,
    create_witness_key,
    require_witness_key,
    serve_witness,
)

__all__ = ["register"]


@contextlib.asynccontextmanager
async def _witness_store(data: Path) -> AsyncIterator[WitnessStore]:
    store = await SqlStore.open(load_config(data).database_url)
    try:
        yield WitnessStore(store)
    finally:
        await store.close()


async def cmd_witness(args: argparse.Namespace) -> int:
    cfg = load_config(args.data)
    listen = args.listen or cfg.listen
    parse_listen(listen)
    require_witness_key(cfg)
    task = asyncio.create_task(serve_witness(cfg, listen))
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, task.cancel)
            handled.append(sig)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
    return 0


async def cmd_init(args: argparse.Namespace) -> int:
    cfg = load_config(args.data)
    signer = create_witness_key(cfg, args.name)
    print(f"created the witness key {args.data / 'witness.key'} (mode 0600)")
    print(f"  vkey: {signer.verifier().vkey()}")
    print("next: hashfed witness add-log --origin ORIGIN --vkey LOG_VKEY --data DIR")
    return 0


async def cmd_vkey(args: argparse.Namespace) -> int:
    print(require_witness_key(load_config(args.data)).verifier().vkey())
    return 0


async def cmd_add_log(args: argparse.Namespace) -> int:
    async with _witness_store(args.data) as ws:
        await ws.add_log(args.origin, args.vkey)
    print(f"witnessing {args.origin}")
    return 0


async def cmd_logs(args: argparse.Namespace) -> int:
    async with _witness_store(args.data) as ws:
        rows = await ws.list_logs()
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no witnessed logs (hashfed witness add-log --origin O --vkey V)")
    for row in [] if args.json else rows:
        print(f"{row['origin']}  cosigned size {row['size']}  {row['vkey']}")
    return 0


async def cmd_use(args: argparse.Namespace) -> int:
    async with _witness_store(args.data) as ws:
        peer = await ws.use(args.url, args.vkey)
    print(f"checkpoints will be sent to witness {peer.name} at {peer.url}")
    return 0


async def cmd_require(args: argparse.Namespace) -> int:
    async with _witness_store(args.data) as ws:
        policy = await ws.require(args.set, args.witness or [], args.quorum)
    which = "every mirror" if policy.set_name == ALL_MIRRORS else f"mirror {policy.set_name}"
    if not policy.witnesses:
        print(f"{which}: no witness quorum required")
    else:
        names = ", ".join(w.name for w in policy.witnesses)
        print(f"{which}: {policy.quorum} of {len(policy.witnesses)} witnesses ({names})")
    return 0


def register(sub: Any) -> None:
    """Add ``hashfed witness`` and its subcommands to ``hashfed``'s subparsers."""
    witness: argparse.ArgumentParser = sub.add_parser(
        "witness",
        help="run a tlog witness, or configure witnessing",
        description="Without a subcommand: run a standalone witness (c2sp.org/tlog-witness).",
    )
    witness.add_argument(
        "--data", metavar="DIR", type=Path, default=None,
        help="the node's data directory (default: $HASHFED_DATA)",
    )
    witness.add_argument("--listen", metavar="HOST:PORT", help="default: the configured address")
    witness.set_defaults(func=cmd_witness, needs_data=True)
    commands = witness.add_subparsers(dest="witness_command", metavar="COMMAND")

    def command(name: str, func: Command, help: str) -> argparse.ArgumentParser:
        # SUPPRESS: a default here would overwrite a --data given before the subcommand.
        return add_command(commands, name, func, help, data_default=argparse.SUPPRESS)

    p = command("init", cmd_init, "create this node's witness key (DIR/witness.key)")
    p.add_argument("--name", help="the witness's key name (default: <origin>/witness)")
    command("vkey", cmd_vkey, "print the witness's cosignature verifier key")
    p = command("add-log", cmd_add_log, "witness a log: its origin and its signing vkey")
    p.add_argument("--origin", required=True)
    p.add_argument("--vkey", required=True, metavar="VKEY")
    p = command("logs", cmd_logs, "list the witnessed logs and their cosigned sizes")
    p.add_argument("--json", action="store_true")
    p = command("use", cmd_use, "send this node's checkpoints to a witness for cosigning")
    p.add_argument("--url", required=True, help="the witness's submission prefix (base URL)")
    p.add_argument("--vkey", required=True, metavar="WITNESS_VKEY")
    p = command(
        "require", cmd_require,
        "require a quorum of witness cosignatures on a subscription's checkpoints",
    )
    p.add_argument(
        "--set", default=ALL_MIRRORS, metavar="MIRROR",
        help="the mirror (<org>:<set>); default: every mirror",
    )
    p.add_argument(
        "--witness", action="append", metavar="VKEY",
        help="a witness's cosignature vkey (repeatable; none: drop the requirement)",
    )
    p.add_argument("--quorum", type=int, required=True, metavar="K")
