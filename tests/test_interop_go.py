"""Off-the-shelf verification: Go's golang.org/x/mod/sumdb/note and sumdb/tlog accept our output.

tests/interop/tlogverify.go (built here from Debian's golang-golang-x-mod-dev source) opens an
export's checkpoint with note.Open, authenticates every hash tile with tlog.TileHashReader against
the signed root, and checks inclusion and consistency proofs with tlog.CheckRecord / CheckTree.
Nothing of ours runs on the verifying side.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import in_ci

from node.bulkinput import entry_input
from node.config import create_data_dir
from node.service import NodeService
from node.storage.sql import SqlStore

HERE = Path(__file__).parent
X_MOD = Path("/usr/share/gocode/src/golang.org/x/mod/sumdb")


@pytest.fixture(scope="module")
def tlogverify(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    go = shutil.which("go")
    if go is None or not X_MOD.is_dir():
        reason = (
            "Go and golang.org/x/mod are needed "
            "(apt-get install golang-go golang-golang-x-mod-dev)"
        )
        if in_ci():
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("go")
    shutil.copy(HERE / "interop" / "tlogverify.go", work / "tlogverify.go")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": "/usr/share/gocode",
        "GOCACHE": str(work / "cache"),
        "GOFLAGS": "",
    }
    subprocess.run([go, "build", "-o", "tlogverify", "tlogverify.go"], cwd=work, env=env,
                   check=True, capture_output=True, timeout=300)
    yield work / "tlogverify"


def run(binary: Path, export: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), str(export)], capture_output=True, text=True, timeout=120)


def test_go_verifies_the_committed_vectors(tlogverify: Path) -> None:
    out = run(tlogverify, HERE / "vectors" / "hashfed" / "export")
    assert out.returncode == 0, out.stdout
    assert out.stdout.strip() == "ok 7"


async def test_go_verifies_a_node_export_and_catches_a_tampered_tile(
    tlogverify: Path, tmp_path: Path
) -> None:
    cfg = create_data_dir(tmp_path / "node", origin="interop.example", org="interop.example",
                          database_url=None, listen="127.0.0.1:0")
    store = SqlStore.engines(cfg.database_url)
    await store.migrate()
    await store.close()
    service = await NodeService.open(cfg)
    try:
        await service.create_set("go", "clear")
        for _ in range(3):  # several appends: partial tiles grow between them
            items = [entry_input({"hash_type": "md5", "hash_value": os.urandom(16).hex()})
                     for _ in range(250)]
            await service.publish("go", items)
        await service.sequencer.checkpoint("go")
        info = await service.store.get_set("go")
        export = tmp_path / "export"
        assert await service.export(info, export) == 750
    finally:
        await service.close()

    out = run(tlogverify, export)
    assert out.returncode == 0, out.stdout
    assert out.stdout.strip() == "ok 750"

    tile = export / "tile" / "0" / "001"
    data = bytearray(tile.read_bytes())
    data[40] ^= 1
    tile.write_bytes(bytes(data))
    out = run(tlogverify, export)
    assert out.returncode == 1
    assert out.stdout.startswith("FAIL")
