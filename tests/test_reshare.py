"""Re-sharing rules, receipts endpoint, crash idempotence, attestations and export-view.

Nodes are real servers on 127.0.0.1 (the helpers of test_federation_e2e), trust through a
coordinator's membership log.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
from sqlalchemy import delete
from test_federation_e2e import checkpointed, federation, lookup, setup_chain, sha256_item

from node.errors import BadRequest, NotFound
from node.federation.fetch import PeerClient, PeerError
from node.federation.reshare import reshare_synced
from node.federation.sync import subscribe, sync_once
from node.storage.schema import reshares


async def test_reshare_refuses_strict_tlp_and_less_restrictive_targets(tmp_path: Path) -> None:
    async with federation(tmp_path) as (_coord, a, b, _c):
        async with a.client() as op:
            await op.create_set("red", "red")
            await op.create_set("amb", "amber")
        async with b.client() as op:
            await op.create_set("green", "green")
        from node.storage.federation import FederationStore

        a_fed = FederationStore(a.service.store)
        await a_fed.grant("red", b.org)
        await a_fed.grant("amb", b.org)
        with pytest.raises(BadRequest, match="never re-shared"):
            await subscribe(b.service, a.url, "red", reshare_into="green")
        with pytest.raises(BadRequest, match="less restrictive"):
            await subscribe(b.service, a.url, "amb", reshare_into="green")
        with pytest.raises(NotFound):
            await subscribe(b.service, a.url, "amb", reshare_into="nope")
        assert [s.name for s in await b.service.store.list_sets(kind="mirror")] == [
            "coord.test:members"
        ]


async def test_receipts_endpoint_and_crash_idempotence(tmp_path: Path) -> None:
    async with federation(tmp_path) as (_coord, a, b, c):
        await setup_chain(a, b, c)
        items = [sha256_item() for _ in range(3)]
        async with a.client() as op:
            await op.publish("green", items)
        await checkpointed(a, "green")
        await sync_once(b.service, "org-a.test:green")
        green = await b.service.store.get_set("green")
        assert green.size == 3
        async with PeerClient(b.url, c.service.signer) as peer:
            receipt = json.loads(await peer.get("/v1/sets/green/receipts/1", 1 << 20))
            assert (receipt["origin"], receipt["index"]) == ("node-a.test/green", 1)
            with pytest.raises(PeerError, match="HTTP 404"):
                await peer.get("/v1/sets/green/receipts/3", 1 << 20)
        # A crash between the append and the receipt row: the row is gone, the entry is not.
        async with b.service.store._write_tx() as conn:
            await conn.execute(delete(reshares).where(reshares.c.idx == 2))
        mirror = await b.service.store.get_set("org-a.test:green", kind="mirror")
        result = await reshare_synced(b.service, mirror, 0)
        assert (result.reshared, result.skipped) == (1, 0)  # the receipt, not a second entry
        assert (await b.service.store.get_set("green")).size == 3
        assert await b.service.store.get_receipt(green.id, 2) is not None
        again = await reshare_synced(b.service, mirror, 0)
        assert (again.reshared, again.revoked, again.skipped) == (0, 0, 0)


def view_args(argv: list[str]) -> argparse.Namespace:
    from node.cli_federation_view import register

    parser = argparse.ArgumentParser(prog="hashfed")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


async def test_attestations_in_the_merged_view_and_export(tmp_path: Path) -> None:
    from node.cli_federation_view import export_view

    async with federation(tmp_path) as (_coord, a, b, c):
        await setup_chain(a, b, c)
        kept, dropped = sha256_item(), sha256_item()
        async with a.client() as op:
            published = await op.publish("green", [kept, dropped])
            await op.revoke("green", entry_id=published[1].record_id, reason="quality")
        await checkpointed(a, "green")
        await sync_once(b.service, "org-a.test:green")
        async with b.client() as op:
            await op.create_set("notes", "green")
        # B attests A's original; C attests B's copy: both count for the signal
        await b.service.attest("notes", target_origin="node-a.test/green",
                               target=published[0].record_id, hash_type="sha256",
                               hash_value=kept["hash_value"], opinion="agree")
        await b.service.attest("notes", target_origin="node-a.test/green",
                               target=published[0].record_id, hash_type="sha256",
                               hash_value=kept["hash_value"], opinion="sighting", count=7)
        (copy,) = [m for m in await lookup(b, kept["hash_value"]) if m["set"] == "green"]
        summary = copy["attestations"]
        assert summary["counts"]["agree"] == 1 and summary["counts"]["sighting"] == 1
        assert (summary["orgs"], summary["sightings"]) == (["org-b.test"], 7)
        with pytest.raises(Exception, match="reason"):
            await b.service.attest("notes", target_origin="node-a.test/green",
                                   target=published[0].record_id, hash_type="sha256",
                                   hash_value=kept["hash_value"], opinion="disagree")

        out = io.StringIO()
        assert await export_view(b.service, out, "jsonl") == 2  # A's kept entry, B's copy
        rows = [json.loads(line) for line in out.getvalue().splitlines()]
        assert {(r["set"], r["org"], r["hash_value"]) for r in rows} == {
            ("org-a.test:green", "org-a.test", kept["hash_value"]),
            ("green", "org-b.test", kept["hash_value"]),
        }
        csv_out = io.StringIO()
        assert await export_view(b.service, csv_out, "csv") == 2
        header, *lines = csv_out.getvalue().splitlines()
        assert header == "hash_type,hash_value,quality,labels,set,origin,org,index"
        assert all(",ic:A1," in line for line in lines)


async def test_cli_attest_and_export_view(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    from nodeutil import make_node_dir

    from node.service import NodeService

    cfg = await make_node_dir(tmp_path / "n", origin="node-n.test", org="org-n.test")
    service = await NodeService.open(cfg)
    try:
        await service.create_set("own", "green")
    finally:
        await service.close()
    data = str(cfg.data_dir)
    target = "0" * 32
    args = view_args(["attest", "--data", data, "--set", "own", "--target-origin",
                      "node-x.test/s", "--target", target, "--hash-type", "sha256",
                      "--hash-value", "ab" * 32, "--opinion", "also_vetted"])
    assert await args.func(args) == 0
    assert "attested (also_vetted) in own" in capsys.readouterr().out
    out = tmp_path / "view.csv"
    args = view_args(["export-view", "--data", data, "--out", str(out)])
    assert await args.func(args) == 0
    assert out.read_text().splitlines() == [
        "hash_type,hash_value,quality,labels,set,origin,org,index"
    ]


async def test_reshare_policy_labels_vetting_and_attestations(tmp_path: Path) -> None:
    from sqlalchemy import update

    from node.federation.reshare import ResharePolicy
    from node.storage.schema import sets

    async with federation(tmp_path) as (_coord, a, b, c):
        await setup_chain(a, b, c)
        policy = ResharePolicy(labels=("ic:*",), min_reviews=2, min_attestations=1)
        async with b.service.store._write_tx() as conn:
            await conn.execute(
                update(sets).where(sets.c.name == "org-a.test:green")
                .values(reshare_policy=policy.to_json())
            )
        wanted = {**sha256_item(), "reviews": 2}
        other_label = {**sha256_item(), "labels": ["tvec:x"], "reviews": 3}
        too_few_reviews = {**sha256_item(), "reviews": 1}
        async with a.client() as op:
            published = await op.publish("green", [wanted, other_label, too_few_reviews])
        await checkpointed(a, "green")
        await sync_once(b.service, "org-a.test:green")
        # nothing yet: two entries fail the policy for good, one waits for an attestation
        assert (await b.service.store.get_set("green")).size == 0
        mirror = await b.service.store.get_set("org-a.test:green", kind="mirror")
        assert await b.service.store.list_pending(mirror.id) == [0]

        async with b.client() as op:
            await op.create_set("notes", "green")
        await b.service.attest("notes", target_origin="node-a.test/green",
                               target=published[0].record_id, hash_type="sha256",
                               hash_value=wanted["hash_value"], opinion="also_vetted")
        result = await reshare_synced(b.service, mirror, mirror.size)
        assert result.reshared == 1
        assert await b.service.store.list_pending(mirror.id) == []
        (copy,) = [m for m in await lookup(b, wanted["hash_value"]) if m["set"] == "green"]
        assert copy["state"] == "active"
        for item in (other_label, too_few_reviews):
            assert [m for m in await lookup(b, item["hash_value"]) if m["set"] == "green"] == []
