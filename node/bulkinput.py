"""Bulk publish input: JSON Lines or CSV, one entry per line, with line-numbered errors.

Only ``hash_type`` and ``hash_value`` are required. Every other field has a documented default
(SPEC.md, "Bulk input"):

=================  ================================================  ===========================
field              meaning                                           default
=================  ================================================  ===========================
hash_type          a registered hash type (md5, sha1, sha256, pdq …)  required
hash_value         the hash, hex (upper case is accepted and folded)  required
quality            PDQ quality 0-100                                 required for pdq only
media              image or video                                    video for vpdq/tmk_pdqf,
                                                                     image otherwise
labels             list (JSON) or ';'-separated (CSV): "ic:A1;x:y"   none
generated          generated, not_generated, unknown                 unknown
vetting_status     confirmed, unconfirmed                            confirmed
reviews            number of independent reviews                     1 (0 if unconfirmed)
review_standard    short code of the review standard                 none
vetted_at          RFC 3339 UTC time                                 none
first_seen         RFC 3339 UTC time                                 now
source_ref         opaque reference into your case system           none
expires            RFC 3339 UTC time                                 none
=================  ================================================  ===========================

A file with any bad line publishes nothing: :func:`read_entries` validates every line first and
raises one :class:`BulkInputError` listing the bad lines (the first 20, and how many in all).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

from node.errors import BadRequest
from protocol import hashtypes
from protocol.errors import FormatError
from protocol.records import entry_from_dict

INPUT_FIELDS = (
    "hash_type",
    "hash_value",
    "quality",
    "media",
    "labels",
    "generated",
    "vetting_status",
    "reviews",
    "review_standard",
    "vetted_at",
    "first_seen",
    "source_ref",
    "expires",
)
_VIDEO_TYPES = frozenset({"vpdq", "tmk_pdqf"})
#: a line longer than this is refused before parsing (a record is at most 16 KiB)
MAX_LINE = 32 * 1024
MAX_REPORTED = 20


class BulkInputError(BadRequest):
    """Some lines of a bulk file are bad; ``errors`` lists (line number, message)."""

    def __init__(self, errors: list[tuple[int, str]], total: int) -> None:
        shown = "\n".join(f"  line {n}: {m}" for n, m in errors[:MAX_REPORTED])
        more = f"\n  … and {total - MAX_REPORTED} more" if total > MAX_REPORTED else ""
        super().__init__(
            f"{total} bad line(s); nothing was published:\n{shown}{more}",
            details=[{"line": n, "message": m} for n, m in errors[:MAX_REPORTED]],
        )
        self.errors = errors
        self.total = total


@dataclass(frozen=True)
class EntryInput:
    """One validated input line, before it becomes a record (see node.service.build_entry)."""

    hash_type: str
    hash_value: str
    quality: int | None
    media: str
    labels: tuple[str, ...]
    generated: str
    vetting_status: str
    reviews: int
    review_standard: str | None
    vetted_at: str | None
    first_seen: str | None
    source_ref: str | None
    expires: str | None


def _opt_str(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise FormatError(f"{name} must be a string", field=name)
    return value


def _opt_int(obj: dict[str, Any], name: str) -> int | None:
    value = obj.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool):
        raise FormatError(f"{name} must be an integer", field=name)
    return value


def entry_input(obj: dict[str, Any], *, complete: bool = True) -> EntryInput:
    """Validate one line; FormatError naming the input column.

    ``complete=True`` validates the line as the entry it becomes (every field). A caller that
    builds the entry right away (which validates it with the same model) passes ``False`` to
    avoid validating twice, and maps the build's errors with :func:`input_error`.
    """
    unknown = set(obj) - set(INPUT_FIELDS)
    if unknown:
        raise FormatError(f"unknown field {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
    hash_type = obj.get("hash_type")
    raw_value = obj.get("hash_value")
    if not isinstance(hash_type, str) or not hash_type:
        raise FormatError("hash_type is required", field="hash_type")
    if not isinstance(raw_value, str) or not raw_value:
        raise FormatError("hash_value is required", field="hash_value")
    hash_value = hashtypes.normalize_value(hash_type, raw_value)
    quality = _opt_int(obj, "quality")
    hashtypes.check_hash(hash_type, hash_value, quality)
    labels_raw = obj.get("labels")
    if labels_raw is None or labels_raw == "":
        labels: tuple[str, ...] = ()
    elif isinstance(labels_raw, str):
        labels = tuple(x.strip() for x in labels_raw.split(";") if x.strip())
    elif isinstance(labels_raw, list) and all(isinstance(x, str) for x in labels_raw):
        labels = tuple(labels_raw)
    else:
        raise FormatError("labels must be a list of strings or 'a:b;c:d'", field="labels")
    status = _opt_str(obj, "vetting_status") or "confirmed"
    reviews = _opt_int(obj, "reviews")
    item = EntryInput(
        hash_type=hash_type,
        hash_value=hash_value,
        quality=quality,
        media=_opt_str(obj, "media") or ("video" if hash_type in _VIDEO_TYPES else "image"),
        labels=labels,
        generated=_opt_str(obj, "generated") or "unknown",
        vetting_status=status,
        reviews=(1 if status == "confirmed" else 0) if reviews is None else reviews,
        review_standard=_opt_str(obj, "review_standard"),
        vetted_at=_opt_str(obj, "vetted_at"),
        first_seen=_opt_str(obj, "first_seen"),
        source_ref=_opt_str(obj, "source_ref"),
        expires=_opt_str(obj, "expires"),
    )
    if complete:
        _validate_as_entry(item)
    return item


def entry_dict(
    item: EntryInput, *, org: str, set_origin: str, now: str, record_id: str, nonce: str
) -> dict[str, Any]:
    """The entry record for an input line, as a dict in exactly the model's dump shape.

    Every default is present and no value is None, so ``canonicalize(entry_dict(...))`` is the
    record's leaf encoding (node.service.build_entry relies on it; tests/test_service.py checks it).
    """
    vetting: dict[str, Any] = {"status": item.vetting_status, "reviews": item.reviews}
    if item.review_standard is not None:
        vetting["standard"] = item.review_standard
    if item.vetted_at is not None:
        vetting["at"] = item.vetted_at
    provenance: dict[str, Any] = {
        "org": org,
        "node": set_origin,
        "record": record_id,
        "first_seen": item.first_seen or now,
        "chain": [],
    }
    if item.source_ref is not None:
        provenance["source_ref"] = item.source_ref
    h: dict[str, Any] = {"type": item.hash_type, "value": item.hash_value}
    if item.quality is not None:
        h["quality"] = item.quality
    raw: dict[str, Any] = {
        "v": 1,
        "type": "entry",
        "id": record_id,
        "author": org,
        "created": now,
        "nonce": nonce,
        "hash": h,
        "media": item.media,
        "labels": list(item.labels),
        "generated": item.generated,
        "vetting": vetting,
        "provenance": provenance,
    }
    if item.expires is not None:
        raw["expires"] = item.expires
    return raw


def _validate_as_entry(item: EntryInput) -> None:
    """Build the entry this line would become, with placeholder identity, and validate it.

    This is what makes "a file with any bad line publishes nothing" true for every field (labels,
    timestamps, enums, lengths), not just the hash: the very model that will validate the real
    record validates it here first.
    """
    raw = entry_dict(
        item, org="validation.invalid", set_origin="validation.invalid/set",
        now="2000-01-01T00:00:00Z", record_id="0" * 32, nonce="0" * 32,
    )
    try:
        entry_from_dict(raw)
    except FormatError as e:
        raise input_error(e) from e


def input_error(e: FormatError) -> FormatError:
    """The same error, naming the input column the person wrote, not the record field."""
    field = e.field or ""
    head = field.split(".")[0] if field.startswith("labels.") else field
    return FormatError(e.message, field=_RECORD_TO_INPUT.get(head, field) or None)


_RECORD_TO_INPUT = {
    "hash.type": "hash_type",
    "hash.value": "hash_value",
    "hash.quality": "quality",
    "vetting": "vetting_status",
    "vetting.status": "vetting_status",
    "vetting.reviews": "reviews",
    "vetting.standard": "review_standard",
    "vetting.at": "vetted_at",
    "provenance.first_seen": "first_seen",
    "provenance.source_ref": "source_ref",
}


def _jsonl_objects(stream: IO[bytes]) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    for n, line in enumerate(stream, start=1):
        if len(line) > MAX_LINE:
            yield n, FormatError(f"line is longer than {MAX_LINE} bytes")
            continue
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)  # strict UTF-8 and RFC 8259, several times faster than json
        except orjson.JSONDecodeError as e:
            yield n, FormatError(f"not valid JSON: {e}")
            continue
        if not isinstance(obj, dict):
            yield n, FormatError("each line must be a JSON object")
            continue
        yield n, obj


def _csv_objects(stream: IO[bytes]) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
    try:
        reader = csv.DictReader(text)
        header = reader.fieldnames or []
        if "hash_type" not in header or "hash_value" not in header:
            yield 1, FormatError("the CSV header must name at least hash_type,hash_value")
            return
        for row in reader:
            if None in row:
                yield reader.line_num, FormatError("more cells than header columns")
                continue
            yield reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}
    except (csv.Error, UnicodeDecodeError) as e:
        yield -1, FormatError(f"not valid CSV: {e}")
    finally:
        text.detach()


def detect_format(name: str, head: bytes) -> str:
    """'csv' or 'jsonl', from the file name or (for stdin) the first byte."""
    lower = name.lower()
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    return "jsonl" if head.lstrip()[:1] == b"{" else "csv"


def iter_inputs(
    stream: IO[bytes], fmt: str, *, complete: bool = True
) -> Iterator[tuple[int, EntryInput | Exception]]:
    """(line number, validated input or the error for that line), streaming."""
    source = _csv_objects(stream) if fmt == "csv" else _jsonl_objects(stream)
    for n, obj in source:
        if isinstance(obj, Exception):
            yield n, obj
            continue
        try:
            yield n, entry_input(obj, complete=complete)
        except FormatError as e:
            yield n, e


def check_all(items: Iterable[tuple[int, EntryInput | Exception]]) -> int:
    """Validate a whole file without keeping it in memory; BulkInputError if any line is bad."""
    errors: list[tuple[int, str]] = []
    total_bad = 0
    count = 0
    for n, item in items:
        if isinstance(item, Exception):
            total_bad += 1
            if len(errors) < MAX_REPORTED:
                errors.append((n, str(item)))
        else:
            count += 1
    if total_bad:
        raise BulkInputError(errors, total_bad)
    return count


def input_to_json(item: EntryInput) -> dict[str, Any]:
    """The line as the JSON object the operator API takes (None fields dropped)."""
    out = {k: v for k, v in item.__dict__.items() if v is not None}
    out["labels"] = list(item.labels)
    return out


def dumps_line(item: EntryInput) -> bytes:
    return json.dumps(input_to_json(item), separators=(",", ":")).encode()
