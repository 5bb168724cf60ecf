"""Partner authentication end to end: a coordinator node admits partners, partners sign requests
(RFC 9421) with their node keys, and the node applies membership and TLP scope.

Node A (org-a.test) is its own coordinator (a local ``members`` set) and serves sets at every TLP;
partner B (org-b.test) is a node key that signs requests to A.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nodeutil import RunningNode, make_node_dir, running_node

from node.cli_federation_auth import register
from node.client import OperatorClient
from node.errors import BadRequest
from node.federation import httpsig
from node.federation.members import Federation, members_mirror_name
from node.service import NodeService
from node.storage import MirrorLeaves, PreparedRecord
from node.storage.federation import FederationStore
from node.storage.sql import SqlStore
from protocol.errors import VerificationError
from protocol.note import Signer
from protocol.records import Membership, new_nonce, new_record_id, timestamp

B_ORG = "org-b.test"


async def _signed(
    session: aiohttp.ClientSession,
    node: RunningNode,
    path: str,
    signer: Signer,
    *,
    method: str = "GET",
    body: bytes | None = None,
    now: int | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """Sign and send one request; (status, JSON or text body, the headers sent)."""
    url = node.url + path
    sent = dict(headers or {})
    if headers is None:
        httpsig.sign_request(method, url, sent, body, signer, now=now)
    async with session.request(method, url, headers=sent, data=body) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json(), sent
        return resp.status, await resp.text(), sent


def _why(answer: Any) -> str:
    assert isinstance(answer, dict) and "error" in answer, answer
    return str(answer["error"]["message"])


async def _admit(client: OperatorClient, org: str, signer: Signer) -> dict[str, Any]:
    answer: dict[str, Any] = await client.post_json("/v1/members", {
        "action": "admit", "member": org, "name": org, "node_url": "http://127.0.0.1:9",
        "vkeys": [signer.verifier().vkey()], "roles": ["publisher", "subscriber"],
    })
    return answer


async def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    status: int = await args.func(args)
    return status


@pytest.fixture
async def node_a(tmp_path: Path, database_url: str) -> AsyncIterator[RunningNode]:
    async with running_node(tmp_path / "a", database_url, origin="node-a.test",
                            org="org-a.test") as node:
        async with node.client() as client:
            for name, tlp in (("pub", "clear"), ("grn", "green"), ("amb", "amber"),
                              ("red", "red")):
                await client.create_set(name, tlp)
        yield node


async def test_scope_membership_and_signature_failures(node_a: RunningNode) -> None:
    b = Signer.generate("node-b.test")
    async with node_a.client() as client, aiohttp.ClientSession() as session:
        # Before admission B's key is unknown, even for a clear set.
        status, answer, _ = await _signed(session, node_a, "/v1/sets/pub", b)
        assert (status, answer["error"]["code"]) == (401, "unauthorized")
        assert "unknown key" in _why(answer)

        admitted = await _admit(client, B_ORG, b)
        assert admitted["member"]["status"] == "active" and admitted["index"] == 0

        # green: any member; amber/red: only with a grant (403 means "known, not allowed").
        assert (await _signed(session, node_a, "/v1/sets/grn", b))[0] == 200
        status, answer, _ = await _signed(session, node_a, "/v1/sets/amb", b)
        assert (status, answer["error"]["code"]) == (403, "forbidden")
        assert "no grant" in _why(answer)
        assert await _cli("set", "grant", "amb", "--org", B_ORG, "--data",
                          str(node_a.data_dir)) == 0
        assert (await _signed(session, node_a, "/v1/sets/amb", b))[0] == 200
        assert (await _signed(session, node_a, "/v1/sets/amb/tile/0/000.p/1", b))[0] == 404
        assert (await _signed(session, node_a, "/v1/sets/red", b))[0] == 403
        status, listing, _ = await _signed(session, node_a, "/v1/sets", b)
        assert status == 200
        assert sorted(s["name"] for s in listing["sets"]) == ["amb", "grn", "members", "pub"]
        assert await _cli("set", "revoke-grant", "amb", "--org", B_ORG, "--data",
                          str(node_a.data_dir)) == 0
        assert (await _signed(session, node_a, "/v1/sets/amb", b))[0] == 403

        # Unsigned: the anonymous rules. Checkpoints stay public.
        async with session.get(node_a.url + "/v1/sets/pub") as resp:
            assert resp.status == 200
        async with session.get(node_a.url + "/v1/sets/grn") as resp:
            assert resp.status == 401
        async with session.get(node_a.url + "/v1/sets/red/checkpoint") as resp:
            assert resp.status in (200, 404)

        # Partners do not write.
        status, answer, _ = await _signed(session, node_a, "/v1/sets/grn/records", b,
                                          method="POST", body=b'{"publish": []}')
        assert (status, answer["error"]["code"]) == (403, "forbidden")

        # Replay: the very same headers twice.
        status, _, sent = await _signed(session, node_a, "/v1/sets/grn", b)
        assert status == 200
        status, answer, _ = await _signed(session, node_a, "/v1/sets/grn", b, headers=sent)
        assert status == 401 and "replayed" in _why(answer)

        # Forged signature bytes; a signature by another key under B's keyid.
        sent = {}
        httpsig.sign_request("GET", node_a.url + "/v1/sets/grn", sent, None, b)
        label, sig = sent["Signature"].split("=:", 1)
        sent["Signature"] = f"{label}=:{'B' if sig[0] == 'A' else 'A'}{sig[1:]}"
        status, answer, _ = await _signed(session, node_a, "/v1/sets/grn", b, headers=sent)
        assert status == 401 and "bad signature" in _why(answer)
        impostor = Signer.generate("node-b.test")
        forged: dict[str, str] = {}
        httpsig.sign_request("GET", node_a.url + "/v1/sets/grn", forged, None, impostor)
        forged["Signature-Input"] = forged["Signature-Input"].replace(
            httpsig.format_keyid(impostor), httpsig.format_keyid(b))
        status, answer, _ = await _signed(session, node_a, "/v1/sets/grn", b, headers=forged)
        assert status == 401 and "bad signature" in _why(answer)

        # Unknown key, stale, tampered body, tampered digest.
        status, answer, _ = await _signed(session, node_a, "/v1/sets/grn", impostor)
        assert status == 401 and "unknown key" in _why(answer)
        status, answer, _ = await _signed(session, node_a, "/v1/sets/grn", b,
                                          now=int(time.time()) - 1000)
        assert status == 401 and "stale" in _why(answer)
        body = b'{"hash_type": "sha256"}'
        good: dict[str, str] = {}
        httpsig.sign_request("POST", node_a.url + "/v1/sets/grn/records", good, body, b)
        status, answer, _ = await _signed(session, node_a, "/v1/sets/grn/records", b,
                                          method="POST", body=body + b" ", headers=good)
        assert status == 401 and "content-digest mismatch" in _why(answer)
        good2: dict[str, str] = {}
        httpsig.sign_request("POST", node_a.url + "/v1/sets/grn/records", good2, body, b)
        good2["Content-Digest"] = good["Content-Digest"].replace("sha-256=:", "sha-256=:A", 1)
        status, answer, _ = await _signed(session, node_a, "/v1/sets/grn/records", b,
                                          method="POST", body=body, headers=good2)
        assert status == 401

        # A token and a signature together are refused.
        both: dict[str, str] = {"Authorization": f"Bearer {node_a.token}"}
        httpsig.sign_request("GET", node_a.url + "/v1/sets/grn", both, None, b)
        status, answer, _ = await _signed(session, node_a, "/v1/sets/grn", b, headers=both)
        assert status == 401 and "not both" in _why(answer)

        # Suspended: 401; re-admitted: back.
        await client.post_json("/v1/members", {"action": "suspend", "member": B_ORG})
        status, answer, _ = await _signed(session, node_a, "/v1/sets/grn", b)
        assert status == 401 and "unknown key" in _why(answer)
        await _admit(client, B_ORG, b)
        assert (await _signed(session, node_a, "/v1/sets/grn", b))[0] == 200

        # Rotation: the retired key is refused from then on, the new one works.
        b2 = b.with_name("node-b.test")  # same name, same key: not a rotation
        assert b2.key_id == b.key_id
        new = Signer.generate("node-b.test")
        answer = await client.post_json("/v1/members", {
            "action": "rotate", "member": B_ORG, "vkeys": [new.verifier().vkey()]})
        assert answer["member"]["retired_vkeys"] == [b.verifier().vkey()]
        status, answer, _ = await _signed(session, node_a, "/v1/sets/grn", b)
        assert status == 401 and "unknown key" in _why(answer)
        assert (await _signed(session, node_a, "/v1/sets/grn", new))[0] == 200

        # The coordinator refuses nonsense before storing it.
        with pytest.raises(VerificationError, match="never admitted"):
            await client.post_json("/v1/members", {
                "action": "rotate", "member": "org-x.test",
                "vkeys": [Signer.generate("x.test").verifier().vkey()]})
        with pytest.raises(VerificationError, match="retired"):
            await client.post_json("/v1/members", {
                "action": "rotate", "member": B_ORG, "vkeys": [b.verifier().vkey()]})

        # Removal is final.
        await client.post_json("/v1/members", {"action": "remove", "member": B_ORG})
        assert (await _signed(session, node_a, "/v1/sets/grn", new))[0] == 401
        with pytest.raises(VerificationError, match="removal is final"):
            await _admit(client, B_ORG, new)


async def test_expired_membership(node_a: RunningNode) -> None:
    b = Signer.generate("node-b.test")
    async with node_a.client() as client, aiohttp.ClientSession() as session:
        await client.post_json("/v1/members", {
            "action": "admit", "member": B_ORG, "name": "B", "node_url": "http://127.0.0.1:9",
            "vkeys": [b.verifier().vkey()], "roles": ["subscriber"],
            "valid_from": "2020-01-01T00:00:00Z", "valid_until": "2021-01-01T00:00:00Z"})
        status, answer, _ = await _signed(session, node_a, "/v1/sets/grn", b)
        assert status == 401 and "unknown key" in _why(answer)


async def test_pinned_partner(node_a: RunningNode) -> None:
    c = Signer.generate("node-c.test")
    async with aiohttp.ClientSession() as session:
        assert (await _signed(session, node_a, "/v1/sets/grn", c))[0] == 401
        assert await _cli("trust", "partner", "--org", "org-c.test", "--url",
                          "http://127.0.0.1:9", "--vkey", c.verifier().vkey(), "--data",
                          str(node_a.data_dir)) == 0
        assert (await _signed(session, node_a, "/v1/sets/grn", c))[0] == 200
        assert (await _signed(session, node_a, "/v1/sets/amb", c))[0] == 403
        assert await _cli("trust", "remove", "partner", "--org", "org-c.test", "--data",
                          str(node_a.data_dir)) == 0
        assert (await _signed(session, node_a, "/v1/sets/grn", c))[0] == 401


async def test_nonce_store(tmp_path: Path, database_url: str) -> None:
    cfg = await make_node_dir(tmp_path / "n", database_url)
    store = await SqlStore.open(cfg.database_url)
    try:
        fed = FederationStore(store)
        assert await fed.remember_nonce("k+00000000", "a" * 32, 100)
        assert not await fed.remember_nonce("k+00000000", "a" * 32, 100)
        assert await fed.remember_nonce("k+00000001", "a" * 32, 300)
        assert await fed.prune_nonces(200) == 1
        assert await fed.count_nonces() == 1
        assert await fed.remember_nonce("k+00000000", "a" * 32, 400)  # pruned: forgotten
    finally:
        await store.close()


async def test_concurrent_nonces_share_transactions_and_each_is_fresh_once(
    tmp_path: Path, database_url: str
) -> None:
    """Group commit: the nonces of concurrent requests go into a few transactions, yet every
    (keyid, nonce) is fresh exactly once, within a batch, across batches and against nonces
    committed before; each call returns only once its nonce is committed."""
    cfg = await make_node_dir(tmp_path / "n", database_url)
    store = await SqlStore.open(cfg.database_url)
    try:
        fed = FederationStore(store)
        assert await fed.remember_nonce("k+00000000", "old" + "0" * 29, 10**9)
        transactions = 0
        real = store._write_tx

        def counting() -> Any:
            nonlocal transactions
            transactions += 1
            return real()

        store._write_tx = counting  # type: ignore[method-assign]
        nonces = [f"{i:032d}" for i in range(40)]
        calls = [("k+00000000", n) for n in nonces] + [("k+00000000", n) for n in nonces[:10]]
        calls.append(("k+00000000", "old" + "0" * 29))
        calls.append(("k+00000001", nonces[0]))  # another key: its own nonce space
        results = await asyncio.gather(*(fed.remember_nonce(k, n, 10**9) for k, n in calls))
        assert results == [True] * 40 + [False] * 10 + [False, True]
        assert transactions < 10  # 52 requests, a handful of commits
        assert await fed.count_nonces() == 42  # all of them durable, none twice
        store._write_tx = real  # type: ignore[method-assign]
        assert not await fed.remember_nonce("k+00000000", nonces[5], 10**9)
    finally:
        await store.close()


def _membership(author: str, action: str, member: str, **fields: Any) -> PreparedRecord:
    raw: dict[str, Any] = {"type": "membership", "id": new_record_id(), "author": author,
                           "created": timestamp(), "nonce": new_nonce(), "action": action,
                           "member": member, **fields}
    record = Membership.model_validate(raw)
    return PreparedRecord.of(record)


async def test_followed_coordinator_mirror(tmp_path: Path) -> None:
    """A node that trusts coordinator C folds C's members log from its mirror set."""
    cfg = await make_node_dir(tmp_path / "n")
    b = Signer.generate("node-b.test")
    store = await SqlStore.open(cfg.database_url)
    try:
        fed = Federation(store, cfg.org)
        # The view is built again only when the trust rows or a membership log changed.
        builds = 0
        build = fed._build_view

        async def counting(*args: Any) -> Any:
            nonlocal builds
            builds += 1
            return await build(*args)

        fed._build_view = counting  # type: ignore[method-assign, assignment]
        assert await fed.caller_for(b.name, b.key_id) is None
        await asyncio.gather(*(fed.caller_for(b.name, b.key_id) for _ in range(4)))
        assert builds == 1
        await FederationStore(store).add_trust("org-c.test", "coordinator", "http://c",
                                               Signer.generate("c.test").verifier().vkey())
        assert await fed.caller_for(b.name, b.key_id) is None  # mirror not synced yet
        assert builds == 2
        name = members_mirror_name("org-c.test")
        await store.create_mirror(name, "node-c.test/members", remote_url="http://c",
                                  remote_org="org-c.test", remote_set="members", tlp="green")
        admit = _membership("org-c.test", "admit", B_ORG, name="B", node_url="http://b",
                            vkeys=(b.verifier().vkey(),), roles=("publisher",),
                            valid_from="2020-01-01T00:00:00Z")
        await store.append_mirror(name, 0, [MirrorLeaves.of(0, [admit])])
        who = await fed.caller_for(b.name, b.key_id)
        assert who is not None and (who.org, who.source) == (B_ORG, "coordinator:org-c.test")
        assert builds == 3  # the mirror appeared and grew
        node_key = await fed.node_verifier(B_ORG)
        assert node_key == b.verifier()
        log_key = await fed.set_verifier("node-b.test/csam")
        assert log_key == b.with_name("node-b.test/csam").verifier()
        assert await fed.set_verifier("node-x.test/csam") is None
        assert builds == 3  # nothing changed meanwhile
        assert [m.org for m in await fed.members()] == [B_ORG]
        # A pinned row cannot override the coordinator's suspension.
        await FederationStore(store).add_trust(B_ORG, "partner", "http://b", b.verifier().vkey())
        await store.append_mirror(
            name, 1, [MirrorLeaves.of(1, [_membership("org-c.test", "suspend", B_ORG)])]
        )
        assert await fed.caller_for(b.name, b.key_id) is None
        assert await fed.node_verifier(B_ORG) is None
        # A record the rules refuse (a forged author) makes that coordinator vouch for nobody.
        forged = _membership("org-x.test", "admit", B_ORG, name="B", node_url="http://b",
                             vkeys=(b.verifier().vkey(),), roles=("publisher",),
                             valid_from="2020-01-01T00:00:00Z")
        await store.append_mirror(name, 2, [MirrorLeaves.of(2, [forged])])
        assert await fed.caller_for(b.name, b.key_id) is None
        assert name in await fed.problems()
    finally:
        await store.close()


async def test_coordinator_cli_without_server(tmp_path: Path) -> None:
    cfg = await make_node_dir(tmp_path / "c", origin="node-c.test", org="org-c.test")
    b = Signer.generate("node-b.test")
    data = str(cfg.data_dir)
    assert await _cli("coordinator", "admit", "--org", B_ORG, "--node-url", "http://b.test",
                      "--vkey", b.verifier().vkey(), "--valid-until", "2999-01-01",
                      "--data", data) == 0
    new = Signer.generate("node-b.test")
    assert await _cli("coordinator", "rotate", "--org", B_ORG, "--vkey", new.verifier().vkey(),
                      "--data", data) == 0
    with pytest.raises(VerificationError, match="never admitted"):
        await _cli("coordinator", "suspend", "--org", "org-x.test", "--data", data)
    assert await _cli("coordinator", "suspend", "--org", B_ORG, "--data", data) == 0
    service = await NodeService.open(cfg)
    try:
        info = await service.store.get_set("members")
        assert (info.tlp, info.size, info.checkpoint_size) == ("green", 3, 3)
        fed = Federation(service.store, cfg.org)
        (member,) = await fed.members()
        assert (member.status, member.vkeys) == ("suspended", (new.verifier().vkey(),))
    finally:
        await service.close()
    assert await _cli("coordinator", "list", "--json", "--data", data) == 0


async def test_trust_coordinator_learns_its_org(node_a: RunningNode, tmp_path: Path) -> None:
    cfg = await make_node_dir(tmp_path / "follower", origin="node-f.test", org="org-f.test")
    data = str(cfg.data_dir)
    with pytest.raises(BadRequest, match="serves the key"):
        await _cli("trust", "coordinator", "--url", node_a.url, "--vkey",
                   Signer.generate("node-a.test").verifier().vkey(), "--data", data)
    assert await _cli("trust", "coordinator", "--url", node_a.url, "--vkey", node_a.vkey,
                      "--data", data) == 0
    store = await SqlStore.open(cfg.database_url)
    try:
        (anchor,) = await FederationStore(store).list_trust()
        assert (anchor.org, anchor.kind, anchor.url, anchor.vkey) == (
            "org-a.test", "coordinator", node_a.url, node_a.vkey)
    finally:
        await store.close()
