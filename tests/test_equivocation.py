"""Equivocation proofs: real signed notes that fork verify offline; consistent pairs are refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from protocol import merkle, tiles
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.equivocation import (
    EquivocationProof,
    consistency_evidence,
    evidence_tiles,
    verify_equivocation,
)
from protocol.errors import FormatError, SignatureError, VerificationError
from protocol.note import Signer

ORIGIN = "log.example.org/set"
REPO = Path(__file__).resolve().parent.parent


def _leaves(n: int, seed: int) -> list[bytes]:
    return [merkle.leaf_hash(os.urandom(8) + seed.to_bytes(4) + i.to_bytes(8)) for i in range(n)]


def _note(signer: Signer, hashes: list[bytes]) -> bytes:
    cp = Checkpoint(ORIGIN, len(hashes), merkle.root_from_leaf_hashes(hashes))
    return sign_checkpoint(cp, signer)


@pytest.fixture
def signer() -> Signer:
    return Signer.generate(ORIGIN)


def test_same_size_different_roots_is_equivocation(signer: Signer) -> None:
    a, b = _leaves(10, 1), _leaves(10, 2)
    proof = EquivocationProof(_note(signer, a), _note(signer, b))
    verify_equivocation(proof, signer.verifier())
    again = EquivocationProof.from_json(proof.to_json())
    assert again == proof
    verify_equivocation(again, signer.verifier())


def test_same_note_twice_is_refused(signer: Signer) -> None:
    note = _note(signer, _leaves(10, 1))
    with pytest.raises(VerificationError, match="not equivocation"):
        verify_equivocation(EquivocationProof(note, note), signer.verifier())


@pytest.mark.parametrize(("m", "n"), [(300, 1000), (256, 700), (1, 5), (7, 8)])
def test_fork_across_sizes_with_path_from_larger_tree(signer: Signer, m: int, n: int) -> None:
    honest = _leaves(n, 1)
    forked = _leaves(m, 2)  # the log showed someone a different first m leaves
    big = tiles.update_tiles(0, {}, honest)
    path = consistency_evidence(m, n, {r: big[r] for r in evidence_tiles(m, n)})
    proof = EquivocationProof(_note(signer, forked), _note(signer, honest), path)
    verify_equivocation(proof, signer.verifier())
    # Order of the notes does not matter.
    verify_equivocation(EquivocationProof(proof.note_b, proof.note_a, path), signer.verifier())


@pytest.mark.parametrize(("m", "n"), [(300, 1000), (256, 700)])
def test_consistent_pair_is_refused(signer: Signer, m: int, n: int) -> None:
    honest = _leaves(n, 1)
    big = tiles.update_tiles(0, {}, honest)
    path = consistency_evidence(m, n, big)
    proof = EquivocationProof(_note(signer, honest[:m]), _note(signer, honest), path)
    with pytest.raises(VerificationError, match="is a prefix"):
        verify_equivocation(proof, signer.verifier())


def test_made_up_path_is_refused(signer: Signer) -> None:
    honest, forked = _leaves(1000, 1), _leaves(300, 2)
    big = tiles.update_tiles(0, {}, honest)
    path = list(consistency_evidence(300, 1000, big))
    path[-1] = bytes(32)
    proof = EquivocationProof(_note(signer, forked), _note(signer, honest), tuple(path))
    with pytest.raises(VerificationError, match="proves nothing"):
        verify_equivocation(proof, signer.verifier())
    with pytest.raises(VerificationError, match="without a consistency path"):
        verify_equivocation(
            EquivocationProof(proof.note_a, proof.note_b), signer.verifier()
        )


def test_wrong_key_is_a_signature_error(signer: Signer) -> None:
    proof = EquivocationProof(_note(signer, _leaves(4, 1)), _note(signer, _leaves(4, 2)))
    other = Signer.generate(ORIGIN).verifier()
    with pytest.raises(SignatureError, match="note a"):
        verify_equivocation(proof, other)


@pytest.mark.parametrize(
    "data",
    [b"[]", b'{"type":"other"}', b'{"type":"equivocation","note_a":1,"note_b":"x"}',
     b'{"type":"equivocation","note_a":"a","note_b":"b","consistency_proof":["!"]}',
     b'{"type":"equivocation","note_a":"a","note_b":"b","extra":1}', b"not json"],
)
def test_malformed_json_is_a_format_error(data: bytes) -> None:
    with pytest.raises(FormatError):
        EquivocationProof.from_json(data)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "protocol.audit", *args],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=60,
    )


def test_offline_cli_checks_a_proof_with_the_protocol_package_alone(
    signer: Signer, tmp_path: Path
) -> None:
    honest, forked = _leaves(1000, 1), _leaves(300, 2)
    big = tiles.update_tiles(0, {}, honest)
    good = EquivocationProof(
        _note(signer, forked), _note(signer, honest), consistency_evidence(300, 1000, big)
    )
    (tmp_path / "good.json").write_bytes(good.to_json())
    vkey = signer.verifier().vkey()
    r = _run("--equivocation", str(tmp_path / "good.json"), "--vkey", vkey)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PROVEN" in r.stdout

    consistent = EquivocationProof(
        _note(signer, honest[:300]), _note(signer, honest), consistency_evidence(300, 1000, big)
    )
    (tmp_path / "bad.json").write_bytes(consistent.to_json())
    r = _run("--equivocation", str(tmp_path / "bad.json"), "--vkey", vkey)
    assert r.returncode == 1
    assert "NOT PROVEN" in r.stdout

    r = _run("--equivocation", str(tmp_path / "good.json"))
    assert r.returncode == 2
