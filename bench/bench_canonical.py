"""Benchmark: canonical record hashing with protocol.jcs against a bare-orjson floor.

Run from the repository root:  python bench/bench_canonical.py [--records N] [--rounds R]

Per record it times (1) the floor, sha256(0x00 ‖ orjson.dumps(r, OPT_SORT_KEYS)) — as fast as
canonical hashing could be in Python, but not JCS in general; (2) ours, sha256(0x00 ‖
canonicalize(r)); (3) the pure-Python reference encoder on a subset, for information. The three
run interleaved in one process, several rounds, and the medians are reported. It also asserts
that (1) and (2) give the same bytes for every record.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Run as a plain script from the repo root, without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from protocol.jcs import JSONValue, canonicalize, canonicalize_reference

REFERENCE_SUBSET = 20_000


def make_records(count: int, seed: int = 1) -> list[dict[str, JSONValue]]:
    """Synthetic record-shaped dicts; every hash and id is random."""
    rng = random.Random(seed)

    def hexstr(nbytes: int) -> str:
        return rng.randbytes(nbytes).hex()

    return [
        {
            "v": 1,
            "type": "entry",
            "id": hexstr(16),
            "author": "org.example",
            "created": "2026-11-26T18:53:27Z",
            "nonce": hexstr(16),
            "hash": {"type": "pdq", "value": hexstr(32), "quality": rng.randint(0, 100)},
            "media": "image",
            "labels": ["ic:A1", "tvec:demo"],
            "generated": "unknown",
            "vetting": {
                "status": "confirmed",
                "reviews": 2,
                "standard": "two-reviewer",
                "at": "2026-11-20T10:00:00Z",
            },
            "provenance": {
                "org": "org.example",
                "node": "node.example/hashfed",
                "record": hexstr(16),
                "first_seen": "2026-11-20T10:00:00Z",
                "chain": [],
            },
        }
        for _ in range(count)
    ]


def floor(records: list[dict[str, JSONValue]]) -> list[bytes]:
    sha256, dumps, option = hashlib.sha256, orjson.dumps, orjson.OPT_SORT_KEYS
    return [sha256(b"\x00" + dumps(r, option=option)).digest() for r in records]


def ours(records: list[dict[str, JSONValue]]) -> list[bytes]:
    sha256 = hashlib.sha256
    return [sha256(b"\x00" + canonicalize(r)).digest() for r in records]


def reference(records: list[dict[str, JSONValue]]) -> list[bytes]:
    sha256 = hashlib.sha256
    return [sha256(b"\x00" + canonicalize_reference(r)).digest() for r in records]


def timed(fn: Callable[[Any], list[bytes]], records: Any) -> float:
    start = time.perf_counter()
    fn(records)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    records = make_records(args.records)
    subset = records[:REFERENCE_SUBSET]

    # Byte identity of (1) and (2) on every record (this pass also warms both paths up).
    sort_keys = orjson.OPT_SORT_KEYS
    for index, record in enumerate(records):
        if canonicalize(record) != orjson.dumps(record, option=sort_keys):
            raise AssertionError(f"record {index}: canonicalize() differs from the floor")
    for index, record in enumerate(subset[:2_000]):
        if canonicalize_reference(record) != orjson.dumps(record, option=sort_keys):
            raise AssertionError(f"record {index}: canonicalize_reference() differs")

    times: dict[str, list[float]] = {"floor": [], "ours": [], "reference": []}
    for _ in range(args.rounds):
        times["floor"].append(timed(floor, records))
        times["ours"].append(timed(ours, records))
        times["reference"].append(timed(reference, subset))

    rate = {
        "floor": len(records) / statistics.median(times["floor"]),
        "ours": len(records) / statistics.median(times["ours"]),
        "reference": len(subset) / statistics.median(times["reference"]),
    }
    print(f"records: {len(records)}, reference subset: {len(subset)}, rounds: {args.rounds}")
    print(f"(1) floor     sha256(0x00 || orjson sorted)   {rate['floor']:>12,.0f} records/s")
    print(f"(2) ours      sha256(0x00 || canonicalize)    {rate['ours']:>12,.0f} records/s")
    print(f"(3) reference sha256(0x00 || reference)       {rate['reference']:>12,.0f} records/s")
    ratio = rate["ours"] / rate["floor"]
    print(f"ours/floor = {ratio:.2f} (goal >= 0.5); byte identity of (1) and (2): ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
