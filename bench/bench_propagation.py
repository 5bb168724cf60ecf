"""Revocation propagation over loopback: A revokes, how soon C's view shows it through B.

The three-node federation of tests/test_federation_e2e.py (reused, not copied: a coordinator
admits A, B and C; A publishes to a green set; B mirrors it with ``reshare_into``; C mirrors B's
set), all in this process on 127.0.0.1, with B and C following their subscriptions through
``run_subscriptions`` as ``hashfed serve`` does (event stream plus polling).

For each of N revocations on A (one at a time, each once the previous one reached C), two
observation points are timed from the moment the operator request to A is sent:

* **one hop** (the baseline): B's mirror of A's set shows the entry revoked (A signed a checkpoint,
  pushed it, B synced and verified it);
* **two hops**: C's mirror of B's set shows B's copy revoked (as well: B appended its own
  revocation in that same sync, signed a checkpoint and pushed it, C synced and verified it).

Both states are polled every ``--poll`` seconds; every wait is bounded (20 s per revocation).
``--gap`` waits that long after a revocation reached C before the next one: a node signs a
checkpoint as soon as its tree grows, then rests its checkpoint interval (0.25 s; the sequencer
sleeps after signing), so back-to-back revocations (gap 0) can wait up to that long at A and
again at B, and a gap over the interval shows the path without that wait.

    .venv/bin/python bench/bench_propagation.py [--revocations 50] [--gap 0] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from test_federation_e2e import (  # noqa: E402
    WAIT,
    Node,
    federation,
    percentile,
    setup_chain,
    sha256_item,
    wait_for,
)

from node.federation.push import run_subscriptions  # noqa: E402
from node.storage import hash_key  # noqa: E402

#: the goal for two hops, in seconds (p95)
GOAL_P95 = 2.0


@dataclass(frozen=True)
class Timings:
    one_hop: list[float]
    two_hops: list[float]


async def _state(node: Node, mirror: str, value: str) -> str | None:
    store = node.service.store
    info = await store.get_set(mirror, kind="mirror")
    found = await store.find_entries(hash_key("sha256", value), [info.id])
    if not found:
        return None
    return "revoked" if found[0].revoked_by is not None else "active"


async def measure(
    a: Node, b: Node, c: Node, n: int, poll: float, gap: float = 0.0
) -> Timings:
    """Publish n entries on A, wait until C mirrors all of them, then revoke them one by one."""
    items = [sha256_item() for _ in range(n)]
    async with a.client() as op:
        published = await op.publish("green", items)
    stop = asyncio.Event()
    loops = [asyncio.create_task(run_subscriptions(x.service, stop)) for x in (b, c)]
    try:
        for it in items:
            value = it["hash_value"]

            async def mirrored(v: str = value) -> bool:
                return await _state(c, "org-b.test:green", v) == "active"

            await wait_for("C mirrors the entry", mirrored)
        await asyncio.sleep(0.5)  # let the event streams connect
        one: list[float] = []
        two: list[float] = []
        for it, pub in zip(items, published, strict=True):
            if gap and one:
                await asyncio.sleep(gap)
            value = it["hash_value"]
            started = time.monotonic()
            async with a.client() as op:
                await op.revoke("green", entry_id=pub.record_id, reason="quality")
            at_b: float | None = None
            deadline = started + WAIT
            while True:
                now = time.monotonic()
                if at_b is None and await _state(b, "org-a.test:green", value) == "revoked":
                    at_b = now - started
                if await _state(c, "org-b.test:green", value) == "revoked":
                    two.append(now - started)
                    # B's mirror is revoked before B's copy can be: seen together means same poll
                    one.append(now - started if at_b is None else at_b)
                    break
                if now > deadline:
                    raise SystemExit(f"revocation {pub.record_id} did not reach C in {WAIT} s")
                await asyncio.sleep(poll)
        return Timings(one, two)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*loops), WAIT)


def summary(times: list[float]) -> dict[str, float]:
    return {
        "p50_s": round(statistics.median(times), 3),
        "p95_s": round(percentile(times, 95), 3),
        "max_s": round(max(times), 3),
    }


async def run(n: int, poll: float, gap: float) -> Timings:
    with tempfile.TemporaryDirectory(prefix="hashfed-bench-propagation-") as tmp:
        async with federation(Path(tmp)) as (_coord, a, b, c):
            await setup_chain(a, b, c)
            return await measure(a, b, c, n, poll, gap)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revocations", type=int, default=50)
    parser.add_argument("--poll", type=float, default=0.01, help="seconds between state polls")
    parser.add_argument("--gap", type=float, default=0.0,
                        help="seconds between a revocation reaching C and the next revoke")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if not 1 <= args.revocations <= 1000:
        parser.error("--revocations must be 1 to 1000")
    if not 0 <= args.gap <= 10:
        parser.error("--gap must be 0 to 10 seconds")
    t = asyncio.run(run(args.revocations, args.poll, args.gap))
    one, two = summary(t.one_hop), summary(t.two_hops)
    if args.json:
        print(orjson.dumps({"revocations": len(t.two_hops), "one_hop_a_b": one,
                            "two_hops_a_b_c": two, "gap_s": args.gap,
                            "goal_p95_s": GOAL_P95}).decode())
        return
    print(f"{len(t.two_hops)} revocations ({args.gap} s apart), seconds from revoke on A")
    print(f"{'':24}{'p50':>8}{'p95':>8}{'max':>8}")
    for name, s in (("one hop  (A -> B)", one), ("two hops (A -> B -> C)", two)):
        print(f"{name:24}{s['p50_s']:8.3f}{s['p95_s']:8.3f}{s['max_s']:8.3f}")
    verdict = "met" if two["p95_s"] < GOAL_P95 else "NOT met"
    print(f"goal: two-hop p95 < {GOAL_P95} s: {verdict}")


if __name__ == "__main__":
    main()
