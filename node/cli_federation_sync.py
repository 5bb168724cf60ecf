"""``hashfed subscribe``, ``hashfed sync`` and ``hashfed subscriptions``: following partners' sets.

Wired into ``node/cli.py`` with :func:`register`. Errors are raised, not printed: ``node.cli.main``
is the one place that turns them into output, except in ``sync``, which reports every mirror on
its own line (one failing partner must not hide the others) and exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from typing import Any

from pydantic import ValidationError

from node.cli_common import Command, add_command, open_service
from node.errors import BadRequest, NodeError
from node.federation.push import run_subscriptions
from node.federation.sync import list_subscriptions, subscribe, sync_once
from node.service import NodeService
from protocol.errors import ProtocolError

__all__ = ["cmd_subscribe", "cmd_subscriptions", "cmd_sync", "register"]




def _policy(args: argparse.Namespace) -> str | None:
    from node.federation.reshare import ResharePolicy

    given = (args.reshare_labels, args.reshare_min_reviews, args.reshare_confirmed_only,
             args.reshare_min_attestations)
    if any(given) and args.reshare_into is None:
        raise BadRequest("the --reshare-* policy options need --reshare-into")
    try:
        policy = ResharePolicy(
            labels=tuple(x.strip() for x in (args.reshare_labels or "").split(",") if x.strip()),
            min_reviews=args.reshare_min_reviews or 0,
            confirmed_only=bool(args.reshare_confirmed_only),
            min_attestations=args.reshare_min_attestations or 0,
        )
    except ValidationError as e:
        raise BadRequest(f"invalid re-share policy: {e.errors()[0]['msg']}") from e
    return policy.to_json()


async def cmd_subscribe(args: argparse.Namespace) -> int:
    policy = _policy(args)
    async with open_service(args.data) as service:
        info = await subscribe(
            service, args.url, args.set, vkey=args.vkey, reshare_into=args.reshare_into,
            reshare_policy=policy,
        )
    print(f"subscribed to {info.origin} as {info.name} (TLP:{info.tlp.upper()})")
    print(f"next: hashfed sync --once --data {args.data}")
    return 0


def _error_text(e: BaseException) -> str:
    text = e.diagnostics() if isinstance(e, ProtocolError) else str(e)
    return f"{type(e).__name__}: {text}"


async def cmd_sync(args: argparse.Namespace) -> int:
    async with open_service(args.data) as service:
        if not args.once:
            return await _follow(service)
        failed = 0
        mirrors = await service.store.list_sets(kind="mirror")
        if not mirrors:
            print("no subscriptions (hashfed subscribe --url URL --set NAME --vkey VKEY)")
        for info in mirrors:
            try:
                r = await sync_once(service, info.name)
            except (NodeError, ProtocolError) as e:
                failed += 1
                print(f"{info.name}: FAILED at size {info.size}: {_error_text(e)}")
                continue
            if r.appended:
                print(f"{r.mirror}: {r.before} -> {r.after} (+{r.appended} records)")
            else:
                print(f"{r.mirror}: up to date at {r.after}")
        return 1 if failed else 0


async def _follow(service: NodeService) -> int:
    """Follow every subscription (push + polling) until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        await run_subscriptions(service, stop)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
    return 0


async def cmd_subscriptions(args: argparse.Namespace) -> int:
    async with open_service(args.data) as service:
        rows: list[dict[str, Any]] = [
            {
                "name": s.info.name,
                "origin": s.info.origin,
                "url": s.info.remote_url,
                "tlp": s.info.tlp,
                "size": s.info.size,
                "checkpoint_size": s.info.checkpoint_size,
                "synced_at": s.synced_at,
                "error": s.sync_error,
            }
            for s in await list_subscriptions(service.store)
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no subscriptions")
    for row in rows:
        synced = row["synced_at"] or "never"
        print(f"{row['name']}  size {row['size']}  synced {synced}  {row['url']}")
        if row["error"]:
            print(f"    last error: {row['error']}")
    return 0


def register(sub: Any) -> None:
    """Add the three commands to ``hashfed``'s subparsers (``sub`` from add_subparsers)."""

    def command(name: str, func: Command, help: str) -> argparse.ArgumentParser:
        return add_command(sub, name, func, help)

    p = command("subscribe", cmd_subscribe, "follow a partner's set as a verified mirror")
    p.add_argument("--url", required=True, help="the partner node's base URL")
    p.add_argument("--set", required=True, metavar="NAME", help="the partner's set name")
    p.add_argument(
        "--vkey", metavar="VKEY",
        help="the partner's node vkey, obtained out of band (pinned); needed unless the "
        "partner is already pinned or a coordinator vouches for it",
    )
    p.add_argument(
        "--reshare-into", metavar="SET", default=None,
        help="republish new upstream entries into this local set",
    )
    p.add_argument(
        "--reshare-labels", metavar="L,L", default=None,
        help="re-share only entries with one of these labels ('ns:value' or 'ns:*')",
    )
    p.add_argument("--reshare-min-reviews", metavar="N", type=int, default=None,
                   help="re-share only entries with at least N independent reviews")
    p.add_argument("--reshare-confirmed-only", action="store_true",
                   help="re-share only entries whose vetting status is confirmed")
    p.add_argument(
        "--reshare-min-attestations", metavar="K", type=int, default=None,
        help="re-share only once K organisations other than the author attested the entry "
        "(agree or also_vetted); entries wait until then",
    )
    p = command("sync", cmd_sync, "bring every subscription up to its partner's checkpoint")
    p.add_argument(
        "--once", action="store_true",
        help="sync each subscription once, print a line each, exit 1 if any failed "
        "(default: follow them until interrupted)",
    )
    p = command("subscriptions", cmd_subscriptions, "list subscriptions and their sync state")
    p.add_argument("--json", action="store_true", help="JSON instead of text")
