"""NodeService: records built from operator input, publish / revoke / lookup / proofs."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.bulkinput import entry_input
from node.config import create_data_dir
from node.errors import BadRequest, Conflict, NotFound
from node.service import NodeService
from node.storage import hash_key
from node.storage.sql import SqlStore
from protocol import merkle
from protocol.checkpoint import verify_checkpoint
from protocol.errors import FormatError
from protocol.records import Entry, Revocation, decode_record


async def open_service(data_dir: Path, database_url: str) -> NodeService:
    cfg = create_data_dir(
        data_dir, origin="node.example", org="org.example", database_url=database_url,
        listen="127.0.0.1:0",
    )
    store = SqlStore.engines(cfg.database_url)
    await store.migrate()
    await store.close()
    return await NodeService.open(cfg)


@pytest.fixture
async def service(tmp_path: Path, database_url: str) -> AsyncIterator[NodeService]:
    svc = await open_service(tmp_path / "node", database_url)
    try:
        yield svc
    finally:
        await svc.close()


def line(**kw: Any) -> dict[str, Any]:
    return {"hash_type": "sha256", "hash_value": os.urandom(32).hex(), **kw}


timestamps = st.sampled_from([None, "2026-01-02T03:04:05Z", "2020-02-29T23:59:59Z"])
texts = st.none() | st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=30
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hash_type=st.sampled_from(["md5", "sha1", "sha256", "pdq", "photodna", "vpdq", "tmk_pdqf"]),
    upper=st.booleans(),
    labels=st.lists(st.sampled_from(["ic:A1", "ic:B2", "tvec:x", "ncii:y-z"]), unique=True),
    generated=st.sampled_from([None, "generated", "not_generated", "unknown"]),
    status=st.sampled_from([None, "confirmed", "unconfirmed"]),
    standard=texts,
    source_ref=texts,
    vetted_at=timestamps,
    first_seen=timestamps,
    expires=timestamps,
)
def test_built_entry_bytes_are_its_canonical_encoding(
    tmp_path_factory: pytest.TempPathFactory, hash_type: str, upper: bool, labels: list[str],
    generated: str | None, status: str | None, standard: str | None, source_ref: str | None,
    vetted_at: str | None, first_seen: str | None, expires: str | None,
) -> None:
    n = {"md5": 16, "sha1": 20, "sha256": 32, "pdq": 32, "photodna": 144, "tmk_pdqf": 1024}
    if hash_type == "vpdq":
        value = ",".join(f"{os.urandom(32).hex()}:{q}" for q in (1, 99))
    else:
        value = os.urandom(n[hash_type]).hex()
    raw: dict[str, Any] = {"hash_type": hash_type, "hash_value": value.upper() if upper else value,
                           "labels": labels}
    if hash_type == "pdq":
        raw["quality"] = 80
    optional = {"generated": generated, "vetting_status": status, "review_standard": standard,
                "source_ref": source_ref, "vetted_at": vetted_at, "first_seen": first_seen,
                "expires": expires}
    raw.update({k: v for k, v in optional.items() if v is not None})
    svc = NodeService.__new__(NodeService)  # build_entry needs only the config
    svc.cfg = type("Cfg", (), {"org": "org.example"})()
    prepared = svc.build_entry(entry_input(raw), "node.example/set", "2026-11-26T00:00:00Z")
    record = decode_record(prepared.data)
    assert isinstance(record, Entry) and prepared.record.id == record.id
    assert prepared.hash_key == hash_key(record.hash.type, record.hash.value)
    assert prepared.leaf_hash == merkle.leaf_hash(prepared.data)


async def test_publish_revoke_lookup(service: NodeService) -> None:
    info = await service.create_set("csam", "amber", "test set")
    assert info.origin == "node.example/csam"
    with pytest.raises(Conflict):
        await service.create_set("csam", "amber")
    with pytest.raises(BadRequest):
        await service.create_set("Bad Name", "amber")
    with pytest.raises(BadRequest):
        await service.create_set("x", "purple")

    items = [entry_input(line(labels=["ic:A1"])) for _ in range(300)]
    results = await service.publish("csam", items)
    assert [r.index for r in results] == list(range(300))
    again = await service.publish("csam", items[:5])
    assert [r.status for r in again] == ["duplicate"] * 5

    target = items[7]
    rev = await service.revoke("csam", hash_type="sha256", hash_value=target.hash_value.upper(),
                               reason="false_positive")
    assert rev.index == 300
    with pytest.raises(NotFound):
        await service.revoke("csam", hash_type="sha256", hash_value=target.hash_value,
                             reason="duplicate")
    with pytest.raises(BadRequest):
        await service.revoke("csam", entry_id=results[8].record_id, reason="because")
    rev2 = await service.revoke("csam", entry_id=results[8].record_id, reason="other",
                                text="court order 12")
    with pytest.raises(Conflict):
        await service.revoke("csam", entry_id=results[8].record_id, reason="duplicate")
    assert rev2.index == 301

    await service.sequencer.checkpoint("csam")
    info = await service.store.get_set("csam")
    assert info.checkpoint is not None
    cp = verify_checkpoint(info.checkpoint, service.verifier_for(info))
    assert cp.size == 302 and cp.origin == "node.example/csam"

    answers = await service.lookup("sha256", target.hash_value, [info])
    assert len(answers) == 1
    (a,) = answers
    assert isinstance(a.entry, Entry) and a.stored.index == 7
    assert isinstance(a.revocation, Revocation) and a.revocation.reason == "false_positive"
    proof = await service.inclusion_proof(info, 7, cp.size)
    merkle.verify_inclusion(merkle.leaf_hash(a.stored.data), 7, cp.size, proof, cp.root_hash)
    old_root = merkle.root_from_leaf_hashes(
        [merkle.leaf_hash(d) for d in await service.store.read_entries(info.id, 0, 100)])
    cproof = await service.consistency_proof(info, 100, cp.size)
    merkle.verify_consistency(100, cp.size, old_root, cp.root_hash, cproof)
    with pytest.raises(NotFound):
        await service.inclusion_proof(info, 0, cp.size + 1)
    with pytest.raises(BadRequest):
        await service.inclusion_proof(info, cp.size, cp.size)
    with pytest.raises(FormatError):
        await service.lookup("sha256", "zz", [info])
    assert await service.lookup("md5", os.urandom(16).hex(), [info]) == []


async def test_export_is_a_tlog_tiles_directory(service: NodeService, tmp_path: Path) -> None:
    await service.create_set("s", "clear")
    await service.publish("s", [entry_input(line()) for _ in range(700)])
    await service.sequencer.checkpoint("s")
    info = await service.store.get_set("s")
    out = tmp_path / "export"
    size = await service.export(info, out)
    assert size == 700
    assert (out / "checkpoint").read_bytes() == info.checkpoint
    assert (out / "tile/0/000").stat().st_size == 256 * 32
    assert (out / "tile/0/002.p/188").stat().st_size == 188 * 32
    assert (out / "tile/1/000.p/2").exists()
    assert (out / "tile/entries/002.p/188").exists()


async def test_attestation_counts_respect_what_the_caller_may_read(service: NodeService) -> None:
    green = await service.create_set("g", "green")
    amber = await service.create_set("a", "amber")
    item = entry_input(line())
    (res,) = await service.publish("g", [item])
    await service.attest("a", target_origin=green.origin, target=res.record_id,
                         hash_type="sha256", hash_value=item.hash_value, opinion="agree")
    (ans,) = await service.lookup("sha256", item.hash_value, [green])
    everything = await service.view_fields(ans)
    assert everything["attestations"]["counts"]["agree"] == 1
    green_only = await service.view_fields(ans, {green.id})
    assert green_only["attestations"]["counts"]["agree"] == 0
    assert green_only["attestations"]["orgs"] == []
    assert amber.id not in {green.id}
