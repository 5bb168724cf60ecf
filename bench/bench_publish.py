"""Bulk publish into SQLite: `hashfed publish` of N entries vs. the floor, side by side in one run.

Ours:  the real CLI (`hashfed publish --set bench FILE`) in a subprocess on a fresh node: validation
       pass, record building, canonical JSON, leaf hashes, tiles, view columns, durable commits and
       a signed checkpoint. Peak RSS of that process is reported (os.wait4).
Floor: in this process, the same file: orjson parse of each line + SHA-256 leaf hash of the bytes +
       sqlite3 ``executemany`` of (index, hash, bytes) into one table in one transaction.

Both run --rounds times, alternating, on the same generated file; medians and the ratio are
printed. Run from the repository root:

    .venv/bin/python bench/bench_publish.py --entries 1000000 --rounds 1
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
HASHFED = [sys.executable, "-m", "node.cli"]


def make_input(path: Path, n: int) -> None:
    """Synthetic JSON Lines: random PDQ hashes with a label (never real hashes)."""
    rnd = os.urandom
    with path.open("wb") as f:
        for i in range(n):
            line = {
                "hash_type": "pdq",
                "hash_value": rnd(32).hex(),
                "quality": 50 + i % 51,
                "labels": ["ic:A1"] if i % 2 else ["tvec:bench"],
            }
            f.write(orjson.dumps(line) + b"\n")


def floor(path: Path, db: Path) -> float:
    start = time.perf_counter()
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE leaves (idx INTEGER PRIMARY KEY, hash BLOB, data BLOB)")

    def rows() -> Iterator[tuple[int, bytes, bytes]]:
        with path.open("rb") as f:
            for i, line in enumerate(f):
                orjson.loads(line)
                yield i, hashlib.sha256(b"\x00" + line).digest(), line

    with con:
        con.executemany("INSERT INTO leaves VALUES (?, ?, ?)", rows())
    con.close()
    return time.perf_counter() - start


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of a subprocess."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out}\n{err}")
    return elapsed, usage.ru_maxrss / 1024


def ours(path: Path, work: Path, env: dict[str, str]) -> tuple[float, float]:
    data = work / "node"
    subprocess.run([*HASHFED, "init", "--data", str(data), "--origin", "bench.example",
                    "--org", "bench.example"], cwd=REPO, env=env, check=True,
                   capture_output=True)
    subprocess.run([*HASHFED, "set", "create", "bench", "--tlp", "clear", "--data", str(data)],
                   cwd=REPO, env=env, check=True, capture_output=True)
    return run([*HASHFED, "publish", "--data", str(data), "--set", "bench", str(path)], env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory(prefix="hashfed-bench-") as tmp:
        work = Path(tmp)
        src = work / "input.jsonl"
        make_input(src, args.entries)
        print(f"{args.entries:,} entries, {src.stat().st_size / 2**20:.0f} MiB of JSON Lines")
        floors, ourss, rss = [], [], []
        for r in range(args.rounds):
            floors.append(floor(src, work / f"floor{r}.db"))
            t, m = ours(src, work / f"ours{r}", env)
            ourss.append(t)
            rss.append(m)
            print(f"round {r + 1}: floor {args.entries / floors[-1]:,.0f}/s, "
                  f"hashfed publish {args.entries / t:,.0f}/s, peak RSS {m:.0f} MiB")
        f, o = statistics.median(floors), statistics.median(ourss)
        print(f"median: floor {args.entries / f:,.0f} entries/s, hashfed {args.entries / o:,.0f}"
              f" entries/s, ratio {f / o:.2f} (goal >= 0.5); peak RSS {max(rss):.0f} MiB"
              " (goal < 500)")


if __name__ == "__main__":
    main()
