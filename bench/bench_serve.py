"""Serving tiles and entry bundles over loopback: `hashfed serve` vs. a bare aiohttp floor.

Builds (once, cached under --cache) a node with --entries entries, starts `hashfed serve` on
127.0.0.1, and drives it from a separate load process (aiohttp client, --concurrency connections,
--requests requests over random full hash tiles or entry bundles). The floor is the same load
against a minimal aiohttp server in its own process that answers every path with fixed bytes of the
same size: what the HTTP stack alone costs. Rounds alternate; medians and the ratio are printed.

    .venv/bin/python bench/bench_serve.py --entries 1000000 --kind tiles
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


async def build(data: Path, entries: int, tlp: str = "clear") -> None:
    from node.bulkinput import entry_input
    from node.config import create_data_dir
    from node.service import NodeService
    from node.storage.sql import SqlStore

    cfg = create_data_dir(data, origin="bench.example", org="bench.example", database_url=None,
                          listen="127.0.0.1:0")
    store = SqlStore.engines(cfg.database_url)
    await store.migrate()
    await store.close()
    service = await NodeService.open(cfg)
    try:
        await service.create_set("bench", tlp)
        for start in range(0, entries, 10_000):
            n = min(10_000, entries - start)
            items = [entry_input({"hash_type": "sha256", "hash_value": os.urandom(32).hex()},
                                 complete=False) for _ in range(n)]
            await service.sequencer.append("bench", service.prepare_entries("bench", items))
    finally:
        await service.close()


FLOOR_SERVER = """
import sys
from aiohttp import web
body = b"x" * int(sys.argv[2])
async def handler(request):
    return web.Response(body=body, content_type="application/octet-stream",
                        headers={"Cache-Control": "public, max-age=31536000, immutable"})
app = web.Application()
app.router.add_get("/{tail:.*}", handler)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

LOAD = """
import asyncio, json, sys, time, aiohttp
base, conc = sys.argv[1], int(sys.argv[2])
paths = json.loads(sys.stdin.read())
async def main():
    connector = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=connector) as s:
        queue = list(paths)
        bad = 0
        async def worker():
            nonlocal bad
            while queue:
                p = queue.pop()
                async with s.get(base + p) as r:
                    await r.read()
                    bad += r.status != 200
        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        print(json.dumps({"seconds": time.perf_counter() - t, "bad": bad}))
asyncio.run(main())
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    import urllib.request

    for _ in range(200):
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} never answered")


def load(base: str, paths: list[str], concurrency: int) -> float:
    out = subprocess.run([sys.executable, "-c", LOAD, base, str(concurrency)],
                         input=json.dumps(paths), check=True, capture_output=True, text=True)
    result = json.loads(out.stdout)
    if result["bad"]:
        raise SystemExit(f"{result['bad']} requests failed against {base}")
    return len(paths) / float(result["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kind", choices=["tiles", "entries"], default="tiles")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()

    data = args.cache / f"hashfed-bench-serve-{args.entries}"
    if not (data / "hashfed.toml").exists():
        print(f"building a node with {args.entries:,} entries in {data} (cached) ...")
        t = time.perf_counter()
        asyncio.run(build(data, args.entries))
        print(f"  built in {time.perf_counter() - t:.0f} s")
    full = args.entries // 256
    rnd = random.Random(1)
    if args.kind == "tiles":
        paths = [f"/v1/sets/bench/tile/0/{rnd.randrange(full):03d}" for _ in range(args.requests)]
        paths = [_tile_path(p) for p in paths]
        size = 256 * 32
    else:
        paths = [f"/v1/sets/bench/tile/entries/{_n(rnd.randrange(full))}"
                 for _ in range(args.requests)]
        size = 256 * 560

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # a cached node may predate a migration
    subprocess.run([sys.executable, "-m", "node.cli", "db", "upgrade", "--data", str(data)],
                   cwd=REPO, env=env, check=True, capture_output=True)
    port, fport = free_port(), free_port()
    node = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--data", str(data),
                             "--listen", f"127.0.0.1:{port}"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    floor = subprocess.Popen([sys.executable, "-c", FLOOR_SERVER, str(fport), str(size)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz", node)
        wait_ready(f"http://127.0.0.1:{fport}/x", floor)
        ours_rates, floor_rates = [], []
        for r in range(args.rounds):
            floor_rates.append(load(f"http://127.0.0.1:{fport}", paths, args.concurrency))
            ours_rates.append(load(f"http://127.0.0.1:{port}", paths, args.concurrency))
            print(f"round {r + 1}: floor {floor_rates[-1]:,.0f} req/s, "
                  f"hashfed {ours_rates[-1]:,.0f} req/s")
        o, f = statistics.median(ours_rates), statistics.median(floor_rates)
        print(f"median ({args.kind}, {args.entries:,}-entry set, {args.requests:,} requests, "
              f"{args.concurrency} connections): hashfed {o:,.0f} req/s, floor {f:,.0f} req/s, "
              f"ratio {o / f:.2f}; goal >= 2,000 req/s")
    finally:
        for p in (node, floor):
            p.terminate()
            p.wait(timeout=30)


def _n(n: int) -> str:
    digits = f"{n:03d}"
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i:i + 3] for i in range(0, len(digits), 3)]
    return "/".join([f"x{g}" for g in groups[:-1]] + groups[-1:])


def _tile_path(p: str) -> str:
    head, _, n = p.rpartition("/")
    return f"{head}/{_n(int(n))}"


if __name__ == "__main__":
    main()
