"""The federation scenario end to end: a coordinator admits A, B and C; A publishes to a green set;
B re-shares it into its own green set; C follows B; C verifies the receipt chain back to A; A
revokes and the revocation reaches C through B. Then: propagation time of revocations A -> C.

Every node is a real HTTP server on 127.0.0.1 (``build_app`` over a NodeService the test holds,
so that the test can call ``sync_once`` with the very service that serves: a ``running_node``
would run its own subscription loop that races the test's syncs). Trust goes through the
coordinator: each node trusts it and mirrors its ``members`` log; no partner is pinned directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from nodeutil import make_node_dir

from node.client import OperatorClient
from node.config import load_operator_token
from node.federation.fetch import PeerClient
from node.federation.push import run_subscriptions
from node.federation.sync import federation_of, subscribe, sync_once
from node.server.app import build_app
from node.service import NodeService
from node.storage import hash_key
from node.storage.federation import FederationStore
from protocol.note import Verifier
from protocol.receipts import MAX_RECEIPT_SIZE, Receipt, verify_receipt_chain
from protocol.records import Entry, decode_record

WAIT = 20.0
COORD = "coord.test"


@dataclass
class Node:
    service: NodeService
    url: str
    token: str

    @property
    def org(self) -> str:
        return self.service.cfg.org

    @property
    def vkey(self) -> str:
        return self.service.signer.verifier().vkey()

    def client(self) -> OperatorClient:
        return OperatorClient(self.url, self.token)


@contextlib.asynccontextmanager
async def served(data: Path, name: str) -> AsyncIterator[Node]:
    """A node ``name`` (origin node-<name>.test, org org-<name>.test) serving on 127.0.0.1."""
    origin, org = (COORD, COORD) if name == "coord" else (f"node-{name}.test", f"org-{name}.test")
    cfg = await make_node_dir(data / name, origin=origin, org=org)
    service = await NodeService.open(cfg)
    token = load_operator_token(cfg)
    service.sequencer.start()
    runner = web.AppRunner(build_app(service, token), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Node(service, f"http://127.0.0.1:{port}", token)
    finally:
        await runner.cleanup()
        await service.close()


async def wait_for(what: str, check: Any) -> None:
    deadline = time.monotonic() + WAIT
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {WAIT} s")
        await asyncio.sleep(0.02)


async def checkpointed(node: Node, set_name: str, kind: str = "local") -> None:
    """Sign now whatever the node appended to ``set_name`` (rather than wait for the ticker)."""
    if kind == "local":
        await node.service.sequencer.checkpoint(set_name)


@contextlib.asynccontextmanager
async def federation(tmp_path: Path) -> AsyncIterator[tuple[Node, Node, Node, Node]]:
    async with (
        served(tmp_path, "coord") as coord,
        served(tmp_path, "a") as a,
        served(tmp_path, "b") as b,
        served(tmp_path, "c") as c,
    ):
        async with coord.client() as op:
            for n in (a, b, c):
                await op.post_json("/v1/members", {
                    "action": "admit", "member": n.org, "name": n.org, "node_url": n.url,
                    "vkeys": [n.vkey], "roles": ["publisher", "subscriber"],
                })
        await checkpointed(coord, "members")
        for n in (a, b, c):
            await FederationStore(n.service.store).add_trust(COORD, "coordinator", coord.url,
                                                             coord.vkey)
            await subscribe(n.service, coord.url, "members", vkey=coord.vkey)
            await sync_once(n.service, f"{COORD}:members")
        yield coord, a, b, c


def sha256_item() -> dict[str, Any]:
    return {"hash_type": "sha256", "hash_value": os.urandom(32).hex(), "labels": ["ic:A1"]}


async def lookup(node: Node, value: str) -> list[dict[str, Any]]:
    async with node.client() as op:
        answer = await op.get_json("/v1/lookup", {"hash_type": "sha256", "hash_value": value})
    matches: list[dict[str, Any]] = answer["matches"]
    return matches


async def setup_chain(a: Node, b: Node, c: Node) -> None:
    async with a.client() as op:
        await op.create_set("green", "green")
    async with b.client() as op:
        await op.create_set("green", "green")
    # B and C know A's and B's keys only through the coordinator's membership log
    await subscribe(b.service, a.url, "green", reshare_into="green")
    await subscribe(c.service, b.url, "green")


async def test_reshare_chain_and_revocation_across_three_nodes(tmp_path: Path) -> None:
    async with federation(tmp_path) as (_coord, a, b, c):
        await setup_chain(a, b, c)
        item = sha256_item()
        async with a.client() as op:
            (published,) = await op.publish("green", [item])
        await checkpointed(a, "green")
        assert (await sync_once(b.service, "org-a.test:green")).appended == 1
        await checkpointed(b, "green")
        assert (await sync_once(c.service, "org-b.test:green")).appended == 1
        # a second sync re-shares nothing twice
        await sync_once(b.service, "org-a.test:green")
        assert (await b.service.store.get_set("green")).size == 1

        (match,) = await lookup(c, item["hash_value"])
        assert (match["set"], match["kind"], match["org"], match["state"]) == (
            "org-b.test:green", "mirror", "org-b.test", "active"
        )
        prov = match["provenance"]
        assert (prov["org"], prov["node"], prov["record"]) == (
            "org-a.test", "node-a.test/green", published.record_id
        )
        assert [(h["org"], h["origin"], h["record"]) for h in prov["chain"]] == [
            ("org-b.test", "node-a.test/green", published.record_id)
        ]

        # C verifies its copy back to A's original, with keys from the membership log only
        mirror = await c.service.store.get_set("org-b.test:green", kind="mirror")
        stored = (await c.service.store.read_records(mirror.id, match["index"], 1))[0]
        entry = decode_record(stored.data)
        assert isinstance(entry, Entry)
        async with PeerClient(b.url, c.service.signer) as peer:
            raw = await peer.get(f"/v1/sets/green/receipts/{match['index']}", MAX_RECEIPT_SIZE)
        receipt = Receipt.from_json(raw)
        fed = federation_of(c.service)
        keys: dict[str, Verifier] = {}
        for origin in ("node-a.test/green", "node-b.test/green"):
            key = await fed.set_verifier(origin)
            assert key is not None
            keys[origin] = key
        assert verify_receipt_chain(entry, receipt, keys.__getitem__) == ["node-a.test/green"]
        original = decode_record(receipt.leaf)
        assert (original.author, original.id) == ("org-a.test", published.record_id)

        # A revokes: B revokes its copy in the same sync, C sees it revoked
        async with a.client() as op:
            await op.revoke("green", entry_id=published.record_id, reason="false_positive")
        await checkpointed(a, "green")
        await sync_once(b.service, "org-a.test:green")
        await checkpointed(b, "green")
        await sync_once(c.service, "org-b.test:green")
        states = {m["set"]: m for m in await lookup(c, item["hash_value"])}
        assert states["org-b.test:green"]["state"] == "revoked"
        revocation = states["org-b.test:green"]["revocation"]
        assert (revocation["author"], revocation["reason"], revocation["text"]) == (
            "org-b.test", "false_positive",
            f"upstream node-a.test/green revoked {published.record_id}",
        )
        # B's merged view: A's log (mirror) and its own copy, both revoked
        b_view = {m["set"]: m["state"] for m in await lookup(b, item["hash_value"])}
        assert b_view == {"green": "revoked", "org-a.test:green": "revoked"}


async def measure_propagation(a: Node, b: Node, c: Node, n: int) -> list[float]:
    """Seconds from each revoke on A until C's view shows it revoked (B and C follow their
    subscriptions with run_subscriptions, as ``serve`` does: push plus polling)."""
    items = [sha256_item() for _ in range(n)]
    async with a.client() as op:
        published = await op.publish("green", items)
    stop = asyncio.Event()
    loops = [asyncio.create_task(run_subscriptions(x.service, stop)) for x in (b, c)]
    c_store = c.service.store
    try:
        mirror = await c_store.get_set("org-b.test:green", kind="mirror")

        async def c_state(value: str) -> str | None:
            found = await c_store.find_entries(hash_key("sha256", value), [mirror.id])
            if not found:
                return None
            return "revoked" if found[0].revoked_by is not None else "active"

        for it in items:
            await wait_for("C mirrors the entry", lambda v=it["hash_value"]: _is(c_state(v),
                                                                                  "active"))
        await asyncio.sleep(0.5)  # let the event streams connect
        times: list[float] = []
        for it, pub in zip(items, published, strict=True):
            started = time.monotonic()
            async with a.client() as op:
                await op.revoke("green", entry_id=pub.record_id, reason="quality")
            await wait_for("C sees the revocation",
                           lambda v=it["hash_value"]: _is(c_state(v), "revoked"))
            times.append(time.monotonic() - started)
        return times
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*loops), WAIT)


async def _is(state: Any, want: str) -> bool:
    return bool(await state == want)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def test_every_revocation_reaches_c_through_b(tmp_path: Path) -> None:
    """20 revocations on A, each in C's view through B's re-share before the next one: each
    wait is bounded (WAIT), so a revocation that never propagates fails the test. How fast they
    arrive is measured by bench/bench_propagation.py, not asserted here (shared machines)."""
    async with federation(tmp_path) as (_coord, a, b, c):
        await setup_chain(a, b, c)
        times = await measure_propagation(a, b, c, 20)
    assert len(times) == 20
    p50, p95 = statistics.median(times), percentile(times, 95)
    print(orjson.dumps({"revocations": len(times), "p50_s": round(p50, 3),
                        "p95_s": round(p95, 3), "max_s": round(max(times), 3)}).decode())
