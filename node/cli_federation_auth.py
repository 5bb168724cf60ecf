"""`hashfed coordinator ...`, `hashfed trust ...` and `hashfed set grant ...`: who may call us.

* ``coordinator admit|suspend|rotate|remove|list`` keep this node's ``members`` set (created
  TLP:GREEN on first use). Each new record is checked by folding the existing log plus the record
  (protocol.membership rules) before it is appended; when a ``hashfed serve`` runs on the data
  directory the record goes through its operator endpoint ``POST /v1/members`` (the server owns
  the sequencer), otherwise straight through a local sequencer.
* ``trust coordinator|partner|list|remove`` write the ``trust`` table: coordinators whose
  ``members`` log this node follows, and partners pinned by key.
* ``set grant|revoke-grant|grants`` write ``set_grants``: which organisations may read an
  amber / amber+strict / red set.

Trust and grant rows are read by the server on every signed request, so these commands write the
database directly even while a server runs. :func:`register` adds the parsers to the ``hashfed``
parser; each ``func`` is an async function of the parsed arguments returning the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from node.config import NodeConfig, check_org, load_config, load_operator_token, running_server_url
from node.errors import BadRequest, NotFound, Unavailable
from node.federation.members import (
    MEMBERS_SET,
    Coordinator,
    Federation,
    member_json,
    members_mirror_name,
)
from node.service import NodeService
from node.storage.federation import FederationStore
from node.storage.sql import SqlStore
from protocol.note import Verifier
from protocol.records import parse_timestamp

__all__ = ["register"]

Command = Callable[[argparse.Namespace], Awaitable[int]]

_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_URL_RE = re.compile(r"https?://[^\s\x00-\x1f]{1,250}", re.ASCII)
#: seconds `trust coordinator` waits for the coordinator's /v1/node
_FETCH_TIMEOUT = 15.0


# -- helpers ------------------------------------------------------------------------------------


def _vkey(value: str) -> str:
    Verifier.from_vkey(value)  # FormatError (exit 1, with the reason) if it is not a vkey
    return value


def _url(value: str) -> str:
    if _URL_RE.fullmatch(value) is None:
        raise BadRequest(f"{value!r} is not an http(s) URL", field="url")
    return value.rstrip("/")


def _timestamp(value: str) -> str:
    """An RFC 3339 UTC timestamp, or a date (its midnight UTC)."""
    text = f"{value}T00:00:00Z" if _DATE_RE.fullmatch(value) else value
    parse_timestamp(text)  # FormatError when malformed
    return text


@contextlib.asynccontextmanager
async def _store(cfg: NodeConfig) -> AsyncIterator[SqlStore]:
    store = await SqlStore.open(cfg.database_url)
    try:
        yield store
    finally:
        await store.close()


async def _apply_membership(cfg: NodeConfig, body: dict[str, Any]) -> dict[str, Any]:
    """Append one membership record, through a running server if there is one."""
    url = running_server_url(cfg)
    if url is not None:
        from node.client import OperatorClient

        async with OperatorClient(url, load_operator_token(cfg)) as client:
            answer: dict[str, Any] = await client.post_json("/v1/members", body)
            return answer
    service = await NodeService.open(cfg)
    try:
        result, member = await Coordinator(service).apply_json(body)
    finally:
        await service.close()  # signs the checkpoint over what was appended
    return {"index": result.index, "record_id": result.record_id, "member": member_json(member)}


def _print_member(answer: dict[str, Any], verb: str) -> None:
    member = answer["member"]
    print(
        f"{verb} {member['org']} ({member['status']}; members record {answer['index']}); "
        f"current keys: {', '.join(member['vkeys']) or '(none)'}"
    )


# -- coordinator ----------------------------------------------------------------------------------


async def cmd_coordinator_admit(args: argparse.Namespace) -> int:
    cfg = load_config(args.data)
    body: dict[str, Any] = {
        "action": "admit",
        "member": check_org(args.org),
        "name": args.name or args.org,
        "node_url": _url(args.node_url),
        "vkeys": [_vkey(v) for v in args.vkey],
        "roles": [r.strip() for r in args.roles.split(",") if r.strip()],
    }
    if args.valid_from:
        body["valid_from"] = _timestamp(args.valid_from)
    if args.valid_until:
        body["valid_until"] = _timestamp(args.valid_until)
    if args.reason:
        body["reason"] = args.reason
    _print_member(await _apply_membership(cfg, body), "admitted")
    return 0


async def _simple(args: argparse.Namespace, action: str, verb: str) -> int:
    cfg = load_config(args.data)
    body: dict[str, Any] = {"action": action, "member": check_org(args.org)}
    if getattr(args, "vkey", None):
        body["vkeys"] = [_vkey(v) for v in args.vkey]
    if args.reason:
        body["reason"] = args.reason
    _print_member(await _apply_membership(cfg, body), verb)
    return 0


async def cmd_coordinator_suspend(args: argparse.Namespace) -> int:
    return await _simple(args, "suspend", "suspended")


async def cmd_coordinator_rotate(args: argparse.Namespace) -> int:
    return await _simple(args, "rotate", "rotated the keys of")


async def cmd_coordinator_remove(args: argparse.Namespace) -> int:
    return await _simple(args, "remove", "removed")


async def cmd_coordinator_list(args: argparse.Namespace) -> int:
    cfg = load_config(args.data)
    service = await NodeService.open(cfg)
    try:
        state = await Coordinator(service).state()
    finally:
        await service.close()
    rows = [member_json(m) for m in state.members.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no members yet (this node's '{MEMBERS_SET}' set is empty or absent)")
        return 0
    for row in rows:
        until = row["valid_until"] or "-"
        print(f"{row['org']}  {row['status']}  {','.join(row['roles'])}  until {until}  "
              f"{row['node_url']}  {' '.join(row['vkeys'])}")
    return 0


# -- trust ----------------------------------------------------------------------------------------


async def _coordinator_org(url: str, vkey: str) -> str:
    """The org a coordinator's /v1/node names, after checking it serves the vkey we were given."""
    timeout = aiohttp.ClientTimeout(total=_FETCH_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url + "/v1/node") as resp,
        ):
            body = await resp.read()
            if resp.status != 200:
                raise Unavailable(f"{url}/v1/node answered {resp.status}")
    except (TimeoutError, aiohttp.ClientError) as e:
        raise Unavailable(f"cannot reach the coordinator at {url} ({e!r}); or pass --org") from e
    try:
        info = orjson.loads(body)
        org, served = str(info["org"]), str(info["vkey"])
    except (orjson.JSONDecodeError, KeyError, TypeError) as e:
        raise Unavailable(f"{url}/v1/node is not a hashfed node description") from e
    if served != vkey:
        raise BadRequest(
            f"{url} serves the key {served}, not the --vkey given; check both with its operator",
            field="vkey",
        )
    return check_org(org)


async def cmd_trust_coordinator(args: argparse.Namespace) -> int:
    cfg = load_config(args.data)
    url, vkey = _url(args.url), _vkey(args.vkey)
    org = check_org(args.org) if args.org else await _coordinator_org(url, vkey)
    async with _store(cfg) as store:
        await FederationStore(store).add_trust(org, "coordinator", url, vkey)
    print(f"trusting coordinator {org} at {url}; its membership log is mirrored as "
          f"{members_mirror_name(org)}")
    return 0


async def cmd_trust_partner(args: argparse.Namespace) -> int:
    cfg = load_config(args.data)
    org, url, vkey = check_org(args.org), _url(args.url), _vkey(args.vkey)
    async with _store(cfg) as store:
        await FederationStore(store).add_trust(org, "partner", url, vkey)
    print(f"pinned partner {org} at {url} with key {vkey}")
    return 0


async def cmd_trust_list(args: argparse.Namespace) -> int:
    cfg = load_config(args.data)
    async with _store(cfg) as store:
        anchors = await FederationStore(store).list_trust()
        members = await Federation(store, cfg.org).members() if args.members else []
    if args.json:
        out: dict[str, Any] = {"trust": [a.__dict__ for a in anchors]}
        if args.members:
            out["members"] = [member_json(m) for m in members]
        print(json.dumps(out, indent=2))
        return 0
    for a in anchors:
        print(f"{a.kind}  {a.org}  {a.url}  {a.vkey}")
    for m in members:
        print(f"member  {m.org}  {m.status}  {m.node_url}")
    return 0


async def cmd_trust_remove(args: argparse.Namespace) -> int:
    cfg = load_config(args.data)
    async with _store(cfg) as store:
        removed = await FederationStore(store).remove_trust(check_org(args.org), args.kind)
    if not removed:
        raise NotFound(f"no {args.kind} trust for {args.org}", field="org")
    print(f"no longer trusting {args.kind} {args.org}")
    return 0


# -- grants ---------------------------------------------------------------------------------------


async def cmd_set_grant(args: argparse.Namespace) -> int:
    cfg = load_config(args.data)
    org = check_org(args.org)
    async with _store(cfg) as store:
        info = await store.get_set(args.name)
        added = await FederationStore(store).grant(args.name, org)
    who = "caller" if info.tlp == "clear" else "member"
    note = "" if info.tlp not in ("clear", "green") else (
        f" (TLP:{info.tlp.upper()} needs no grant: every {who} can read it)"
    )
    print(f"{org} {'may now read' if added else 'could already read'} {args.name}{note}")
    return 0


async def cmd_set_revoke_grant(args: argparse.Namespace) -> int:
    cfg = load_config(args.data)
    org = check_org(args.org)
    async with _store(cfg) as store:
        removed = await FederationStore(store).revoke_grant(args.name, org)
    if not removed:
        raise NotFound(f"{org} holds no grant for {args.name}", field="org")
    print(f"{org} may no longer read {args.name}")
    return 0


async def cmd_set_grants(args: argparse.Namespace) -> int:
    cfg = load_config(args.data)
    async with _store(cfg) as store:
        orgs = await FederationStore(store).grants_of_set(args.name)
    print("\n".join(orgs) if orgs else f"no grants on {args.name}")
    return 0


# -- argument parsing -----------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[
    argparse.ArgumentParser
] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``coordinator``, ``trust`` and ``set grant|revoke-grant|grants`` to ``hashfed``.

    Call it after the ``set`` command group exists (its subcommands are added to it), or before
    (then a ``set`` group is created here).
    """
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument(
        "--data", metavar="DIR", type=Path, default=None,
        help="the node's data directory (default: $HASHFED_DATA)",
    )

    def command(
        into: argparse._SubParsersAction[argparse.ArgumentParser], name: str, func: Command,
        help: str,
    ) -> argparse.ArgumentParser:
        p = into.add_parser(name, help=help, description=help, parents=[data])
        p.set_defaults(func=func, needs_data=True)
        return p

    def group(name: str, help: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        existing = sub.choices.get(name)
        if existing is not None:
            found = _subparsers(existing)
            if found is not None:
                return found
        return sub.add_parser(name, help=help).add_subparsers(
            dest=f"{name}_command", metavar="COMMAND", required=True
        )

    coord = group("coordinator", "membership decisions of a coordinator node")
    p = command(coord, "admit", cmd_coordinator_admit, "admit (or re-admit) a member")
    p.add_argument("--org", required=True, help="the member's organisation id")
    p.add_argument("--node-url", required=True, metavar="URL")
    p.add_argument("--vkey", required=True, action="append", metavar="VKEY",
                   help="the member's node vkey (repeat for more keys; the first is its node key)")
    p.add_argument("--roles", default="publisher,subscriber", metavar="R,...")
    p.add_argument("--name", help="display name (default: the org id)")
    p.add_argument("--valid-from", metavar="DATE", help="RFC 3339 time or YYYY-MM-DD (UTC)")
    p.add_argument("--valid-until", metavar="DATE", help="RFC 3339 time or YYYY-MM-DD (UTC)")
    p.add_argument("--reason")
    for name, func, help in (
        ("suspend", cmd_coordinator_suspend, "suspend a member (admit lifts it)"),
        ("remove", cmd_coordinator_remove, "remove a member, for good"),
    ):
        p = command(coord, name, func, help)
        p.add_argument("--org", required=True)
        p.add_argument("--reason")
    p = command(coord, "rotate", cmd_coordinator_rotate, "replace a member's keys")
    p.add_argument("--org", required=True)
    p.add_argument("--vkey", required=True, action="append", metavar="NEWVKEY")
    p.add_argument("--reason")
    p = command(coord, "list", cmd_coordinator_list, "the members as this node's log says")
    p.add_argument("--json", action="store_true")

    trust = group("trust", "coordinators and partners this node trusts")
    p = command(trust, "coordinator", cmd_trust_coordinator,
                "follow a coordinator's membership log")
    p.add_argument("--url", required=True)
    p.add_argument("--vkey", required=True, help="the coordinator's node vkey")
    p.add_argument("--org", help="its organisation id (default: asked from URL/v1/node)")
    p = command(trust, "partner", cmd_trust_partner, "pin a partner by its node key")
    p.add_argument("--org", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--vkey", required=True)
    p = command(trust, "list", cmd_trust_list, "list trust anchors")
    p.add_argument("--members", action="store_true", help="also every member they describe")
    p.add_argument("--json", action="store_true")
    p = command(trust, "remove", cmd_trust_remove, "stop trusting a coordinator or partner")
    p.add_argument("kind", choices=("coordinator", "partner"))
    p.add_argument("--org", required=True)

    sets = group("set", "hash sets")
    p = command(sets, "grant", cmd_set_grant, "let an organisation read an amber/red set")
    p.add_argument("name")
    p.add_argument("--org", required=True)
    p = command(sets, "revoke-grant", cmd_set_revoke_grant, "withdraw a grant")
    p.add_argument("name")
    p.add_argument("--org", required=True)
    p = command(sets, "grants", cmd_set_grants, "the organisations granted a set")
    p.add_argument("name")
