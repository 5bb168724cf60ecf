"""kill -9 at arbitrary moments: nothing acknowledged is lost, nothing is duplicated, the log and
its last checkpoint still verify.

A real `hashfed serve` process takes a stream of small publish requests from several concurrent
clients and is killed with SIGKILL after a varying delay, three times over, then restarted once
more. Every entry whose publish call was acknowledged must be in the log exactly once; the stored
tree must equal the tree recomputed from the stored leaves; the latest checkpoint must verify and
be consistent with the tree; and an export of the set must pass the offline audit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from nodeutil import make_node_dir

from node.client import OperatorClient
from node.config import load_operator_token
from node.errors import NodeError
from node.service import NodeService
from protocol import merkle
from protocol.audit import audit_directory
from protocol.checkpoint import verify_checkpoint
from protocol.records import Entry, decode_record

REPO = Path(__file__).resolve().parent.parent


def start_server(data: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "node.cli", "serve", "--data", str(data),
         "--listen", f"127.0.0.1:{port}"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


async def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "hashfed serve exited early"
            try:
                async with session.get(url + "/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never became ready")


async def publisher(url: str, token: str, acked: dict[str, int], stop: asyncio.Event) -> None:
    """Publish batches of 5 until the server dies; remember what was acknowledged."""
    async with OperatorClient(url, token) as client:
        while not stop.is_set():
            values = [os.urandom(32).hex() for _ in range(5)]
            try:
                results = await client.publish(
                    "crash", [{"hash_type": "sha256", "hash_value": v} for v in values])
            except (TimeoutError, NodeError, aiohttp.ClientError, OSError):
                return  # the server is gone: this batch was never acknowledged
            for v, r in zip(values, results, strict=True):
                assert r.status == "appended"
                acked[v] = r.index


@pytest.mark.slow
async def test_kill_9_loses_nothing_acknowledged(
    tmp_path: Path, database_url: str, free_port: int
) -> None:
    cfg = await make_node_dir(tmp_path / "node", database_url)
    service = await NodeService.open(cfg)
    try:
        await service.create_set("crash", "clear")
    finally:
        await service.close()
    token = load_operator_token(cfg)
    url = f"http://127.0.0.1:{free_port}"
    acked: dict[str, int] = {}

    for delay in (0.4, 0.9, 1.6):
        proc = start_server(cfg.data_dir, free_port)
        try:
            await wait_ready(url, proc)
            stop = asyncio.Event()
            tasks = [asyncio.create_task(publisher(url, token, acked, stop)) for _ in range(4)]
            await asyncio.sleep(delay)
            proc.send_signal(signal.SIGKILL)  # no shutdown, no final checkpoint
            proc.wait(timeout=30)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        (cfg.data_dir / "serve.json").unlink(missing_ok=True)  # as a crashed server leaves it

    assert len(acked) > 0, "no publish was acknowledged before the kills; the test proved nothing"
    # Restart once more: start-up signs a checkpoint over whatever the crash left uncovered.
    proc = start_server(cfg.data_dir, free_port)
    try:
        await wait_ready(url, proc)
        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # bounded wait for the start-up checkpoint
                async with session.get(url + "/v1/sets/crash") as r:
                    body = await r.json()
                if body["size"] > 0 and body["size"] >= max(acked.values()) + 1:
                    break
                await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)

    service = await NodeService.open(cfg)
    try:
        info = await service.store.get_set("crash")
        leaves = await service.store.read_entries(info.id, 0, info.size)
        assert len(leaves) == info.size
        values = []
        for i, data in enumerate(leaves):
            rec = decode_record(data)
            assert isinstance(rec, Entry)
            values.append(rec.hash.value)
            if rec.hash.value in acked:
                assert acked[rec.hash.value] == i, "an acknowledged index changed"
        assert len(values) == len(set(values)), "an entry was stored twice"
        assert set(acked) <= set(values), "an acknowledged entry was lost"
        assert info.root == merkle.root_from_leaf_hashes([merkle.leaf_hash(d) for d in leaves])
        assert info.checkpoint is not None and info.checkpoint_size == info.size
        cp = verify_checkpoint(info.checkpoint, service.verifier_for(info))
        assert (cp.size, cp.root_hash) == (info.size, info.root)
        export = tmp_path / "export"
        await service.export(info, export)
    finally:
        await service.close()
    summary = audit_directory(export)
    assert summary.size == info.size
