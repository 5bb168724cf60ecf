"""Subscriptions, the verified sync client and push, between real nodes on 127.0.0.1.

Node A serves (SQLite); node B is a NodeService on each backend (``database_url``) that subscribes
to A's set and syncs it. The attacks are in test_sync_attacks.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nodeutil import RunningNode, make_node_dir, running_node

from node.errors import Conflict, NotFound, SetupError, Unavailable
from node.federation import sync as sync_module
from node.federation.fetch import PeerClient, PeerError
from node.federation.push import run_subscriptions
from node.federation.sync import (
    Backoff,
    list_subscriptions,
    subscribe,
    sync_once,
)
from node.service import NodeService
from node.storage import hash_key
from node.storage.federation import FederationStore
from node.storage.sql import SqlStore
from protocol.checkpoint import parse_checkpoint
from protocol.errors import SignatureError
from protocol.note import Signer, split_note
from protocol.tiles import TileRef

SET = "csam"
MIRROR = "org-a.test:csam"
#: how long a test waits for something that should take about a second
WAIT = 10.0


def sha256_items(n: int) -> list[dict[str, Any]]:
    return [{"hash_type": "sha256", "hash_value": os.urandom(32).hex()} for _ in range(n)]


def note_size(note: bytes) -> int:
    return parse_checkpoint(split_note(note)[0]).size


async def wait_checkpoint(node: RunningNode, size: int, set_name: str = SET) -> bytes:
    """A's checkpoint once it covers ``size`` (the sequencer signs within about a second)."""
    deadline = time.monotonic() + WAIT
    async with node.client() as client:
        while True:
            with contextlib.suppress(NotFound):  # no checkpoint until the first signature
                note = await client.checkpoint(set_name)
                if note_size(note) >= size:
                    return note
            if time.monotonic() > deadline:
                raise AssertionError(f"no checkpoint of size {size} within {WAIT} s")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def node_service(
    data_dir: Path,
    database_url: str | None = None,
    *,
    origin: str = "node-b.test",
    org: str = "org-b.test",
) -> AsyncIterator[NodeService]:
    """A node (B) that is not serving: its service is enough to subscribe and sync."""
    cfg = await make_node_dir(data_dir, database_url, origin=origin, org=org)
    service = await NodeService.open(cfg)
    try:
        yield service
    finally:
        await service.close()


async def publish(node: RunningNode, n: int, set_name: str = SET) -> list[dict[str, Any]]:
    items = sha256_items(n)
    async with node.client() as client:
        await client.publish(set_name, items)
    return items


@pytest.fixture
async def node_a(tmp_path: Path) -> AsyncIterator[RunningNode]:
    async with running_node(tmp_path / "a") as node:
        async with node.client() as client:
            await client.create_set(SET, "clear")
        yield node


async def assert_mirrors(service: NodeService, node: RunningNode, size: int) -> None:
    note = await wait_checkpoint(node, size)
    info = await service.store.get_set(MIRROR, kind="mirror")
    cp = parse_checkpoint(split_note(note)[0])
    assert (info.size, info.root, info.checkpoint, info.checkpoint_size) == (
        cp.size, cp.root_hash, note, cp.size
    )


def use_workers(monkeypatch: pytest.MonkeyPatch, workers: bool) -> None:
    """Make every sync check records in worker processes (normally only large ones do)."""
    if workers:
        monkeypatch.setattr(sync_module, "PARALLEL_MIN_LEAVES", 0)


@pytest.mark.parametrize("workers", [False, True], ids=["in-process", "workers"])
async def test_sync_copies_the_log_and_resumes_mid_block(
    tmp_path: Path,
    node_a: RunningNode,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    workers: bool,
) -> None:
    use_workers(monkeypatch, workers)
    items = await publish(node_a, 600)  # two full blocks and a partial one
    await wait_checkpoint(node_a, 600)
    async with node_service(tmp_path / "b", database_url) as b:
        info = await subscribe(b, node_a.url, SET, vkey=node_a.vkey)
        assert (info.name, info.origin, info.tlp, info.size) == (
            MIRROR, "node-a.test/csam", "clear", 0
        )
        result = await sync_once(b, MIRROR)
        assert (result.before, result.after, result.bundles) == (0, 600, 3)
        await assert_mirrors(b, node_a, 600)
        # the leaves are byte-exact: a lookup in the mirror finds A's entry at its index
        mirror = await b.store.get_set(MIRROR, kind="mirror")
        found = await b.store.find_entries(hash_key("sha256", items[300]["hash_value"]))
        assert [(f.set_name, f.index) for f in found] == [(MIRROR, 300)]

        # A grows and revokes: the next sync resumes inside block 2 (600 = 2 * 256 + 88)
        more = await publish(node_a, 101)
        async with node_a.client() as client:
            await client.revoke(
                SET, hash_type="sha256", hash_value=items[5]["hash_value"], reason="quality"
            )
        await wait_checkpoint(node_a, 702)
        result = await sync_once(b, MIRROR)
        assert (result.before, result.after, result.bundles) == (600, 702, 1)
        await assert_mirrors(b, node_a, 702)
        revoked = await b.store.get_record_at(mirror.id, 5)
        assert revoked is not None and revoked.revoked_by == 701
        found = await b.store.find_entries(hash_key("sha256", more[-1]["hash_value"]))
        assert [f.index for f in found] == [700]

        # nothing new: an idle sync changes nothing and clears no data
        result = await sync_once(b, MIRROR)
        assert (result.before, result.after, result.bundles) == (702, 702, 0)
        (status,) = await list_subscriptions(b.store)
        assert status.sync_error is None and status.synced_at is not None
        assert status.info.size == 702


def _killed_worker(data: bytes, width: int, offset: int, base: int) -> Any:
    """Stands in for check_bundle in a sync's worker process: the worker dies (as if killed)."""
    os._exit(3)


async def test_a_killed_worker_fails_the_sync_cleanly_and_the_next_one_resumes(
    tmp_path: Path, node_a: RunningNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_workers(monkeypatch, True)
    await publish(node_a, 300)
    await wait_checkpoint(node_a, 300)
    async with node_service(tmp_path / "b") as b:
        await subscribe(b, node_a.url, SET, vkey=node_a.vkey)
        # the worker pool pickles the function by name: the spawned process imports this module
        monkeypatch.setattr(sync_module, "check_bundle", _killed_worker)
        with pytest.raises(Unavailable, match=r"worker process .* stopped unexpectedly"):
            await sync_once(b, MIRROR)
        info = await b.store.get_set(MIRROR, kind="mirror")
        assert (info.size, info.checkpoint) == (0, None)
        monkeypatch.undo()
        use_workers(monkeypatch, True)
        result = await sync_once(b, MIRROR)
        assert (result.before, result.after) == (0, 300)
        await assert_mirrors(b, node_a, 300)


class _CountingPeer(PeerClient):
    """Counts the bundle requests open at once (each held a moment, so that they overlap)."""

    def __init__(self, url: str) -> None:
        super().__init__(url, None)
        self.open = self.most = 0

    async def bundle(self, set_name: str, ref: TileRef) -> bytes:
        self.open += 1
        self.most = max(self.most, self.open)
        try:
            await asyncio.sleep(0.02)
            return await super().bundle(set_name, ref)
        finally:
            self.open -= 1


@pytest.mark.parametrize("workers", [False, True], ids=["in-process", "workers"])
async def test_a_sync_keeps_a_bounded_number_of_requests_open(
    tmp_path: Path, node_a: RunningNode, monkeypatch: pytest.MonkeyPatch, workers: bool
) -> None:
    use_workers(monkeypatch, workers)
    await publish(node_a, 20 * 256)
    await wait_checkpoint(node_a, 20 * 256)
    async with node_service(tmp_path / "b") as b, _CountingPeer(node_a.url) as peer:
        await subscribe(b, node_a.url, SET, vkey=node_a.vkey)
        result = await sync_once(b, MIRROR, peer=peer)
        assert (result.after, result.bundles) == (20 * 256, 20)
    # four ahead in process; with workers up to 128 ahead but only 8 requests at a time
    assert 2 <= peer.most <= (8 if workers else 4)


class _StallingPeer(PeerClient):
    """Blocks forever before fetching bundle ``stall_at`` (so a test can cancel the sync)."""

    def __init__(self, url: str, stall_at: int) -> None:
        super().__init__(url, None)
        self.stall_at = stall_at
        self.stalled = asyncio.Event()

    async def bundle(self, set_name: str, ref: TileRef) -> bytes:
        if ref.n == self.stall_at:
            self.stalled.set()
            await asyncio.Event().wait()
        return await super().bundle(set_name, ref)


async def test_a_cancelled_sync_resumes_without_gaps_or_duplicates(
    tmp_path: Path, node_a: RunningNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one bundle per append transaction, so that a cancel can land between two of them
    monkeypatch.setattr(sync_module, "BATCH_RECORDS", 256)
    await publish(node_a, 700)
    await wait_checkpoint(node_a, 700)
    async with node_service(tmp_path / "b") as b:
        await subscribe(b, node_a.url, SET, vkey=node_a.vkey)
        async with _StallingPeer(node_a.url, stall_at=2) as peer:
            task = asyncio.create_task(sync_once(b, MIRROR, peer=peer))
            await asyncio.wait_for(peer.stalled.wait(), WAIT)
            # bundles 0 and 1 were fetched ahead of the stall; wait until both are written
            deadline = time.monotonic() + WAIT
            while (await b.store.get_set(MIRROR, kind="mirror")).size != 512:
                assert time.monotonic() < deadline, f"bundles 0 and 1 not written within {WAIT} s"
                await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        info = await b.store.get_set(MIRROR, kind="mirror")
        # two whole bundles landed, the partner's note was not adopted yet
        assert (info.size, info.checkpoint) == (512, None)
        result = await sync_once(b, MIRROR)
        assert (result.before, result.after, result.bundles) == (512, 700, 1)
        await assert_mirrors(b, node_a, 700)
        entries = await b.store.read_entries(info.id, 0, 1000)
        assert len(entries) == 700 and len(set(entries)) == 700


async def test_subscribe_needs_a_pinned_key_and_refuses_another(
    tmp_path: Path, node_a: RunningNode
) -> None:
    async with node_service(tmp_path / "b") as b:
        with pytest.raises(SetupError, match="neither pinned nor vouched"):
            await subscribe(b, node_a.url, SET)
        other = Signer.generate("node-a.test").verifier().vkey()
        with pytest.raises(SignatureError, match="not the pinned"):
            await subscribe(b, node_a.url, SET, vkey=other)
        assert await b.store.list_sets(kind="mirror") == []
        await subscribe(b, node_a.url, SET, vkey=node_a.vkey)
        with pytest.raises(Conflict):
            await subscribe(b, node_a.url, SET)  # pinned now, but already subscribed


async def test_push_triggers_a_sync_within_a_second(tmp_path: Path, node_a: RunningNode) -> None:
    await publish(node_a, 10)
    await wait_checkpoint(node_a, 10)
    async with node_service(tmp_path / "b") as b:
        await subscribe(b, node_a.url, SET, vkey=node_a.vkey)
        stop = asyncio.Event()
        # a long poll interval: only the push event can explain a quick sync
        task = asyncio.create_task(run_subscriptions(b, stop, poll_interval=300.0))
        try:
            await _wait_mirror_size(b, 10)
            await asyncio.sleep(0.3)  # let the event stream connect
            await publish(node_a, 5)
            started = time.monotonic()
            await _wait_mirror_size(b, 15)
            # the sequencer signs within ~1 s of the publish; the push adds little to that
            assert time.monotonic() - started < 3.0
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT)


async def _wait_mirror_size(service: NodeService, size: int) -> None:
    deadline = time.monotonic() + WAIT
    while (await service.store.get_set(MIRROR, kind="mirror")).checkpoint_size < size:
        if time.monotonic() > deadline:
            raise AssertionError(f"the mirror did not reach {size} within {WAIT} s")
        await asyncio.sleep(0.02)


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    import random

    backoff = Backoff(base=1.0, cap=8.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(6)]
    for d, nominal in zip(delays, (1, 2, 4, 8, 8, 8), strict=True):
        assert nominal / 2 <= d <= nominal
    backoff.reset()
    assert backoff.next_delay() <= 1.0


# -- CLI: subscribe / sync --once / subscriptions --------------------------------------------


def cli_args(argv: list[str]) -> argparse.Namespace:
    from node.cli_federation_sync import register

    parser = argparse.ArgumentParser(prog="hashfed")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


async def test_cli_subscribe_sync_and_list(
    tmp_path: Path, node_a: RunningNode, capsys: pytest.CaptureFixture[str]
) -> None:
    await publish(node_a, 20)
    await wait_checkpoint(node_a, 20)
    cfg = await make_node_dir(tmp_path / "b", origin="node-b.test", org="org-b.test")
    data = str(cfg.data_dir)

    async def run(*argv: str) -> int:
        args = cli_args(list(argv))
        status: int = await args.func(args)
        return status

    assert await run("subscribe", "--data", data, "--url", node_a.url, "--set", SET,
                     "--vkey", node_a.vkey) == 0
    assert "subscribed to node-a.test/csam as org-a.test:csam" in capsys.readouterr().out
    assert await run("sync", "--data", data, "--once") == 0
    assert capsys.readouterr().out == "org-a.test:csam: 0 -> 20 (+20 records)\n"
    assert await run("sync", "--data", data, "--once") == 0
    assert capsys.readouterr().out == "org-a.test:csam: up to date at 20\n"
    assert await run("subscriptions", "--data", data, "--json") == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["name"], row["size"], row["error"]) == (MIRROR, 20, None)

    # a partner that is gone: the line names the failure, the exit status is 1
    dead = f"http://127.0.0.1:{_closed_port()}"
    store = await SqlStore.open(cfg.database_url)
    try:
        await store.create_mirror(
            "org-a.test:gone", "node-a.test/gone", remote_url=dead, remote_org="org-a.test",
            remote_set="gone", tlp="clear",
        )
    finally:
        await store.close()
    assert await run("sync", "--data", data, "--once") == 1
    out = capsys.readouterr().out
    assert "org-a.test:gone: FAILED at size 0: PeerError" in out
    assert "org-a.test:csam: up to date at 20" in out
    assert await run("subscriptions", "--data", data) == 0
    assert "last error: PeerError" in capsys.readouterr().out


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- signed requests: a non-clear set between partners who pinned each other ------------------


async def test_an_amber_set_syncs_with_signed_requests_and_needs_a_grant(
    tmp_path: Path, node_a: RunningNode
) -> None:
    async with node_a.client() as client:
        await client.create_set("amb", "amber")
    await publish(node_a, 300, "amb")
    await wait_checkpoint(node_a, 300, "amb")
    async with node_service(tmp_path / "b") as b:
        a_store = await SqlStore.open(node_a.cfg.database_url)
        try:
            fed = FederationStore(a_store)
            b_vkey = b.signer.verifier().vkey()
            await fed.add_trust("org-b.test", "partner", "http://b.invalid", b_vkey)
            # known to A but without a grant: A answers 403 (the signed retry after a 401)
            with pytest.raises(PeerError, match="HTTP 403") as refused:
                await subscribe(b, node_a.url, "amb", vkey=node_a.vkey)
            assert not refused.value.transient
            await fed.grant("amb", "org-b.test")
            info = await subscribe(b, node_a.url, "amb", vkey=node_a.vkey)
            assert info.tlp == "amber"
            result = await sync_once(b, "org-a.test:amb")
            assert (result.after, result.bundles) == (300, 2)
            # grant withdrawn: the next sync is refused and says why
            await fed.revoke_grant("amb", "org-b.test")
            await publish(node_a, 1, "amb")
            await wait_checkpoint(node_a, 301, "amb")  # checkpoints are public; tiles are not
            with pytest.raises(PeerError, match="HTTP 403"):
                await sync_once(b, "org-a.test:amb")
            await fed.grant("amb", "org-b.test")
            # the event stream is read with the same signature and rules
            async with PeerClient(node_a.url, b.signer) as signed:
                assert await anext(aiter(signed.events("amb"))) == 301
        finally:
            await a_store.close()
        async with PeerClient(node_a.url, None) as anonymous:
            with pytest.raises(PeerError, match="HTTP 401"):
                await anext(aiter(anonymous.events("amb")))


async def test_the_event_stream_sends_the_size_then_each_new_checkpoint(
    node_a: RunningNode,
) -> None:
    await publish(node_a, 3)
    await wait_checkpoint(node_a, 3)
    async with PeerClient(node_a.url, None) as peer:
        events = aiter(peer.events(SET))
        assert await asyncio.wait_for(anext(events), WAIT) == 3
        await publish(node_a, 2)
        assert await asyncio.wait_for(anext(events), WAIT) == 5
        await events.aclose()  # type: ignore[attr-defined]
