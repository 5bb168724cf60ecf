"""Benchmark: offline audit of a tlog-tiles export against a bare hashing floor.

Run from the repository root:  python bench/bench_audit.py [--leaves N] [--dir PATH] [--keep]

It writes a synthetic export of N leaves (default 1,000,000; random hashes and ids, about 1%
revocations) with tiles.update_tiles, encode_entry_bundle and sign_checkpoint, then times:

1. the floor: SHA-256 leaf hashes of the same leaves (already in memory) plus the root with
   merkle.root_from_leaf_hashes — the least any audit has to do;
2. the audit: ``protocol.audit.main([DIR, "--json"])`` in a fresh interpreter (wall time,
   interpreter start included, and its peak RSS), which also reads every file, validates every
   record, checks revocations and compares every hash tile;
3. for the breakdown, decode_record alone on a sample of leaves, extrapolated to N.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a plain script from the repo root, without installing the package.
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from protocol import merkle, tiles  # noqa: E402
from protocol.checkpoint import Checkpoint, sign_checkpoint  # noqa: E402
from protocol.note import Signer  # noqa: E402
from protocol.records import decode_record, encode_record, record_from_dict  # noqa: E402
from protocol.tiles import TILE_WIDTH  # noqa: E402

ORIGIN = "bench.example.org/audit"
DECODE_SAMPLE = 20_000

# The audit runs in a fresh interpreter, exactly like `python -m protocol.audit DIR --json`, and
# reports its own peak RSS (VmHWM belongs to the new address space, so unlike ru_maxrss it does
# not include the parent's pages that a fork briefly shares).
CHILD = """
import re, sys
from protocol.audit import main
code = main([sys.argv[1], "--json"])
print(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1), file=sys.stderr)
raise SystemExit(code)
"""


def _template(kind: str) -> bytes:
    """One canonical record whose hex fields are then swapped for fresh random hex of the same
    length: canonical form is preserved (same keys, same lengths, hex only), and building a
    million records this way takes seconds instead of a minute of pydantic."""
    base: dict[str, Any] = {
        "id": "1" * 32,
        "author": "org.example",
        "created": "2026-11-26T18:53:27Z",
        "nonce": "2" * 32,
    }
    if kind == "entry":
        rec = {
            **base,
            "type": "entry",
            "hash": {"type": "pdq", "value": "3" * 64, "quality": 90},
            "media": "image",
            "labels": ["ic:A1"],
            "vetting": {"status": "confirmed", "reviews": 2, "standard": "two-reviewer"},
            "provenance": {
                "org": "org.example",
                "node": ORIGIN,
                "record": "1" * 32,
                "first_seen": "2026-11-20T10:00:00Z",
            },
        }
    else:
        rec = {
            **base,
            "type": "revocation",
            "target": "4" * 32,
            "target_hash": {"type": "pdq", "value": "3" * 64},
            "reason": "duplicate",
        }
    return encode_record(record_from_dict(rec))


def make_leaves(n: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    entry_t, rev_t = _template("entry"), _template("revocation")
    leaves: list[bytes] = []
    live: list[tuple[bytes, bytes]] = []  # (id hex, hash hex) of unrevoked entries
    for _ in range(n):
        if live and rng.random() < 0.01:
            tid, thash = live.pop(rng.randrange(len(live)))
            rec = rev_t.replace(b"1" * 32, rng.randbytes(16).hex().encode())
            rec = rec.replace(b"2" * 32, rng.randbytes(16).hex().encode())
            rec = rec.replace(b"4" * 32, tid).replace(b"3" * 64, thash)
        else:
            rid = rng.randbytes(16).hex().encode()
            h = rng.randbytes(32).hex().encode()
            nonce = rng.randbytes(16).hex().encode()
            rec = entry_t.replace(b"1" * 32, rid).replace(b"2" * 32, nonce).replace(b"3" * 64, h)
            live.append((rid, h))
        leaves.append(rec)
    return leaves


def write_export(root: Path, leaves: list[bytes], signer: Signer) -> Checkpoint:
    hashes = [merkle.leaf_hash(x) for x in leaves]
    for ref, data in tiles.update_tiles(0, {}, hashes).items():
        (root / ref.path()).parent.mkdir(parents=True, exist_ok=True)
        (root / ref.path()).write_bytes(data)
    for n in range(-(-len(leaves) // TILE_WIDTH)):
        ref = tiles.tile_ref_at(0, n, len(leaves), is_entries=True)
        bundle = leaves[n * TILE_WIDTH : n * TILE_WIDTH + ref.width]
        (root / ref.path()).parent.mkdir(parents=True, exist_ok=True)
        (root / ref.path()).write_bytes(tiles.encode_entry_bundle(bundle))
    cp = Checkpoint(ORIGIN, len(leaves), merkle.root_from_leaf_hashes(hashes))
    (root / "checkpoint").write_bytes(sign_checkpoint(cp, signer))
    (root / "vkey").write_text(signer.verifier().vkey() + "\n")
    return cp


def floor(leaves: list[bytes]) -> tuple[float, bytes]:
    t = time.perf_counter()
    sha = hashlib.sha256
    hashes = [sha(b"\x00" + x).digest() for x in leaves]
    root = merkle.root_from_leaf_hashes(hashes)
    return time.perf_counter() - t, root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, help="where to write the export (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the export afterwards")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; medians reported")
    args = parser.parse_args()

    t = time.perf_counter()
    leaves = make_leaves(args.leaves)
    print(f"generated {len(leaves):,} leaves ({sum(map(len, leaves)) / 1e6:.0f} MB) "
          f"in {time.perf_counter() - t:.1f} s")
    root = args.dir or Path(tempfile.mkdtemp(prefix="hashfed-bench-audit-"))
    root.mkdir(parents=True, exist_ok=True)
    signer = Signer.generate(ORIGIN)
    t = time.perf_counter()
    cp = write_export(root, leaves, signer)
    # Flush the 0.5 GB just written, so that the kernel's write-back of it does not run during
    # the timed floors and audits (it took up to a second of each early audit).
    os.sync()
    print(f"wrote export to {root} in {time.perf_counter() - t:.1f} s (flushed to disk)")

    sample = leaves[:: max(1, len(leaves) // DECODE_SAMPLE)][:DECODE_SAMPLE]
    t = time.perf_counter()
    for x in sample:
        decode_record(x)
    per_decode = (time.perf_counter() - t) / len(sample)
    print(f"decode_record alone, extrapolated:             {per_decode * len(leaves):8.2f} s "
          f"({per_decode * 1e6:.1f} us/leaf)")
    del sample

    # Floor and audit alternate, so that both see the same neighbours on a shared machine.
    floors, runs = [], []
    for i in range(args.repeat):
        s, floor_root = floor(leaves)
        assert floor_root == cp.root_hash
        floors.append(s)
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(root)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        runs.append(time.perf_counter() - t)
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr)
            return 1
        print(f"  pair {i + 1}: floor {floors[-1]:.2f} s, audit {runs[-1]:.2f} s, "
              f"ratio {floors[-1] / runs[-1]:.3f}")
    del leaves
    floor_s = statistics.median(floors)
    audit_s = statistics.median(runs)
    print(f"floor  (sha256 leaves + root_from_leaf_hashes): {floor_s:8.2f} s "
          f"(median of {args.repeat})")
    peak_mb = int(proc.stderr.strip().splitlines()[-1]) / 1024
    summary = json.loads(proc.stdout)["summary"]
    assert summary["root_hash"] == cp.root_hash.hex()
    print(f"audit  (protocol.audit.main, fresh process):   {audit_s:8.2f} s "
          f"= {audit_s / floor_s:.0f}x floor, {audit_s / summary['size'] * 1e6:.1f} us/leaf, "
          f"peak RSS {peak_mb:.0f} MB")
    ratios = [f / a for f, a in zip(floors, runs, strict=True)]
    print(f"median of the pairs' ratios: {statistics.median(ratios):.3f}")
    print(f"side by side (medians): floor {floor_s:.2f} s | ours {audit_s:.2f} s | "
          f"ours runs at {floor_s / audit_s:.3f}x the floor's speed (goal >= 0.5x)")
    print(f"       entries {summary['entries']:,}, revoked {summary['revoked']:,}, "
          f"hash tiles {summary['hash_tiles']:,}, bundles {summary['bundles']:,}")
    if not args.keep and args.dir is None:
        shutil.rmtree(root)
    else:
        print(f"export kept in {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
