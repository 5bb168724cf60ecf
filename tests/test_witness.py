"""Witnesses on real servers (127.0.0.1): add-checkpoint answers, cosigned checkpoints, quorums,
forks, rollbacks and a split view caught through a witness.

A witness is a running node with DIR/witness.key; a log is a running node whose checkpoints the
witnesses cosign; subscribers are NodeServices that sync with a required witness quorum.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import free_ports
from nodeutil import RunningNode, make_node_dir, serving

from node.config import KEY_FILE, NodeConfig, load_signer
from node.errors import NotFound, SetupError
from node.federation.sync import subscribe, sync_once
from node.service import NodeService
from node.storage.sql import SqlStore, shielded_write
from node.witness import (
    AddCheckpointRequest,
    WitnessStore,
    create_witness_key,
    load_witness_signer,
    parse_add_checkpoint,
)
from protocol import merkle
from protocol.checkpoint import (
    Checkpoint,
    CosignatureSigner,
    CosignatureVerifier,
    add_cosignatures,
    cosignatures,
    parse_checkpoint,
    sign_checkpoint,
    verify_checkpoint,
)
from protocol.errors import InconsistentTreeError, SignatureError
from protocol.note import NoteSignature, Signer, Verifier, split_note
from protocol.verify import check_fork

SET = "csam"
WAIT = 10.0


# -- helpers --------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def witness_node(
    data_dir: Path, origin: str, database_url: str | None = None
) -> AsyncIterator[tuple[RunningNode, str]]:
    """A serving node with a witness key; yields it and the witness's vkey."""
    cfg = await make_node_dir(
        data_dir, database_url, origin=origin, org=origin.replace("node", "org")
    )
    vkey = create_witness_key(cfg).verifier().vkey()
    async with serving(cfg) as node:
        yield node, vkey


@contextlib.asynccontextmanager
async def witness_store(cfg: NodeConfig) -> AsyncIterator[WitnessStore]:
    store = await SqlStore.open(cfg.database_url)
    try:
        yield WitnessStore(store)
    finally:
        await store.close()


def set_key(cfg: NodeConfig, set_name: str = SET) -> Verifier:
    return load_signer(cfg).with_name(f"{cfg.origin}/{set_name}").verifier()


async def publish(node: RunningNode, n: int) -> None:
    items = [{"hash_type": "sha256", "hash_value": os.urandom(32).hex()} for _ in range(n)]
    async with node.client() as client:
        await client.publish(SET, items)


async def wait_for(node: RunningNode, size: int, witnesses: list[CosignatureVerifier]) -> bytes:
    """The node's checkpoint once it has ``size`` leaves and a cosignature from each witness."""
    deadline = time.monotonic() + WAIT
    async with node.client() as client:
        while True:
            with contextlib.suppress(NotFound):
                note = await client.checkpoint(SET)
                cp = parse_checkpoint(split_note(note)[0])
                if cp.size >= size and len(cosignatures(note, witnesses)) == len(witnesses):
                    return note
            if time.monotonic() > deadline:
                raise AssertionError(f"no checkpoint of size {size} cosigned by all in {WAIT} s")
            await asyncio.sleep(0.05)


async def post(url: str, body: bytes) -> tuple[int, str, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/add-checkpoint", data=body) as resp,
    ):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


class FakeLog:
    """A log kept in memory: random leaves, signed checkpoints, consistency proofs."""

    def __init__(self, origin: str, signer: Signer | None = None) -> None:
        self.signer = signer or Signer.generate(origin)
        self.origin = origin
        self.leaves: list[bytes] = []

    def grow(self, n: int) -> bytes:
        self.leaves += [merkle.leaf_hash(os.urandom(16)) for _ in range(n)]
        return self.note(len(self.leaves))

    def note(self, size: int) -> bytes:
        root = merkle.root_from_leaf_hashes(self.leaves[:size])
        return sign_checkpoint(Checkpoint(self.origin, size, root), self.signer)

    def request(self, old: int, size: int) -> bytes:
        proof = merkle.consistency_proof(self.leaves, old, size) if old else []
        note = self.note(size)
        cp = parse_checkpoint(split_note(note)[0])
        return AddCheckpointRequest(old, tuple(proof), note, cp).body()


# -- the witness endpoint -------------------------------------------------------------------------


async def test_add_checkpoint_answers_exactly_as_tlog_witness_says(
    tmp_path: Path, database_url: str
) -> None:
    async with witness_node(tmp_path / "w", "node-w.test", database_url) as (w, wvkey):
        witness = CosignatureVerifier.from_vkey(wvkey)
        log = FakeLog("log.test/a")
        async with witness_store(w.cfg) as ws:
            await ws.add_log(log.origin, log.signer.verifier().vkey())

        # unknown origin: 404; a note no trusted key signed: 403
        status, _, _ = await post(w.url, FakeLog("other.test/x").request(0, 0))
        assert status == 404
        log.grow(5)
        impostor = FakeLog(log.origin)
        impostor.leaves = list(log.leaves)
        assert (await post(w.url, impostor.request(0, 5)))[0] == 403
        # bad syntax: 400
        for body in (b"old 05\n\n" + log.note(5), b"new 0\n\n" + log.note(5), b"old 0\n",
                     b"old 0\nnot base64!\n\n" + log.note(5), b"old 6\n\n" + log.note(5)):
            assert (await post(w.url, body))[0] == 400, body

        # first checkpoint: 200 with one cosignature line that verifies
        status, _, body = await post(w.url, log.request(0, 5))
        assert status == 200 and body.startswith("— ".encode()) and body.count(b"\n") == 1
        cosigned = log.note(5) + body
        verify_checkpoint(cosigned, log.signer.verifier(), witnesses=[witness], quorum=1)

        # old size does not match: 409, text/x.tlog.size, the witness's size
        log.grow(4)
        status, ctype, body = await post(w.url, log.request(0, 9))
        assert (status, ctype, body) == (409, "text/x.tlog.size", b"5\n")
        # a bad consistency proof: 422 (and not cosigned)
        req = parse_add_checkpoint(log.request(5, 9))
        bad = AddCheckpointRequest(5, (os.urandom(32),) * len(req.proof), req.note, req.checkpoint)
        assert (await post(w.url, bad.body()))[0] == 422
        # a non-empty proof from 0 is refused too
        assert (await post(w.url, b"old 0\n" + base64.b64encode(os.urandom(32)) + b"\n\n"
                           + log.note(9)))[0] in (409, 422)
        # a good proof: 200, and the state moves on
        assert (await post(w.url, log.request(5, 9)))[0] == 200
        # the same checkpoint again (old = size, same root): cosigned again
        assert (await post(w.url, log.request(9, 9)))[0] == 200
        async with witness_store(w.cfg) as ws:
            assert await ws.list_logs() == [
                {"origin": log.origin, "vkey": log.signer.verifier().vkey(), "size": 9}
            ]
            assert await ws.store.list_evidence() == []


async def test_a_witness_refuses_a_rollback_and_keeps_both_notes(
    tmp_path: Path, database_url: str
) -> None:
    async with witness_node(tmp_path / "w", "node-w.test", database_url) as (w, _):
        log = FakeLog("log.test/a")
        async with witness_store(w.cfg) as ws:
            await ws.add_log(log.origin, log.signer.verifier().vkey())
        log.grow(8)
        assert (await post(w.url, log.request(0, 8)))[0] == 200
        status, ctype, body = await post(w.url, log.request(0, 3))  # an older, smaller tree
        assert (status, ctype, body) == (409, "text/x.tlog.size", b"8\n")
        async with witness_store(w.cfg) as ws:
            (ev,) = await ws.store.list_evidence()
            assert ev["kind"] == "rollback" and ev["origin"] == log.origin
            assert ev["path"] is None  # both notes may be true: no proof of a lie
            assert split_note(ev["note_a"])[0] == split_note(log.note(8))[0]
            assert ev["note_b"] == log.note(3)
            assert (await ws.list_logs())[0]["size"] == 8


async def test_a_witness_refuses_a_fork_built_from_a_copied_node_key(tmp_path: Path) -> None:
    """Two data dirs with one node key: two histories of one log, only the first is cosigned."""
    async with witness_node(tmp_path / "w", "node-w.test") as (w, wvkey):
        cfg_x, cfg_y = await forked_nodes(tmp_path)
        async with witness_store(w.cfg) as ws:
            await ws.add_log(set_key(cfg_x).name, set_key(cfg_x).vkey())
        witness = CosignatureVerifier.from_vkey(wvkey)
        async with serving(cfg_x) as x, serving(cfg_y) as y:
            for node in (x, y):
                async with node.client() as client:
                    await client.create_set(SET, "clear")
                await publish(node, 4)
            note_x = await wait_for(x, 4, [])
            note_y = await wait_for(y, 4, [])
        assert split_note(note_x)[0] != split_note(note_y)[0]
        body_x = b"old 0\n\n" + note_x
        status, _, cosig = await post(w.url, body_x)
        assert status == 200
        status, ctype, body = await post(w.url, b"old 4\n\n" + note_y)
        assert (status, ctype, body) == (409, "text/x.tlog.size", b"4\n")
        async with witness_store(w.cfg) as ws:
            (ev,) = await ws.store.list_evidence()
        assert ev["kind"] == "fork"
        assert ev["path"] == b""  # one size, two roots: the two notes alone are the proof
        # the stored note carries the witness's cosignature; the evidence checks offline
        assert cosignatures(ev["note_a"], [witness]).keys() == {witness.name}
        with pytest.raises(InconsistentTreeError) as caught:
            check_fork(ev["note_a"], ev["note_b"], set_key(cfg_x))
        assert caught.value.evidence == (ev["note_a"], ev["note_b"])
        assert cosignatures(note_y + b"", [witness]) == {}
        assert cosig  # the honest history was cosigned


async def forked_nodes(tmp_path: Path) -> tuple[NodeConfig, NodeConfig]:
    """Node dirs x and y with the same origin, org and node key (y's key copied from x)."""
    cfg_x = await make_node_dir(tmp_path / "x", origin="node-m.test", org="org-m.test")
    cfg_y = await make_node_dir(tmp_path / "y", origin="node-m.test", org="org-m.test")
    os.chmod(cfg_y.data_dir / KEY_FILE, 0o600)
    os.unlink(cfg_y.data_dir / KEY_FILE)
    shutil.copy2(cfg_x.data_dir / KEY_FILE, cfg_y.data_dir / KEY_FILE)
    assert load_signer(cfg_x).verifier() == load_signer(cfg_y).verifier()
    return cfg_x, cfg_y


# -- the log collects cosignatures ----------------------------------------------------------------


async def test_a_checkpoint_is_cosigned_by_two_witnesses_and_served_with_both(
    tmp_path: Path,
) -> None:
    async with (
        witness_node(tmp_path / "w1", "node-w1.test") as (w1, v1),
        witness_node(tmp_path / "w2", "node-w2.test") as (w2, v2),
    ):
        cfg = await make_node_dir(tmp_path / "a", origin="node-a.test", org="org-a.test")
        key = set_key(cfg)
        for w in (w1, w2):
            async with witness_store(w.cfg) as ws:
                await ws.add_log(key.name, key.vkey())
        async with witness_store(cfg) as ws:
            await ws.use(w1.url, v1)
            await ws.use(w2.url, v2)
        witnesses = [CosignatureVerifier.from_vkey(v) for v in (v1, v2)]
        async with serving(cfg) as a:
            async with a.client() as client:
                await client.create_set(SET, "clear")
            await publish(a, 3)
            note = await wait_for(a, 3, witnesses)
            cp = verify_checkpoint(note, key, witnesses=witnesses, quorum=2)
            assert cp.size == 3
            # the next checkpoint goes with a consistency proof from 3 and is cosigned too
            await publish(a, 300)
            note = await wait_for(a, 303, witnesses)
            assert verify_checkpoint(note, key, witnesses=witnesses, quorum=2).size == 303
        for w in (w1, w2):
            async with witness_store(w.cfg) as ws:
                assert (await ws.list_logs())[0]["size"] == 303

        # a forged cosignature (right name and key ID, wrong bytes) rejects the note
        text, sigs = split_note(note)
        log_line = next(raw for sig, raw in sigs if sig.name == key.name)
        forged = NoteSignature(
            witnesses[0].name, witnesses[0].key_id, (0).to_bytes(8, "big") + os.urandom(64)
        )
        bad = add_cosignatures(text + b"\n" + log_line, [forged])
        with pytest.raises(SignatureError):
            verify_checkpoint(bad, key, witnesses=witnesses, quorum=1)
        # a real cosignature of another checkpoint, moved onto this one
        other = CosignatureSigner.generate(witnesses[0].name)
        moved = add_cosignatures(
            text + b"\n" + log_line, [other.cosign(Checkpoint(key.name, 1, os.urandom(32)).text(),
                                                   1)]
        )
        with pytest.raises(SignatureError):  # other key: ignored, so the quorum is not met
            verify_checkpoint(moved, key, witnesses=witnesses, quorum=1)
        # a genuine one from only one witness does not make a quorum of two
        one = add_cosignatures(
            text + b"\n" + log_line,
            [sig for sig, _ in sigs if sig.name == witnesses[0].name],
        )
        verify_checkpoint(one, key, witnesses=witnesses, quorum=1)
        with pytest.raises(SignatureError, match="quorum is 2"):
            verify_checkpoint(one, key, witnesses=witnesses, quorum=2)


# -- subscribers require a quorum: a split view ---------------------------------------------------

async def _retry_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Wait until the log's collector said it will ask a witness again."""
    deadline = time.monotonic() + WAIT
    while not any("witness(es) again" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, f"no witness retry logged within {WAIT} s"
        await asyncio.sleep(0.05)


@dataclass
class AbsentWitness:
    """Log node dir ``cfg`` with a witness configured at ``listen``, where nothing listens yet;
    the witness's own node dir is ``wcfg`` (serve it on ``listen`` to bring it up)."""

    cfg: NodeConfig
    wcfg: NodeConfig
    listen: str
    key: Verifier
    witness: CosignatureVerifier


async def absent_witness(tmp_path: Path) -> AbsentWitness:
    (port,) = free_ports(1)
    wcfg = await make_node_dir(tmp_path / "w", origin="node-w.test", org="org-w.test")
    witness = create_witness_key(wcfg).verifier()
    cfg = await make_node_dir(tmp_path / "a", origin="node-a.test", org="org-a.test")
    key = set_key(cfg)
    async with witness_store(wcfg) as ws:
        await ws.add_log(key.name, key.vkey())
    async with witness_store(cfg) as ws:
        await ws.use(f"http://127.0.0.1:{port}", witness.vkey())
    return AbsentWitness(cfg, wcfg, f"127.0.0.1:{port}", key, witness)


async def test_a_witness_that_was_down_cosigns_once_it_is_back_without_another_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The checkpoint is signed while the witness is down, and no write follows: the log keeps
    asking (with backoff) until the witness answers, so the quiet set still gets cosigned."""
    caplog.set_level(logging.INFO, logger="hashfed.witness")
    w = await absent_witness(tmp_path)
    async with serving(w.cfg) as a:
        async with a.client() as client:
            await client.create_set(SET, "clear")
        await publish(a, 3)
        await _retry_logged(caplog)  # the first request found nobody listening
        async with serving(w.wcfg, w.listen):
            note = await wait_for(a, 3, [w.witness])
        assert verify_checkpoint(note, w.key, witnesses=[w.witness], quorum=1).size == 3


async def test_a_restarted_log_submits_the_checkpoint_its_witness_never_cosigned(
    tmp_path: Path,
) -> None:
    """The log stops while its witness is down; at its next start it submits the uncosigned
    checkpoint by itself, without waiting for a write."""
    w = await absent_witness(tmp_path)
    async with serving(w.cfg) as a:
        async with a.client() as client:
            await client.create_set(SET, "clear")
        await publish(a, 4)
        note = await wait_for(a, 4, [])
        assert cosignatures(note, [w.witness]) == {}
    async with serving(w.wcfg, w.listen), serving(w.cfg) as a:
        note = await wait_for(a, 4, [w.witness])
        assert verify_checkpoint(note, w.key, witnesses=[w.witness], quorum=1).size == 4


@contextlib.asynccontextmanager
async def answering(status: int) -> AsyncIterator[tuple[str, list[int]]]:
    """A loopback server whose add-checkpoint always answers ``status``; yields its URL and the
    list that grows by one per request."""
    seen: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        seen.append(status)
        return web.Response(status=status, text="no\n")

    app = web.Application()
    app.router.add_post("/add-checkpoint", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}", seen
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(("status", "retried"), [(503, True), (429, True), (404, False)])
async def test_a_witness_is_asked_again_after_a_5xx_or_429_and_never_after_a_refusal(
    tmp_path: Path, status: int, retried: bool
) -> None:
    cfg = await make_node_dir(tmp_path / "a", origin="node-a.test", org="org-a.test")
    vkey = CosignatureSigner.generate("node-w.test/witness").verifier().vkey()
    async with answering(status) as (url, seen):
        async with witness_store(cfg) as ws:
            await ws.use(url, vkey)
        async with serving(cfg) as a:
            async with a.client() as client:
                await client.create_set(SET, "clear")
            await publish(a, 2)
            await wait_for(a, 2, [])
            deadline = time.monotonic() + (WAIT if retried else 2.5)  # retries start within 1 s
            while time.monotonic() < deadline and len(seen) < 2:
                await asyncio.sleep(0.05)
            assert len(seen) >= 2 if retried else seen == [status]


@contextlib.asynccontextmanager
async def subscriber(data_dir: Path, origin: str) -> AsyncIterator[NodeService]:
    cfg = await make_node_dir(data_dir, origin=origin, org=origin.replace("node", "org"))
    service = await NodeService.open(cfg)
    try:
        yield service
    finally:
        await service.close()


async def test_a_split_view_cannot_get_both_histories_cosigned(tmp_path: Path) -> None:
    """Malicious node M shows B history X (node dir x) and C history Y (node dir y, same key).

    B and C both require witness W. W cosigned X, so C's sync is refused, and the two notes are
    evidence of the split view (at W and at C) that check_fork verifies offline.
    """
    async with witness_node(tmp_path / "w", "node-w.test") as (w, wvkey):
        cfg_x, cfg_y = await forked_nodes(tmp_path)
        key = set_key(cfg_x)
        async with witness_store(w.cfg) as ws:
            await ws.add_log(key.name, key.vkey())
        for cfg in (cfg_x, cfg_y):
            async with witness_store(cfg) as ws:
                await ws.use(w.url, wvkey)
        witness = CosignatureVerifier.from_vkey(wvkey)
        async with serving(cfg_x) as x, serving(cfg_y) as y:
            for node in (x, y):
                async with node.client() as client:
                    await client.create_set(SET, "clear")
            await publish(x, 5)
            await wait_for(x, 5, [witness])
            await publish(y, 5)  # the same size, another history: W refuses it
            await asyncio.sleep(1.5)
            async with (
                subscriber(tmp_path / "b", "node-b.test") as b,
                subscriber(tmp_path / "c", "node-c.test") as c,
            ):
                for service in (b, c):
                    ws = WitnessStore(service.store)
                    await ws.require("*", [wvkey], 1)
                    await ws.use(w.url, wvkey)  # where to gossip a refused checkpoint
                await subscribe(b, x.url, SET, vkey=x.vkey)
                await subscribe(c, y.url, SET, vkey=y.vkey)
                result = await sync_once(b, "org-m.test:csam")
                assert result.after == 5
                with pytest.raises(InconsistentTreeError) as caught:
                    await sync_once(c, "org-m.test:csam")
                assert (await c.store.get_set("org-m.test:csam", kind="mirror")).size == 0
                theirs, served = caught.value.evidence
                (ev,) = await c.store.list_evidence()
                assert (ev["kind"], ev["note_a"], ev["note_b"]) == ("fork", theirs, served)
                assert ev["path"] == b""
        # B's mirror holds the cosigned history; the two notes prove the split view offline
        assert cosignatures(theirs, [witness]).keys() == {witness.name}
        with pytest.raises(InconsistentTreeError):
            check_fork(theirs, served, key)
        async with witness_store(w.cfg) as ws:
            kinds = {e["kind"] for e in await ws.store.list_evidence()}
        assert kinds == {"fork"}


async def test_a_quorum_refuses_an_uncosigned_checkpoint_without_gossip_peers(
    tmp_path: Path,
) -> None:
    """Without a witness URL to ask, a missing quorum is a plain SignatureError."""
    cfg = await make_node_dir(tmp_path / "a", origin="node-a.test", org="org-a.test")
    async with serving(cfg) as a:
        async with a.client() as client:
            await client.create_set(SET, "clear")
        await publish(a, 2)
        await wait_for(a, 2, [])
        async with subscriber(tmp_path / "b", "node-b.test") as b:
            wv = CosignatureSigner.generate("w.test/witness").verifier().vkey()
            await WitnessStore(b.store).require("org-a.test:csam", [wv], 1)
            await subscribe(b, a.url, SET, vkey=a.vkey)
            with pytest.raises(SignatureError, match="quorum is 1"):
                await sync_once(b, "org-a.test:csam")
            await WitnessStore(b.store).require("org-a.test:csam", [], 0)  # dropped
            assert (await sync_once(b, "org-a.test:csam")).after == 2


async def test_concurrent_submissions_never_roll_the_witness_back(
    tmp_path: Path, database_url: str
) -> None:
    """tlog-witness's race: many requests at once; the state ends at the largest tree."""
    async with witness_node(tmp_path / "w", "node-w.test", database_url) as (w, _):
        log = FakeLog("log.test/a")
        async with witness_store(w.cfg) as ws:
            await ws.add_log(log.origin, log.signer.verifier().vkey())
        log.grow(20)
        bodies = [log.request(0, size) for size in range(1, 21)]
        statuses = await asyncio.gather(*(post(w.url, b) for b in bodies))
        ok = [size for size, (status, _, _) in zip(range(1, 21), statuses, strict=True)
              if status == 200]
        assert len(ok) == 1  # every request claims old 0: only the first one can pass
        async with witness_store(w.cfg) as ws:
            assert (await ws.list_logs())[0]["size"] == ok[0]


async def test_standalone_witness_serves_only_the_witness(tmp_path: Path) -> None:
    from node.witness import serve_witness

    cfg = await make_node_dir(tmp_path / "w", origin="node-w.test", org="org-w.test")
    with pytest.raises(SetupError, match="witness init"):
        await serve_witness(cfg, "127.0.0.1:0")
    create_witness_key(cfg)
    log = FakeLog("log.test/a")
    async with witness_store(cfg) as ws:
        await ws.add_log(log.origin, log.signer.verifier().vkey())
    port = free_port()
    ready = asyncio.Event()
    task = asyncio.create_task(serve_witness(cfg, f"127.0.0.1:{port}", ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), WAIT)
        url = f"http://127.0.0.1:{port}"
        log.grow(3)
        assert (await post(url, log.request(0, 3)))[0] == 200
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/witness/checkpoint?origin=log.test%2Fa") as resp:
                assert resp.status == 200
                assert split_note(await resp.read())[0] == split_note(log.note(3))[0]
            async with session.get(f"{url}/v1/node") as resp:
                assert resp.status == 404
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- keys and the CLI -----------------------------------------------------------------------------


async def test_witness_key_file_and_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from node.cli_witness import register

    cfg = await make_node_dir(tmp_path / "w", origin="node-w.test", org="org-w.test")
    data = str(cfg.data_dir)
    parser = argparse.ArgumentParser(prog="hashfed")
    register(parser.add_subparsers(dest="command", required=True))

    async def run(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        status: int = await args.func(args)
        return status

    assert load_witness_signer(cfg.data_dir) is None
    assert await run("witness", "init", "--data", data) == 0
    mode = stat.S_IMODE((cfg.data_dir / "witness.key").stat().st_mode)
    assert mode == 0o600
    with pytest.raises(SetupError):
        create_witness_key(cfg)
    capsys.readouterr()
    assert await run("witness", "--data", data, "vkey") == 0  # --data before the subcommand
    vkey = capsys.readouterr().out.strip()
    assert CosignatureVerifier.from_vkey(vkey).name == "node-w.test/witness"
    log = Signer.generate("log.test/a").verifier().vkey()
    assert await run("witness", "add-log", "--data", data, "--origin", "log.test/a",
                     "--vkey", log) == 0
    assert await run("witness", "logs", "--data", data, "--json") == 0
    out: Any = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert out == [{"origin": "log.test/a", "vkey": log, "size": 0}]
    assert await run("witness", "use", "--data", data, "--url", "http://w.test/", "--vkey",
                     vkey) == 0
    assert await run("witness", "require", "--data", data, "--witness", vkey, "--quorum", "1") == 0
    assert "every mirror: 1 of 1 witnesses" in capsys.readouterr().out
    async with witness_store(cfg) as ws:
        (peer,) = await ws.peers()
        assert peer.url == "http://w.test"
        policy = await ws.policy_for("org-x.test:any")
        assert policy is not None and policy.quorum == 1
        with pytest.raises(Exception, match="quorum"):
            await ws.require("*", [vkey], 2)


async def test_a_node_stopping_while_it_stores_cosignatures_lets_that_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping the node cancels its collections, but not a store of cosignatures under way
    (node.shielded says why): the stopped node's checkpoint carries the cosignature."""
    from node import witness as witness_module

    real = witness_module.store_cosignatures.__wrapped__  # type: ignore[attr-defined]
    entered, release, outcomes = asyncio.Event(), asyncio.Event(), []

    @shielded_write  # the gate sits inside the write, as store_cosignatures' own body does
    async def held(*args: Any) -> bool:
        entered.set()
        try:
            await release.wait()
            ok: bool = await real(*args)
        except asyncio.CancelledError:
            outcomes.append("cancelled")
            raise
        outcomes.append("done")
        return ok

    monkeypatch.setattr(witness_module, "store_cosignatures", held)
    async with witness_node(tmp_path / "w", "node-w.test") as (w, vkey):
        cfg = await make_node_dir(tmp_path / "a", origin="node-a.test", org="org-a.test")
        key = set_key(cfg)
        async with witness_store(w.cfg) as ws:
            await ws.add_log(key.name, key.vkey())
        async with witness_store(cfg) as ws:
            await ws.use(w.url, vkey)
        async with serving(cfg) as a:
            async with a.client() as client:
                await client.create_set(SET, "clear")
            await publish(a, 2)
            await asyncio.wait_for(entered.wait(), WAIT)
            asyncio.get_running_loop().call_later(0.3, release.set)  # while the node stops
        assert outcomes == ["done"]
    service = await NodeService.open(cfg)
    try:
        note = (await service.store.get_set(SET)).checkpoint
    finally:
        await service.close()
    assert note is not None
    assert list(cosignatures(note, [CosignatureVerifier.from_vkey(vkey)])) == [vkey.split("+")[0]]
