"""The grammar of record fields, without the record models: sizes, timestamps, labels, enums.

What :mod:`protocol.records` builds its pydantic models from, and what the fast paths
(:mod:`protocol.scan`, the offline audit) need without importing pydantic: an audit of a clean
log never builds a model, and importing pydantic and building the models costs about 0.2 s of
every ``python -m protocol.audit``. :mod:`protocol.records` re-exports every public name here.
"""

from __future__ import annotations

import functools
import os
import re
import time
from datetime import UTC, datetime
from typing import Literal

from protocol.errors import FormatError

#: Largest canonical encoding of one record, in bytes. Far above any legitimate record (a vPDQ entry
#: with 100 frames is about 8 KiB) and far below any useful media file.
MAX_RECORD_SIZE = 16 * 1024

RECORD_VERSION: Literal[1] = 1

# ---------------------------------------------------------------------------------------------
# Field grammars
# ---------------------------------------------------------------------------------------------

_TIMESTAMP_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z", re.ASCII)
_PRINTABLE_RE = re.compile(r"[^\x00-\x1f\x7f\u2028\u2029]*")
_LABEL_NAMESPACE_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
_LABEL_VALUE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

#: The industry classification: A prepubescent, B pubescent; 1 sex act, 2 lascivious exhibition.
INDUSTRY_CLASSIFICATION = frozenset({"A1", "A2", "B1", "B2"})


def _datetime_of(m: re.Match[str]) -> datetime:
    y, mo, d, h, mi, s = (int(g) for g in m.groups())
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


@functools.lru_cache(maxsize=4096)
def _check_timestamp(value: str) -> str:
    # Cached: a bulk import carries the same few timestamps a million times, and building a
    # datetime is most of the cost of validating a record.
    m = _TIMESTAMP_RE.fullmatch(value)
    if m is None:
        raise ValueError("must be an RFC 3339 UTC time with seconds, like 2026-11-26T18:53:27Z")
    try:
        _datetime_of(m)
    except ValueError as e:
        raise ValueError(f"is not a real date and time: {e}") from None
    return value


def _check_printable(value: str) -> str:
    if _PRINTABLE_RE.fullmatch(value) is None:
        raise ValueError("must not contain control characters")
    return value


def _check_label(value: str) -> str:
    namespace, sep, name = value.partition(":")
    if not sep or _LABEL_NAMESPACE_RE.fullmatch(namespace) is None:
        raise ValueError("a label is 'namespace:value' with a lowercase namespace, like 'ic:A1'")
    if _LABEL_VALUE_RE.fullmatch(name) is None:
        raise ValueError("a label value is 1-64 characters of A-Z a-z 0-9 . _ -")
    if namespace == "ic" and name not in INDUSTRY_CLASSIFICATION:
        raise ValueError("the 'ic' (industry classification) labels are ic:A1 ic:A2 ic:B1 ic:B2")
    return value


RevocationReason = Literal[
    "false_positive", "legal_order", "duplicate", "quality", "expired", "other"
]

MemberRole = Literal["publisher", "subscriber", "coordinator", "auditor", "witness"]

RECORD_TYPES = ("entry", "revocation", "attestation", "membership")


# ---------------------------------------------------------------------------------------------
# Fresh values for new records
# ---------------------------------------------------------------------------------------------


def new_record_id(now: float | None = None) -> str:
    """A fresh record id: 48-bit Unix time in milliseconds, then 80 random bits (UUIDv7-like).

    Time-ordered so that indexes by record id (the publisher's and every mirror's) grow at their
    right edge instead of touching a random page per insert; see SPEC.md "Common members".
    Readers never rely on the structure.
    """
    ms = round((time.time() if now is None else now) * 1000) & 0xFFFF_FFFF_FFFF
    return ms.to_bytes(6, "big").hex() + os.urandom(10).hex()


def new_nonce() -> str:
    """128 random bits for a record nonce."""
    return os.urandom(16).hex()


def timestamp(t: float | None = None) -> str:
    """An RFC 3339 UTC timestamp with second precision (now, unless ``t`` is given)."""
    when = datetime.fromtimestamp(time.time() if t is None else t, tz=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(value: str) -> datetime:
    """The aware datetime of a record timestamp; FormatError when malformed."""
    try:
        _check_timestamp(value)
    except ValueError as e:
        raise FormatError(f"timestamp {e}") from None
    m = _TIMESTAMP_RE.fullmatch(value)
    assert m is not None
    return _datetime_of(m)
