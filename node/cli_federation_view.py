"""``hashfed attest`` and ``hashfed export-view``: opinions about entries, and the merged view.

Wired into ``node/cli.py`` with :func:`register`. ``export-view`` writes every active entry of all
of this node's sets and mirrors for a matcher to load, one page of a set at a time (memory stays
bounded whatever the logs' sizes). Errors are raised; ``node.cli.main`` prints them.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Final

from node.cli_common import Command, add_command, open_service
from node.errors import BadRequest
from node.service import ATTESTATION_OPINIONS, NodeService
from node.storage import StoredRecord
from protocol.records import Entry, decode_record

__all__ = ["VIEW_COLUMNS", "cmd_attest", "cmd_export_view", "export_view", "register"]

#: columns of an export-view row, in order (CSV header; JSONL keys)
VIEW_COLUMNS: Final = (
    "hash_type", "hash_value", "quality", "labels", "set", "origin", "org", "index",
)
#: active entries read per query while exporting
_PAGE: Final = 1000




async def cmd_attest(args: argparse.Namespace) -> int:
    async with open_service(args.data) as service:
        result = await service.attest(
            args.set,
            target_origin=args.target_origin,
            target=args.target,
            hash_type=args.hash_type,
            hash_value=args.hash_value,
            opinion=args.opinion,
            reason=args.reason,
            count=args.count,
        )
    print(f"attested ({args.opinion}) in {args.set}: record {result.record_id} at index "
          f"{result.index}")
    return 0


def _rows(stored: list[StoredRecord]) -> Iterator[dict[str, Any]]:
    for s in stored:
        entry = decode_record(s.data)
        if not isinstance(entry, Entry):  # pragma: no cover - the query selects entries
            continue
        yield {
            "hash_type": entry.hash.type,
            "hash_value": entry.hash.value,
            "quality": entry.hash.quality,
            "labels": list(entry.labels),
            "set": s.set_name,
            "origin": s.origin,
            "org": entry.author,
            "index": s.index,
        }


async def export_view(service: NodeService, out: IO[str], fmt: str = "csv") -> int:
    """Write every active entry of every set and mirror to ``out`` (csv or jsonl); return the
    number of rows. One page of ``_PAGE`` entries is in memory at a time."""
    if fmt not in ("csv", "jsonl"):
        raise BadRequest("format must be csv or jsonl", field="format")
    writer = csv.DictWriter(out, fieldnames=VIEW_COLUMNS) if fmt == "csv" else None
    if writer is not None:
        writer.writeheader()
    total = 0
    for info in await service.store.list_sets(kind=None):
        after = -1
        while True:
            page = await service.store.active_entries_after(info.id, after, _PAGE)
            if not page:
                break
            for row in _rows(page):
                if writer is not None:
                    # labels joined with ';' (a label never contains one: lowercase codes)
                    writer.writerow({**row, "labels": ";".join(row["labels"]),
                                     "quality": "" if row["quality"] is None else row["quality"]})
                else:
                    out.write(json.dumps(row, separators=(",", ":")) + "\n")
                total += 1
            after = page[-1].index
    return total


async def cmd_export_view(args: argparse.Namespace) -> int:
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    async with open_service(args.data) as service:
        try:
            with tmp.open("w", encoding="utf-8", newline="") as f:
                total = await export_view(service, f, args.format)
            tmp.replace(out)  # a matcher never loads a half-written file
        except OSError as e:
            raise BadRequest(f"cannot write the view to {out}: {e}", field="out") from e
    print(f"exported {total} active entries to {out} ({args.format})")
    return 0


def register(sub: Any) -> None:
    """Add ``attest`` and ``export-view`` to ``hashfed``'s subparsers."""

    def command(name: str, func: Command, help: str) -> argparse.ArgumentParser:
        return add_command(sub, name, func, help)

    p = command("attest", cmd_attest, "record this organisation's opinion of an entry")
    p.add_argument("--set", required=True, metavar="OWN_SET", help="the local set to append to")
    p.add_argument("--target-origin", required=True, metavar="ORIGIN",
                   help="origin of the log holding the entry")
    p.add_argument("--target", required=True, metavar="ID", help="the entry's record id")
    p.add_argument("--hash-type", required=True, metavar="T")
    p.add_argument("--hash-value", required=True, metavar="V")
    p.add_argument("--opinion", required=True, choices=ATTESTATION_OPINIONS)
    p.add_argument("--reason", default=None, metavar="TEXT",
                   help="why (required for disagree)")
    p.add_argument("--count", type=int, default=None, metavar="N",
                   help="matches seen (required for, and only for, sighting)")
    p = command("export-view", cmd_export_view,
                "write every active entry of all sets and mirrors for a matcher")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--format", choices=("csv", "jsonl"), default="csv")
