"""The sync client against partners that lie, break or stall: each attack is refused, nothing of it
is stored, evidence is kept where it proves something, and the error names the cause.

Attackers: a tampering proxy in front of a real node (tiles, bundles, old checkpoints), a second
node signing the same origin with the same key (a fork), a node with another key, a fake partner
serving a log whose leaves are not records, and raw servers that send too much or nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from nodeutil import RunningNode, make_node_dir, running_node, serving
from test_sync import MIRROR, SET, node_service, publish, use_workers, wait_checkpoint

from node.config import KEY_FILE
from node.federation.fetch import CHECKPOINT_LIMIT, PeerClient, PeerError, PeerResponseTooLarge
from node.federation.sync import derive_set_verifier, subscribe, sync_once
from node.service import NodeService
from protocol import merkle
from protocol import tiles as tlog
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.equivocation import EquivocationProof, verify_equivocation
from protocol.errors import (
    FormatError,
    InconsistentTreeError,
    ProofError,
    RecordTooLargeError,
    SignatureError,
    VerificationError,
)
from protocol.note import Signer, Verifier
from protocol.records import encode_record, record_from_dict

VECTORS = Path(__file__).parent / "vectors" / "hashfed"
WAIT = 10.0


# -- helpers ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


Rewrite = Callable[[str, bytes], bytes]


@contextlib.asynccontextmanager
async def tampering_proxy(upstream: str, rewrite: Rewrite) -> AsyncIterator[str]:
    """A proxy to ``upstream`` that passes every 200 body through ``rewrite(path, body)``."""
    session = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.Response:
        async with session.get(upstream + request.path_qs) as resp:
            body = await resp.read()
            if resp.status == 200:
                body = rewrite(request.path, body)
            return web.Response(body=body, status=resp.status)

    app = web.Application()
    app.router.add_get("/{tail:.*}", forward)
    try:
        async with serve_app(app) as url:
            yield url
    finally:
        await session.close()


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def only(path_suffix: str, change: Callable[[bytes], bytes]) -> Rewrite:
    return lambda path, body: change(body) if path.endswith(path_suffix) else body


async def mirror_state(service: NodeService) -> tuple[int, bytes | None, list[bytes]]:
    info = await service.store.get_set(MIRROR, kind="mirror")
    return info.size, info.checkpoint, await service.store.read_entries(info.id, 0, 10_000)


async def sync_error(service: NodeService) -> str:
    from node.federation.sync import list_subscriptions

    (status,) = await list_subscriptions(service.store)
    return status.sync_error or ""


@pytest.fixture
async def node_a(tmp_path: Path) -> AsyncIterator[RunningNode]:
    async with running_node(tmp_path / "a") as node:
        async with node.client() as client:
            await client.create_set(SET, "clear")
        yield node


@pytest.fixture
async def node_b(tmp_path: Path) -> AsyncIterator[NodeService]:
    async with node_service(tmp_path / "b") as service:
        yield service


async def subscribed(b: NodeService, a: RunningNode, entries: int) -> None:
    if entries:
        await publish(a, entries)
        await wait_checkpoint(a, entries)
    await subscribe(b, a.url, SET, vkey=a.vkey)


# -- tampering proxy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tile", "cause"),
    [
        ("/tile/1/000.p/2", "do not hash to its root"),  # a level-1 tile (block hashes)
        ("/tile/0/002.p/88", "do not hash to its root"),  # the partial level-0 tile
    ],
)
async def test_a_tampered_tile_is_refused(
    node_a: RunningNode, node_b: NodeService, tile: str, cause: str
) -> None:
    await subscribed(node_b, node_a, 600)
    async with (
        tampering_proxy(node_a.url, only(tile, lambda b: flip(b, 5))) as url,
        PeerClient(url, None) as peer,
    ):
        with pytest.raises(ProofError, match=cause):
            await sync_once(node_b, MIRROR, peer=peer)
    assert await mirror_state(node_b) == (0, None, [])
    assert "ProofError" in await sync_error(node_b)
    assert await node_b.store.list_evidence() == []  # unsigned tiles prove nothing about A


async def test_a_tampered_tile_in_the_consistency_proof_is_refused(
    node_a: RunningNode, node_b: NodeService
) -> None:
    await subscribed(node_b, node_a, 300)
    await sync_once(node_b, MIRROR)
    await publish(node_a, 300)
    await wait_checkpoint(node_a, 600)
    # the proof 300 -> 600 needs the hashes inside block 1 (leaves 256..511): tile/0/001
    async with (
        tampering_proxy(node_a.url, only("/tile/0/001", lambda b: flip(b, 40))) as url,
        PeerClient(url, None) as peer,
    ):
        cause = re.escape("tile/0/001 of node-a.test/csam does not hash")
        with pytest.raises(ProofError, match=cause):
            await sync_once(node_b, MIRROR, peer=peer)
    size, _, entries = await mirror_state(node_b)
    assert (size, len(entries)) == (300, 300)
    assert await node_b.store.list_evidence() == []  # a bad tile is not a fork
    await sync_once(node_b, MIRROR)  # the honest path still works
    assert (await mirror_state(node_b))[0] == 600


@pytest.mark.parametrize("workers", [False, True], ids=["in-process", "workers"])
async def test_a_tampered_entry_bundle_is_refused(
    node_a: RunningNode, node_b: NodeService, monkeypatch: pytest.MonkeyPatch, workers: bool
) -> None:
    use_workers(monkeypatch, workers)
    await subscribed(node_b, node_a, 300)

    def tamper(body: bytes) -> bytes:  # another hex digit in the first record's hash value
        at = body.index(b'"value":"') + len(b'"value":"')
        return body[:at] + (b"a" if body[at : at + 1] != b"a" else b"b") + body[at + 1 :]

    async with (
        tampering_proxy(node_a.url, only("/tile/entries/000", tamper)) as url,
        PeerClient(url, None) as peer,
    ):
        cause = re.escape("entry bundle 0 (tile/entries/000) of a tree of size 300")
        with pytest.raises(ProofError, match=cause):
            await sync_once(node_b, MIRROR, peer=peer)
    assert await mirror_state(node_b) == (0, None, [])
    assert "tile/entries/000" in await sync_error(node_b)


async def test_a_rollback_is_refused_and_both_notes_are_kept(
    node_a: RunningNode, node_b: NodeService
) -> None:
    await subscribed(node_b, node_a, 300)
    old_note = await wait_checkpoint(node_a, 300)
    await publish(node_a, 300)
    new_note = await wait_checkpoint(node_a, 600)
    await sync_once(node_b, MIRROR)
    before = await mirror_state(node_b)
    async with (
        tampering_proxy(node_a.url, only("/checkpoint", lambda _b: old_note)) as url,
        PeerClient(url, None) as peer,
    ):
        with pytest.raises(InconsistentTreeError, match="rollback") as info:
            await sync_once(node_b, MIRROR, peer=peer)
    assert info.value.evidence == (new_note, old_note)
    assert await mirror_state(node_b) == before
    (evidence,) = await node_b.store.list_evidence()
    assert (evidence["kind"], evidence["origin"]) == ("rollback", "node-a.test/csam")
    assert (evidence["note_a"], evidence["note_b"]) == (new_note, old_note)
    assert "InconsistentTreeError" in await sync_error(node_b)


# -- forks and foreign keys ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def impostor(
    tmp_path: Path, name: str, key_of: RunningNode | None
) -> AsyncIterator[RunningNode]:
    """A node with A's origin and set name; with A's key file when ``key_of`` is given."""
    cfg = await make_node_dir(tmp_path / name, origin="node-a.test", org="org-a.test")
    if key_of is not None:
        shutil.copyfile(key_of.data_dir / KEY_FILE, cfg.data_dir / KEY_FILE)
    async with serving(cfg) as node:
        async with node.client() as client:
            await client.create_set(SET, "clear")
        yield node


async def test_a_fork_is_refused_with_evidence(
    tmp_path: Path, node_a: RunningNode, node_b: NodeService
) -> None:
    await subscribed(node_b, node_a, 10)
    await sync_once(node_b, MIRROR)
    a_note = (await node_b.store.get_set(MIRROR, kind="mirror")).checkpoint
    before = await mirror_state(node_b)
    async with (
        impostor(tmp_path, "fork", key_of=node_a) as fork,
        PeerClient(fork.url, None) as peer,
    ):
        assert fork.vkey == node_a.vkey
        # same size, other root: the two signed notes are self-contained proof of a split view
        await publish(fork, 10)
        f_note = await wait_checkpoint(fork, 10)
        with pytest.raises(InconsistentTreeError, match="fork"):
            await sync_once(node_b, MIRROR, peer=peer)
        # larger, but not an extension of what B verified: the consistency proof fails
        await publish(fork, 10)
        f_note2 = await wait_checkpoint(fork, 20)
        with pytest.raises(InconsistentTreeError, match="does not extend"):
            await sync_once(node_b, MIRROR, peer=peer)
    assert await mirror_state(node_b) == before
    evidence = await node_b.store.list_evidence()
    assert [(e["kind"], e["note_a"], e["note_b"]) for e in evidence] == [
        ("fork", a_note, f_note),
        ("fork", a_note, f_note2),
    ]
    # Both are proofs anyone can check offline with A's log key: the same-size pair by itself,
    # the 10-vs-20 pair with the larger tree's consistency path, kept with it.
    assert evidence[0]["path"] == b""
    assert evidence[1]["path"] and len(evidence[1]["path"]) % 32 == 0
    log_key = derive_set_verifier(Verifier.from_vkey(node_a.vkey), "node-a.test/csam")
    for e in evidence:
        path = tuple(e["path"][i : i + 32] for i in range(0, len(e["path"]), 32))
        verify_equivocation(EquivocationProof(e["note_a"], e["note_b"], path), log_key)
    assert a_note is not None
    with pytest.raises(VerificationError):  # without its path the second pair proves nothing
        verify_equivocation(EquivocationProof(a_note, f_note2), log_key)


async def test_a_checkpoint_signed_by_another_key_is_refused(
    tmp_path: Path, node_a: RunningNode, node_b: NodeService
) -> None:
    await subscribed(node_b, node_a, 0)
    async with (
        impostor(tmp_path, "other", key_of=None) as other,
        PeerClient(other.url, None) as peer,
    ):
        await publish(other, 5)
        await wait_checkpoint(other, 5)
        with pytest.raises(SignatureError):
            await sync_once(node_b, MIRROR, peer=peer)
    assert await mirror_state(node_b) == (0, None, [])
    assert await node_b.store.list_evidence() == []
    assert "SignatureError" in await sync_error(node_b)


# -- a fake partner that signs what it serves ---------------------------------------------------


def valid_record() -> bytes:
    template = json.loads(json.loads((VECTORS / "records.json").read_text())[0]["json"])
    template["id"] = os.urandom(16).hex()
    template["hash"]["value"] = os.urandom(16).hex()
    template["provenance"]["record"] = template["id"]
    return encode_record(record_from_dict(template))


class FakePartner:
    """Serves a log of arbitrary leaves, correctly tiled and signed: only the leaves are bad."""

    org = "org-x.test"
    origin = "node-x.test"

    def __init__(self, leaves: list[bytes]) -> None:
        self.signer = Signer.generate(self.origin)
        self.set_origin = f"{self.origin}/{SET}"
        self.leaves = leaves
        size = len(leaves)
        self.tiles = tlog.update_tiles(0, {}, [merkle.leaf_hash(x) for x in leaves])
        root = tlog.root_from_tiles(size, self.tiles)
        self.note = sign_checkpoint(
            Checkpoint(self.set_origin, size, root), self.signer.with_name(self.set_origin)
        )
        #: path -> handler, replacing the honest answer
        self.overrides: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {}

    @property
    def vkey(self) -> str:
        return self.signer.verifier().vkey()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        override = self.overrides.get(path)
        if override is not None:
            return await override(request)
        prefix = f"/v1/sets/{SET}"
        if path == "/v1/node":
            body: Any = {"org": self.org, "origin": self.origin, "vkey": self.vkey}
            return web.json_response(body)
        if path == prefix:
            set_key = self.signer.with_name(self.set_origin).verifier().vkey()
            return web.json_response({"origin": self.set_origin, "vkey": set_key, "tlp": "clear"})
        if path == prefix + "/checkpoint":
            return web.Response(body=self.note)
        ref = tlog.parse_tile_path(path.removeprefix(prefix + "/"))
        if ref.is_entries:
            start = ref.n * tlog.TILE_WIDTH
            return web.Response(
                body=tlog.encode_entry_bundle(self.leaves[start : start + ref.width])
            )
        return web.Response(body=self.tiles[ref])

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        async with serve_app(app) as url:
            yield url


@pytest.mark.parametrize(
    ("bad_leaf", "error", "cause"),
    [
        (b'{"hello":"world"}', FormatError, "leaf 3 of node-x.test/csam is not a valid record"),
        (b'"' + b"a" * 17_000 + b'"', RecordTooLargeError, "limit is 16384"),
        (b"not json at all", FormatError, "leaf 3 of node-x.test/csam is not a valid record"),
        ("whitespace", FormatError, "canonical"),
    ],
    ids=["not-a-record", "oversized", "not-json", "non-canonical"],
)
@pytest.mark.parametrize("workers", [False, True], ids=["in-process", "workers"])
async def test_leaves_that_are_not_canonical_records_are_refused(
    node_b: NodeService,
    bad_leaf: bytes | str,
    error: type[Exception],
    cause: str,
    monkeypatch: pytest.MonkeyPatch,
    workers: bool,
) -> None:
    use_workers(monkeypatch, workers)
    if bad_leaf == "whitespace":
        bad_leaf = valid_record().replace(b'","', b'", "', 1)
    assert isinstance(bad_leaf, bytes)
    partner = FakePartner([valid_record(), valid_record(), valid_record(), bad_leaf])
    async with partner.serving() as url:
        await subscribe(node_b, url, SET, vkey=partner.vkey)
        with pytest.raises(error, match=cause):
            await sync_once(node_b, "org-x.test:csam")
    info = await node_b.store.get_set("org-x.test:csam", kind="mirror")
    assert (info.size, info.checkpoint) == (0, None)
    assert await node_b.store.read_entries(info.id, 0, 10) == []


async def test_the_fake_partner_is_accepted_when_its_leaves_are_records(
    node_b: NodeService,
) -> None:
    partner = FakePartner([valid_record() for _ in range(5)])
    async with partner.serving() as url:
        await subscribe(node_b, url, SET, vkey=partner.vkey)
        result = await sync_once(node_b, "org-x.test:csam")
    assert (result.after, result.bundles) == (5, 1)


# -- too much, or nothing -------------------------------------------------------------------------


async def _too_long(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b"x" * (CHECKPOINT_LIMIT + 1))


async def _endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()  # chunked: no Content-Length to refuse up front
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):
        while True:
            await response.write(b"y" * 65536)
    return response


@pytest.mark.parametrize("handler", [_too_long, _endless], ids=["oversized", "endless"])
async def test_oversized_and_endless_answers_are_cut_and_refused(
    node_b: NodeService, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> None:
    partner = FakePartner([valid_record()])
    partner.overrides[f"/v1/sets/{SET}/checkpoint"] = handler
    async with partner.serving() as url:
        await subscribe(node_b, url, SET, vkey=partner.vkey)
        with pytest.raises(PeerResponseTooLarge, match="limit"):
            await asyncio.wait_for(sync_once(node_b, "org-x.test:csam"), WAIT)
        # an oversized tile too: a tile's limit is its exact length
        partner.overrides.clear()
        partner.overrides[f"/v1/sets/{SET}/tile/0/000.p/1"] = _endless
        with pytest.raises(PeerResponseTooLarge, match="limit of 32 bytes"):
            await asyncio.wait_for(sync_once(node_b, "org-x.test:csam"), WAIT)
    info = await node_b.store.get_set("org-x.test:csam", kind="mirror")
    assert (info.size, info.checkpoint) == (0, None)
    assert "PeerResponseTooLarge" in await sync_error_of(node_b, "org-x.test:csam")


async def sync_error_of(service: NodeService, name: str) -> str:
    from node.federation.sync import list_subscriptions

    for status in await list_subscriptions(service.store):
        if status.info.name == name:
            return status.sync_error or ""
    raise AssertionError(name)


async def test_a_peer_that_never_answers_times_out(node_b: NodeService) -> None:
    partner = FakePartner([valid_record()])
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        with contextlib.suppress(ConnectionError):
            await reader.read()  # hold the connection, answer nothing
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with partner.serving() as url:
            await subscribe(node_b, url, SET, vkey=partner.vkey)
        timeout = aiohttp.ClientTimeout(total=1.0, connect=1.0)
        async with PeerClient(f"http://127.0.0.1:{port}", None, timeout=timeout) as peer:
            with pytest.raises(PeerError, match="no complete answer in time") as info:
                await asyncio.wait_for(sync_once(node_b, "org-x.test:csam", peer=peer), WAIT)
        assert info.value.transient
        assert accepted.is_set()
    finally:
        server.close()
        await server.wait_closed()
    assert "PeerError" in await sync_error_of(node_b, "org-x.test:csam")
