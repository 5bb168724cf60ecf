"""``hashfed audit``: audit an export or a live set, write reports, export equivocation evidence.

Wired into ``node/cli.py`` with :func:`register`. The audit itself is
:func:`protocol.audit.audit_directory` (pure, offline); this module only gets the files there (a
live set is fetched with :class:`node.federation.fetch.PeerClient` into a temporary export
directory, with the same timeouts and byte limits as sync) and renders the result with
:mod:`node.audit_report`. Exit status: 0 pass, 1 fail.

A live set that is not ``clear`` is fetched as the node in ``--data DIR`` (default
``$HASHFED_DATA``): every request signed with its node key (RFC 9421), as the sync client does, so
an auditor whose node the federation knows (a member with a grant, a pinned partner) can audit the
green, amber and red sets it may read. A ``clear`` set is fetched unsigned, as sync does, so a
node that does not know the auditor's key still answers. A 401/403 becomes one line saying the
set is not readable by this caller.

:func:`export_evidence` adds to ``hashfed export`` what lets the audit check more than the tree:
every stored checkpoint (``checkpoints/``), re-share receipts (``receipts/<index>.json``) and the
coordinator's membership log (``members/``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from node.audit_report import build_report, print_report, write_report
from node.cli_common import open_service
from node.config import load_config, load_signer
from node.errors import BadRequest, Forbidden, Unauthorized
from node.federation.fetch import PeerClient, PeerError
from node.storage.schema import checkpoints, reshares
from protocol import merkle, tiles
from protocol.audit import ExportAuditSummary, audit_directory
from protocol.checkpoint import parse_checkpoint
from protocol.equivocation import EquivocationProof
from protocol.errors import FormatError, ProtocolError
from protocol.note import Signer, Verifier

if TYPE_CHECKING:
    from node.service import NodeService
    from node.storage import SetInfo

__all__ = ["cmd_audit", "export_evidence", "fetch_export", "register"]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


# -- export -----------------------------------------------------------------------------------


async def export_evidence(service: NodeService, info: SetInfo, out: Path) -> None:
    """Write checkpoints/, receipts/ and members/ next to an export of ``info`` at its checkpoint.

    Each part is written only when there is something to put in it; the audit runs each check
    only when its directory is there.
    """
    store = service.store
    size = info.checkpoint_size
    # The store has one-row reads only; these two listings are the audit's, so they live here.
    async with store._read.connect() as conn:
        notes = (await conn.execute(
            select(checkpoints.c.size, checkpoints.c.note)
            .where(checkpoints.c.set_id == info.id, checkpoints.c.size < size)
            .order_by(checkpoints.c.size)
        )).all()
        receipts = (await conn.execute(
            select(reshares.c.idx, reshares.c.receipt)
            .where(reshares.c.set_id == info.id, reshares.c.idx < size)
        )).all()
    for row in notes:
        _write(out / "checkpoints" / f"{int(row.size):012d}", bytes(row.note))
    for row in receipts:
        _write(out / "receipts" / f"{int(row.idx)}.json", bytes(row.receipt))
    if info.remote_set == "members" or info.name == "members":
        return
    members = await _members_set(service)
    if members is not None:
        minfo, vkey = members
        await service.export(minfo, out / "members")
        _write(out / "members" / "vkey", (vkey + "\n").encode())


async def _members_set(service: NodeService) -> tuple[SetInfo, str] | None:
    """This node's own ``members`` set (a coordinator), or the mirror of a trusted one's."""
    from node.errors import NotFound
    from node.storage.federation import FederationStore

    with contextlib.suppress(NotFound):
        info = await service.store.get_set("members")
        if info.checkpoint is not None:
            return info, service.verifier_for(info).vkey()
    anchors = {a.org: a for a in await FederationStore(service.store).list_trust("coordinator")}
    for info in await service.store.list_sets(kind="mirror"):
        anchor = anchors.get(info.remote_org or "")
        if info.remote_set == "members" and anchor is not None and info.checkpoint is not None:
            node_key = Verifier.from_vkey(anchor.vkey)
            return info, Verifier.from_public_key(info.origin, node_key.public_key).vkey()
    return None


async def fetch_export(
    url: str, set_name: str, out: Path, signer: Signer | Callable[[], Signer] | None = None
) -> int:
    """Fetch a live set's checkpoint, hash tiles and entry bundles into ``out``; return the size.

    Unsigned first; when the node answers 401 (not readable anonymously) and ``signer`` is given,
    again with every request signed by ``signer`` (a node key). Signing only then is sync's rule
    too: a node that does not know the key refuses even a ``clear`` set to a signed request. A
    401/403 that remains raises :class:`Unauthorized`/:class:`Forbidden` with a line saying who
    may not read the set. The set's advertised vkey is written to ``out/vkey`` (not pinned: the
    audit says so unless ``--vkey`` is given). ``signer`` may be a function that loads the key:
    it is called only on that 401, so a clear set never needs a readable key.
    """
    try:
        return await _fetch(url, set_name, out, None)
    except PeerError as e:
        if signer is None or e.http_status != 401:
            _raise_if_refused(e, set_name, None)
            raise
    key = signer if isinstance(signer, Signer) else signer()
    try:
        return await _fetch(url, set_name, out, key)
    except PeerError as e:
        _raise_if_refused(e, set_name, key)
        raise


def _raise_if_refused(e: PeerError, set_name: str, signer: Signer | None) -> None:
    """Turn a 401/403 into one line naming the caller and what to do; return on anything else."""
    if e.http_status not in (401, 403):
        return
    who = "an unsigned caller" if signer is None else f"the node {signer.name}"
    message = (
        f"set {set_name} is not readable by {who} ({e.message}); audit it with --data DIR of "
        "a node that has access (a federation member with a grant on the set, or a pinned "
        "partner)"
    )
    raise (Unauthorized if e.http_status == 401 else Forbidden)(message) from e


async def _fetch(url: str, set_name: str, out: Path, signer: Signer | None) -> int:
    async with PeerClient(url, signer) as peer:
        # The set object first: checkpoints are public whatever the TLP, so this is the first
        # request that says whether the caller may read the set, before anything is written.
        info = await peer.set_info(set_name)
        note = await peer.checkpoint(set_name)
        try:
            cp = parse_checkpoint(note.split(b"\n\n", 1)[0] + b"\n")
        except FormatError as e:
            raise FormatError(f"{url}: the checkpoint of {set_name} does not parse: {e.message}",
                              field="checkpoint") from e
        _write(out / "checkpoint", note)
        if isinstance(info.get("vkey"), str):
            _write(out / "vkey", (info["vkey"] + "\n").encode())
        for ref in tiles.tiles_for_size(cp.size):
            _write(out / ref.path(), await peer.tile(set_name, ref))
        for n in range(-(-cp.size // tiles.TILE_WIDTH)):
            ref = tiles.tile_ref_at(0, n, cp.size, is_entries=True)
            _write(out / ref.path(), await peer.bundle(set_name, ref))
    return cp.size


def _log_vkey(vkey: str | None, root: Path) -> str | None:
    """Accept a node vkey for a set's log: the set's key is the node key under the set origin."""
    if vkey is None:
        return None
    key = Verifier.from_vkey(vkey.strip())
    try:
        origin = (root / "checkpoint").read_bytes().split(b"\n", 1)[0].decode()
    except (OSError, UnicodeDecodeError):
        return vkey
    if origin != key.name and origin.startswith(key.name + "/"):
        return Verifier.from_public_key(origin, key.public_key).vkey()
    return vkey


# -- commands ---------------------------------------------------------------------------------




async def _export_equivocations(data: Path, out: Path) -> int:
    """Every evidence row as ``<id>.json``: an EquivocationProof when the notes make one."""
    async with open_service(data) as service:
        rows = await service.store.list_evidence()
    out.mkdir(parents=True, exist_ok=True)
    for row in rows:
        a, b = row["note_a"], row["note_b"]
        name = f"evidence-{row['id']:06d}"
        if a is None or b is None:
            _write(out / f"{name}.txt", str(row["detail"]).encode())
            print(f"{name}: {row['kind']} in {row['origin']}: only one note kept (not a proof)")
            continue
        path = row["path"]
        hashes = () if path is None else tuple(
            bytes(path[i : i + merkle.HASH_SIZE]) for i in range(0, len(path), merkle.HASH_SIZE)
        )
        proof = EquivocationProof(bytes(a), bytes(b), hashes)
        _write(out / f"{name}.json", proof.to_json())
        # One size with two roots, or a fork kept with the larger tree's path, proves
        # equivocation to anyone holding the log's key; a rollback pair proves no lie.
        verdict = "proof of equivocation" if path is not None else "the two notes (no proof)"
        print(f"{name}.json: {verdict}: {row['kind']} in {row['origin']}: {row['detail']}")
    print(f"{len(rows)} evidence rows written to {out}")
    return 0


async def cmd_audit(args: argparse.Namespace) -> int:
    data: Path | None = args.data or (Path(os.environ["HASHFED_DATA"])
                                      if os.environ.get("HASHFED_DATA") else None)
    if args.evidence is not None:
        if data is None:
            raise BadRequest("--evidence needs --data DIR (or $HASHFED_DATA)", field="data")
        return await _export_equivocations(data, args.evidence)
    if (args.export is None) == (args.url is None):
        raise BadRequest("audit needs exactly one of --export DIR or --url URL --set NAME")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hashfed-audit-") as tmp:
        if args.url is not None:
            if not args.set:
                raise BadRequest("--url needs --set NAME", field="set")
            root, target = Path(tmp), f"{args.url.rstrip('/')} set {args.set}"
            # Only the key is needed, and only if the set is not public: loaded on demand, with
            # the node's service (database, sequencer) left closed.
            await fetch_export(
                args.url, args.set, root,
                None if data is None else lambda: load_signer(load_config(data)),
            )
        else:
            root = target_root = Path(args.export)
            target = str(target_root)
        summary: ExportAuditSummary | None = None
        error: ProtocolError | None = None
        try:
            summary = await asyncio.to_thread(
                audit_directory, root, trusted_vkey=_log_vkey(args.vkey, root),
                upstream_vkeys=args.upstream_vkey, members_vkey=args.members_vkey,
                upstream_dirs=args.upstream, members_dir=args.members,
            )
        except ProtocolError as e:
            error = e
    report = build_report(target, summary, error, seconds=time.perf_counter() - started)
    print_report(report)
    if args.report is not None:
        j, h = write_report(report, Path(args.report))
        print(f"report written to {j} and {h}")
    return 0 if report["ok"] else 1


def register(sub: Any) -> None:
    """Add ``hashfed audit`` to ``hashfed``'s subparsers (``sub`` from add_subparsers)."""
    help = "audit an export directory or a live node's set (exit 0 pass, 1 fail)"
    p: argparse.ArgumentParser = sub.add_parser("audit", help=help, description=help)
    p.set_defaults(func=cmd_audit, needs_data=False)
    p.add_argument("--export", metavar="DIR", type=Path, help="a directory from hashfed export")
    p.add_argument("--url", help="a live node's base URL (with --set)")
    p.add_argument("--set", metavar="NAME", help="the set to audit on --url")
    p.add_argument("--vkey", metavar="VKEY",
                   help="the log's (or its node's) vkey obtained out of band: pins the key")
    p.add_argument("--upstream-vkey", metavar="VKEY", action="append", default=[],
                   help="an upstream node's vkey, to verify re-share receipts (repeatable)")
    p.add_argument("--members-vkey", metavar="VKEY",
                   help="the coordinator's members-log vkey (default: members/vkey)")
    p.add_argument("--members", metavar="DIR", type=Path,
                   help="an export of the coordinator's members log obtained from the "
                   "coordinator itself ('hashfed export --set members' there): used instead of "
                   "the export's members/, which is only as fresh as the exporter's mirror and "
                   "must be a prefix of it")
    p.add_argument("--upstream", metavar="DIR", type=Path, action="append", default=[],
                   help="an export of a log this set re-shares from (verified with its "
                   "--upstream-vkey): check its revocations of re-shared entries appear here "
                   "(repeatable)")
    p.add_argument("--report", metavar="DIR", type=Path,
                   help="also write report.json and report.html into DIR")
    p.add_argument("--evidence", metavar="DIR", type=Path,
                   help="instead of auditing: write every kept fork/rollback as an equivocation "
                   "proof file into DIR (needs --data)")
    p.add_argument("--data", metavar="DIR", type=Path, default=None,
                   help="the node's data directory (default: $HASHFED_DATA): for --evidence, "
                   "and with --url to read a set that is not clear as that node (signed "
                   "requests)")
