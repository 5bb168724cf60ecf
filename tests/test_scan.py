"""protocol.scan: the fast record views accept exactly what decode_record accepts, no more, no less.

The reference is :func:`protocol.records.decode_record`. Every test compares against it: valid
records of every kind go through the fast path and read the same as the model; mutated,
fuzzed and random-JSON bytes give the same outcome from both (same content, or the same error
class, message and field); and whenever the fast path *alone* accepts something, the reference
accepts it too, with the same content (so the fallback never hides a too-wide fast path).
"""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import protocol
from protocol import scan
from protocol.errors import FormatError, ProtocolError, RecordTooLargeError
from protocol.jcs import canonicalize_reference
from protocol.records import (
    MAX_RECORD_SIZE,
    Attestation,
    Entry,
    HashRef,
    HashValue,
    Hop,
    Membership,
    Provenance,
    Revocation,
    Vetting,
    decode_record,
    encode_record,
    record_from_dict,
)
from protocol.scan import (
    AttestationView,
    EntryView,
    HashRefView,
    HashValueView,
    HopView,
    MembershipView,
    ProvenanceView,
    RevocationView,
    VettingView,
    scan_record,
    view_to_record,
)

AnyRecord = Entry | Revocation | Attestation | Membership

# ---- comparing outcomes -----------------------------------------------------------------------


def plain(value: Any) -> Any:
    """A view as the JSON-like dict model_dump(mode="json", exclude_none=True) gives."""
    if isinstance(value, msgspec.Struct):
        return {
            k: plain(v) for k, v in msgspec.structs.asdict(value).items() if v is not None
        }
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value


def outcome(fn: Any, data: bytes) -> tuple[Any, ...]:
    try:
        result = fn(data)
    except ProtocolError as e:
        return ("error", type(e), e.message, e.field)
    if isinstance(result, msgspec.Struct):
        return ("ok", plain(result))
    return ("ok", result.model_dump(mode="json", exclude_none=True))


def assert_agree(data: bytes) -> None:
    """scan_record and decode_record agree; the fast path alone is never wider."""
    reference = outcome(decode_record, data)
    assert outcome(scan_record, data) == reference
    fast = scan._fast_scan(data)
    if fast is not None:
        assert reference == ("ok", plain(fast)), data


# ---- valid records ----------------------------------------------------------------------------

hex128 = st.binary(min_size=16, max_size=16).map(bytes.hex)
orgs = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,63}", fullmatch=True)
origins = st.from_regex(r"[a-z0-9][a-z0-9.:-]{0,40}(/[a-zA-Z0-9._~-]{1,20}){0,3}", fullmatch=True)
timestamps = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 12, 31)
).map(lambda d: d.replace(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
labels = st.sampled_from(["ic:A1", "ic:A2", "ic:B1", "ic:B2"]) | st.from_regex(
    r"[a-hj-z][a-z0-9-]{0,10}:[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True
)
# Printable per records (no C0 controls, DEL, U+2028/9), with quotes, backslashes, non-ASCII,
# C1 controls and astral characters all possible.
_text_chars = st.characters(
    blacklist_categories=["Cs"],
    blacklist_characters="".join(chr(c) for c in range(0x20)) + "\x7f\u2028\u2029",
)


def texts(max_size: int) -> st.SearchStrategy[str]:
    return st.text(_text_chars, min_size=1, max_size=max_size) | st.sampled_from(
        ['a "quoted" \\ text', "é", "\x85", "日本語", "\U0001f600", "\ufeff", "x" * max_size]
    )


def _hex(n_chars: int) -> st.SearchStrategy[str]:
    return st.binary(min_size=n_chars // 2, max_size=n_chars // 2).map(bytes.hex)


_vpdq = st.lists(
    st.tuples(_hex(64), st.integers(0, 100)).map(lambda t: f"{t[0]}:{t[1]}"),
    min_size=1,
    max_size=4,
).map(",".join)

#: (hash dict, media) pairs, every registered type
hashes = st.one_of(
    st.builds(lambda v, q: ({"type": "pdq", "value": v, "quality": q}, "image"),
              _hex(64), st.integers(0, 100)),
    st.tuples(st.sampled_from(["md5", "sha1", "sha256"]), st.sampled_from(["image", "video"]))
    .flatmap(lambda t: _hex({"md5": 32, "sha1": 40, "sha256": 64}[t[0]])
             .map(lambda v: ({"type": t[0], "value": v}, t[1]))),
    _hex(288).map(lambda v: ({"type": "photodna", "value": v}, "image")),
    _hex(2048).map(lambda v: ({"type": "tmk_pdqf", "value": v}, "video")),
    _vpdq.map(lambda v: ({"type": "vpdq", "value": v}, "video")),
)


def optional(d: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        d[key] = value


@st.composite
def entries(draw: st.DrawFn) -> dict[str, Any]:
    h, media = draw(hashes)
    vetting: dict[str, Any] = {"status": draw(st.sampled_from(["confirmed", "unconfirmed"]))}
    vetting["reviews"] = draw(st.integers(1 if vetting["status"] == "confirmed" else 0, 1000))
    optional(vetting, "standard", draw(st.none() | texts(64)))
    optional(vetting, "at", draw(st.none() | timestamps))
    hops = st.fixed_dictionaries(
        {"org": orgs, "origin": origins, "record": hex128, "at": timestamps}
    )
    provenance: dict[str, Any] = {
        "org": draw(orgs),
        "node": draw(origins),
        "record": draw(hex128),
        "first_seen": draw(timestamps),
        "chain": draw(st.lists(hops, max_size=3)),
    }
    optional(provenance, "source_ref", draw(st.none() | texts(256)))
    d: dict[str, Any] = {
        "type": "entry",
        "id": draw(hex128),
        "author": draw(orgs),
        "created": draw(timestamps),
        "nonce": draw(hex128),
        "hash": h,
        "media": media,
        "labels": draw(st.lists(labels, unique=True, max_size=5)),
        "generated": draw(st.sampled_from(["generated", "not_generated", "unknown"])),
        "vetting": vetting,
        "provenance": provenance,
    }
    optional(d, "expires", draw(st.none() | timestamps))
    return d


def _common(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    return {
        "type": kind,
        "id": draw(hex128),
        "author": draw(orgs),
        "created": draw(timestamps),
        "nonce": draw(hex128),
    }


def _hash_ref(draw: st.DrawFn) -> dict[str, str]:
    h, _ = draw(hashes)
    return {"type": h["type"], "value": h["value"]}


@st.composite
def revocations(draw: st.DrawFn) -> dict[str, Any]:
    d = _common(draw, "revocation")
    d["target"] = draw(hex128)
    d["target_hash"] = _hash_ref(draw)
    d["role"] = draw(st.sampled_from(["author", "coordinator"]))
    d["reason"] = draw(st.sampled_from(
        ["false_positive", "legal_order", "duplicate", "quality", "expired", "other"]
    ))
    text = draw(texts(1024)) if d["reason"] == "other" else draw(st.none() | texts(1024))
    optional(d, "text", text)
    return d


@st.composite
def attestations(draw: st.DrawFn) -> dict[str, Any]:
    d = _common(draw, "attestation")
    d["target"] = draw(hex128)
    d["target_origin"] = draw(origins)
    d["target_hash"] = _hash_ref(draw)
    d["opinion"] = draw(st.sampled_from(["agree", "disagree", "also_vetted", "sighting"]))
    reason = draw(texts(1024)) if d["opinion"] == "disagree" else draw(st.none() | texts(1024))
    optional(d, "reason", reason)
    if d["opinion"] == "sighting":
        d["count"] = draw(st.integers(1, 2**53 - 1))
    return d


# The fast path takes URLs and vkeys in printable ASCII; other characters go to the reference.
urls = st.builds(lambda s, p: s + p, st.sampled_from(["http://", "https://"]),
                 st.from_regex(r"[!-~]{1,60}", fullmatch=True))
vkeys = st.builds(
    lambda name, kid, key: f"{name}+{kid}+{base64.b64encode(key).decode()}",
    st.from_regex(r"[!-*,-~]{1,30}", fullmatch=True),
    _hex(8),
    st.binary(min_size=3, max_size=40),
)


@st.composite
def memberships(draw: st.DrawFn) -> dict[str, Any]:
    d = _common(draw, "membership")
    action = draw(st.sampled_from(["admit", "rotate", "suspend", "remove"]))
    d["action"] = action
    d["member"] = draw(orgs)
    admit = action == "admit"
    optional(d, "name", draw(texts(1024)) if admit else draw(st.none() | texts(1024)))
    optional(d, "node_url", draw(urls) if admit else draw(st.none() | urls))
    d["vkeys"] = draw(st.lists(vkeys, min_size=1 if action in ("admit", "rotate") else 0,
                               max_size=3))
    roles = ["publisher", "subscriber", "coordinator", "auditor", "witness"]
    d["roles"] = draw(st.lists(st.sampled_from(roles), unique=True,
                               min_size=1 if admit else 0, max_size=5))
    valid_from = draw(timestamps) if admit else draw(st.none() | timestamps)
    optional(d, "valid_from", valid_from)
    valid_until = draw(st.none() | timestamps)
    if valid_until is not None and (valid_from is None or valid_until > valid_from):
        d["valid_until"] = valid_until
    optional(d, "reason", draw(st.none() | texts(1024)))
    return d


record_dicts = st.one_of(entries(), revocations(), attestations(), memberships())


def build(d: dict[str, Any]) -> tuple[AnyRecord, bytes]:
    try:
        record = record_from_dict(d)
        data = encode_record(record)
    except FormatError:  # e.g. a record over the size limit: not a valid record to start from
        assume(False)
        raise
    return record, data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record_dicts)
def test_valid_records_take_the_fast_path_and_read_like_the_model(d: dict[str, Any]) -> None:
    record, data = build(d)
    view = scan._fast_scan(data)
    assert view is not None, data
    expected = record.model_dump(mode="json", exclude_none=True)
    assert plain(view) == expected
    assert scan_record(data) == view
    assert type(view).__name__ == type(record).__name__ + "View"
    assert view_to_record(view) == record
    assert_agree(data)


# ---- mutations --------------------------------------------------------------------------------

_INT_RE = re.compile(rb":(\d+)[,}]")
_TIME_RE = re.compile(rb'"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z"')
_HEX_CHAR_RE = re.compile(rb"[a-f]")
_KEY_RE = re.compile(rb'"([a-z_]+)":')

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8,
)


def _pairs(data: bytes) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = json.loads(data, object_pairs_hook=lambda p: p)
    return pairs


def _dump(value: Any) -> bytes:
    """Compact JSON that keeps the given member order and duplicates (lists of pairs)."""
    if isinstance(value, list) and value and all(
        isinstance(p, tuple) and len(p) == 2 for p in value
    ):
        return b"{" + b",".join(_dump(k) + b":" + _dump(v) for k, v in value) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(_dump(v) for v in value) + b"]"
    text: str = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.encode()


Path = list[str | int]


def _get_path(d: Any, path: Path) -> Any:
    for key in path:
        d = d[key]
    return d


def _set_path(d: Any, path: Path, value: Any) -> None:
    _get_path(d, path[:-1])[path[-1]] = value


def _paths(value: Any, prefix: Path | None = None) -> list[Path]:
    """Every member and list item below ``value`` (dicts and lists alike)."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    out: list[Path] = []
    for key, item in items:
        path = [*(prefix or []), key]
        out.append(path)
        if isinstance(item, dict | list):
            out.extend(_paths(item, path))
    return out


#: characters that break one grammar or another (case, separators, controls, non-ASCII...)
_TWEAK_CHARS = ["A", "G", "z", "0", "-", ".", ":", "/", "+", "=", "_", "~", " ", "\\", '"',
                "\x00", "\x1f", "\x7f", "\x85", "\u2028", "\u2029", "\ufeff", "é", "\U0001f600"]


def _tweak(draw: st.DrawFn, old: str) -> str:
    """A small change to a valid string: often still valid, often just outside a grammar."""
    i = draw(st.integers(0, len(old)))
    c = draw(st.sampled_from(_TWEAK_CHARS))
    how = draw(st.sampled_from(["insert", "replace", "upper", "cut", "double", "swapcase"]))
    if how == "insert":
        return old[:i] + c + old[i:]
    if how == "replace":
        return old[:i] + c + old[i + 1 :]
    if how == "upper":
        return old.upper()
    if how == "cut":
        return old[:i]
    if how == "double":
        return old + old
    return old.swapcase()


def _dict_mutation(draw: st.DrawFn, d: dict[str, Any]) -> Any:
    """A structurally meaningful change to the record's value (re-encoded canonically)."""
    kind = draw(st.sampled_from([
        "set", "drop", "add_x", "null", "bad_time", "labels_many", "labels_dup",
        "confirmed_zero", "long_string", "type_swap", "reviews", "quality", "count",
        "tweak", "tweak", "tweak", "bad_label",
    ]))
    paths = _paths(d)
    if kind == "tweak":
        strings = [p for p in paths if isinstance(_get_path(d, p), str)]
        path = draw(st.sampled_from(strings))
        _set_path(d, path, _tweak(draw, _get_path(d, path)))
        return d
    if kind == "bad_label":
        d["labels"] = [*d.get("labels", [])[:2], draw(st.sampled_from([
            "ic:A3", "IC:A1", "ic:a1", "nolabel", "a:", ":b", "a:b c", "a:" + "x" * 65,
            "a" * 33 + ":x", "ns:-x", "é:x", "ns:é", "1a:x", "a_b:x", "ns:x:y", "ns:x/y",
        ]))]
        return d
    if kind == "set":
        path = draw(st.sampled_from(paths))
        _set_path(d, path, draw(json_values | st.integers(-(2**60), 2**60) | texts(10)))
    elif kind == "drop":
        path = draw(st.sampled_from(paths))
        del _get_path(d, path[:-1])[path[-1]]
    elif kind == "add_x":
        d[draw(st.sampled_from(["x", "expires", "text", "count", "reason", "zz", "a"]))] = 1
    elif kind == "null":
        d[draw(st.sampled_from(["expires", "text", "count", "reason", "name", "labels", "v"]))] = (
            None
        )
    elif kind == "bad_time":
        bad = draw(st.sampled_from([
            "2026-02-30T00:00:00Z", "2026-13-01T00:00:00Z", "2026-01-01T24:00:00Z",
            "2026-01-01T00:00:00+00:00", "2026-01-01t00:00:00Z", "2026-01-01T00:00:00.5Z",
            "２０２６-01-01T00:00:00Z", "2026-01-01T00:00:60Z", "0000-01-01T00:00:00Z",
        ]))
        candidates = [p for p in paths if p[-1] in ("created", "at", "first_seen", "expires",
                                                    "valid_from", "valid_until")] or [["created"]]
        _set_path(d, draw(st.sampled_from(candidates)), bad)
    elif kind == "labels_many":
        d["labels"] = [f"ns:v{i}" for i in range(draw(st.integers(32, 34)))]
    elif kind == "labels_dup":
        d["labels"] = ["ic:A1", "x:y", "ic:A1"]
    elif kind == "confirmed_zero":
        d["vetting"] = {"status": "confirmed", "reviews": 0}
    elif kind == "long_string":
        path = draw(st.sampled_from(paths))
        _set_path(d, path, draw(st.sampled_from(["a", "é", "0"])) * draw(
            st.sampled_from([31, 33, 63, 64, 65, 129, 257, 1025, 5000])))
    elif kind == "type_swap":
        d["type"] = draw(st.sampled_from(["entry", "revocation", "attestation", "membership"]))
    elif kind == "reviews":
        d["vetting"] = {"status": "unconfirmed",
                        "reviews": draw(st.sampled_from([-1, 0, 1000, 1001, 2**64]))}
    elif kind == "quality":
        d["hash"] = {"type": draw(st.sampled_from(["pdq", "md5"])), "value": "0" * 64,
                     "quality": draw(st.sampled_from([-1, 0, 100, 101]))}
    elif kind == "count":
        d["count"] = draw(st.sampled_from([0, 1, 2**53 - 1, 2**53]))
    return d


def _byte_mutation(draw: st.DrawFn, data: bytes) -> bytes:
    """A change to the exact bytes: alternative spellings, broken syntax, stray characters."""
    kind = draw(st.sampled_from([
        "flip", "whitespace", "swap_keys", "dup_key", "int_spelling", "escape", "upper_hex",
        "delete", "non_ascii", "trailing", "key_escape",
    ]))
    i = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        return data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1 :]
    if kind == "whitespace":
        return data[:i] + draw(st.sampled_from([b" ", b"\n", b"\t", b"\r"])) + data[i:]
    if kind in ("swap_keys", "dup_key"):
        pairs = _pairs(data)
        a, b = draw(st.integers(0, len(pairs) - 1)), draw(st.integers(0, len(pairs) - 1))
        if kind == "swap_keys":
            pairs[a], pairs[b] = pairs[b], pairs[a]
        else:
            pairs.insert(b, pairs[a])
        return _dump(pairs)
    if kind == "int_spelling":
        ints = list(_INT_RE.finditer(data))
        if not ints:
            return data
        m = draw(st.sampled_from(ints))
        spelling: bytes = draw(st.sampled_from([
            b"1.0", b'"1"', b"true", b"-0", b"1e0", b"01", b"+1", m.group(1) + b".0",
            b"9007199254740993", b"18446744073709551617", b"0.5", b"-1", b"null",
        ]))
        return data[: m.start(1)] + spelling + data[m.end(1) :]
    if kind == "escape":
        letters = [j for j in range(len(data)) if 0x41 <= data[j] <= 0x7A and data[j] != 0x5C]
        if not letters:
            return data
        j = draw(st.sampled_from(letters))
        esc = draw(st.sampled_from([b"\\u%04x" % data[j], b"\\u%04X" % data[j]]))
        return data[:j] + esc + data[j + 1 :]
    if kind == "upper_hex":
        hexes = list(_HEX_CHAR_RE.finditer(data))
        m = draw(st.sampled_from(hexes))
        return data[: m.start()] + m.group().upper() + data[m.end() :]
    if kind == "delete":
        j = draw(st.integers(i, min(len(data), i + 40)))
        return data[:i] + data[j:]
    if kind == "non_ascii":
        chars = draw(st.sampled_from(
            ["\x7f", "\u2028", "\u2029", "\x85", "\x00", "\x1f", "é", "\U0001f600", "\\u2028"]
        ))
        return data[:i] + chars.encode() + data[i:]
    if kind == "trailing":
        return data + draw(st.sampled_from([b" ", b"\n", b"x", b"{}", b"\x00"]))
    # key_escape: spell one member name with an escape, e.g. "typ\u0065"
    keys = list(_KEY_RE.finditer(data))
    m = draw(st.sampled_from(keys))
    return data[: m.end(1) - 1] + b"\\u%04x" % data[m.end(1) - 1] + data[m.end(1) :]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    record, data = build(draw(record_dicts))
    if draw(st.booleans()):
        d = _dict_mutation(draw, record.model_dump(mode="json", exclude_none=True))
        try:
            return canonicalize_reference(d)
        except FormatError:
            return _dump(d)
    return _byte_mutation(draw, data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_records_get_the_reference_outcome(data: bytes) -> None:
    assert_agree(data)


# ---- fuzz -------------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=700))
def test_random_bytes_get_the_reference_outcome(data: bytes) -> None:
    assert_agree(data)


_record_keys = sorted(
    {name for model in (Entry, Revocation, Attestation, Membership, HashValue, Vetting,
                        Provenance, Hop) for name in model.model_fields}
)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        json_values,
        st.dictionaries(st.sampled_from(_record_keys), json_values, max_size=14),
    ),
    st.booleans(),
)
def test_random_json_gets_the_reference_outcome(value: Any, canonical: bool) -> None:
    if canonical:
        try:
            data = canonicalize_reference(value)
        except FormatError:
            data = json.dumps(value).encode()
    else:
        data = json.dumps(value, ensure_ascii=bool(len(str(value)) % 2)).encode()
    assert_agree(data)


# ---- fixed cases ------------------------------------------------------------------------------


def _valid_entry(**overrides: Any) -> dict[str, Any]:
    rid = "0123456789abcdef0123456789abcdef"
    d: dict[str, Any] = {
        "type": "entry", "id": rid, "author": "a.example", "created": "2026-01-02T03:04:05Z",
        "nonce": "fedcba9876543210fedcba9876543210",
        "hash": {"type": "pdq", "value": "ab" * 32, "quality": 90}, "media": "image",
        "labels": ["ic:A1"], "vetting": {"status": "confirmed", "reviews": 2},
        "provenance": {"org": "a.example", "node": "hashfed.a.example/csam", "record": rid,
                       "first_seen": "2026-01-01T00:00:00Z"},
    }
    d.update(overrides)
    return d


def test_every_code_point_is_written_like_rfc8785() -> None:
    # The canonical check compares msgspec's output with the input: that proves RFC 8785 form
    # only because msgspec writes each character exactly as RFC 8785 does.
    for start in range(0, 0x110000, 512):
        chars = [chr(c) for c in range(start, start + 512) if not 0xD800 <= c <= 0xDFFF]
        for c in chars if start < 0x1000 else ["".join(chars)]:
            assert msgspec.json.encode(c) == canonicalize_reference(c), hex(ord(c[0]))


@pytest.mark.parametrize(
    ("view", "model"),
    [
        (EntryView, Entry), (RevocationView, Revocation), (AttestationView, Attestation),
        (MembershipView, Membership), (HashValueView, HashValue), (HashRefView, HashRef),
        (VettingView, Vetting), (ProvenanceView, Provenance), (HopView, Hop),
    ],
)
def test_views_have_the_models_fields_in_canonical_order(view: Any, model: Any) -> None:
    assert set(view.__struct_fields__) == set(model.model_fields)
    assert list(view.__struct_fields__) == sorted(view.__struct_fields__)
    assert all(name.isascii() for name in view.__struct_fields__)
    # Required in the view exactly when the canonical bytes always carry the field.
    optional_in_view = {f.name for f in msgspec.structs.fields(view) if not f.required}
    optional_in_model = {
        name for name, f in model.model_fields.items() if not f.is_required() and f.default is None
    }
    assert optional_in_view == optional_in_model
    assert view.__struct_config__.frozen
    assert view.__struct_config__.forbid_unknown_fields


def test_plain_hex_types_are_recognised() -> None:
    assert scan._PLAIN_HEX == {
        "md5": 32, "sha1": 40, "sha256": 64, "pdq": 64, "photodna": 288, "tmk_pdqf": 2048
    }


def test_views_are_frozen_and_read_like_models() -> None:
    data = encode_record(record_from_dict(_valid_entry()))
    view = scan_record(data)
    assert isinstance(view, EntryView)
    with pytest.raises(AttributeError):
        view.id = "0" * 32  # type: ignore[misc]
    record = decode_record(data)
    assert isinstance(record, Entry)
    assert (view.id, view.type, view.hash.type, view.labels) == (
        record.id, record.type, record.hash.type, record.labels
    )
    assert view.provenance.chain == () == record.provenance.chain
    assert plain(view.hash_ref()) == record.hash_ref().model_dump()


def test_records_only_the_reference_accepts_still_scan() -> None:
    # Non-ASCII in a node URL and a vkey name is valid, but outside the fast path's subset.
    d = {
        "type": "membership", "id": "1" * 32, "author": "coord.example",
        "created": "2026-01-01T00:00:00Z", "nonce": "2" * 32, "action": "admit",
        "member": "m.example", "name": "M", "node_url": "https://m.example/é",
        "vkeys": ["m.é+0a0b0c0d+AQID"], "roles": ["publisher"],
        "valid_from": "2026-01-01T00:00:00Z",
    }
    record = record_from_dict(d)
    data = encode_record(record)
    assert scan._fast_scan(data) is None
    view = scan_record(data)
    assert isinstance(view, MembershipView)
    assert plain(view) == record.model_dump(mode="json", exclude_none=True)


def test_errors_are_the_reference_errors() -> None:
    big = b"{" + b" " * MAX_RECORD_SIZE + b"}"
    with pytest.raises(RecordTooLargeError) as too_large:
        scan_record(big)
    with pytest.raises(RecordTooLargeError) as reference:
        decode_record(big)
    assert too_large.value.message == reference.value.message
    d = _valid_entry(labels=["ic:A1", "ic:A1"])
    data = canonicalize_reference(d)
    with pytest.raises(FormatError) as err:
        scan_record(data)
    assert (err.value.message, err.value.field) == ("labels must not repeat", "labels")


def test_cached_parts_do_not_excuse_a_bad_id() -> None:
    good = encode_record(record_from_dict(_valid_entry()))
    scan_record(good)  # fills the caches with this entry's shared parts
    bad = good.replace(b"0123456789abcdef0123456789abcdef", b"0123456789ABCDEF0123456789abcdef", 1)
    assert scan._fast_scan(bad) is None
    assert_agree(bad)


def test_caches_stay_bounded() -> None:
    cache: set[str] = set()
    for i in range(scan._CACHE_LIMIT + 10):
        scan._remember(cache, str(i))
    assert len(cache) <= scan._CACHE_LIMIT


def test_public_names_are_exported() -> None:
    for name in ("scan_record", "view_to_record", "EntryView", "RevocationView",
                 "AttestationView", "MembershipView", "RecordView"):
        assert getattr(protocol, name) is getattr(scan, name)


# ---- every rule, one bad value each -----------------------------------------------------------

_RID = "0123456789abcdef0123456789abcdef"
_HOP = {"org": "b.example", "origin": "hashfed.b.example/csam", "record": _RID,
        "at": "2026-01-01T00:00:00Z"}
_BASES: dict[str, dict[str, Any]] = {
    "entry": _valid_entry(
        expires="2027-01-01T00:00:00Z",
        vetting={"status": "confirmed", "reviews": 2, "standard": "two",
                 "at": "2026-01-01T00:00:00Z"},
        provenance={"org": "a.example", "node": "hashfed.a.example/csam", "record": _RID,
                    "first_seen": "2026-01-01T00:00:00Z", "source_ref": "case 1",
                    "chain": [_HOP]},
    ),
    "revocation": {
        "type": "revocation", "id": _RID, "author": "a.example",
        "created": "2026-01-02T03:04:05Z", "nonce": _RID, "target": _RID,
        "target_hash": {"type": "md5", "value": "0" * 32}, "role": "author",
        "reason": "other", "text": "why",
    },
    "attestation": {
        "type": "attestation", "id": _RID, "author": "b.example",
        "created": "2026-01-02T03:04:05Z", "nonce": _RID, "target": _RID,
        "target_origin": "hashfed.a.example/csam",
        "target_hash": {"type": "vpdq", "value": "0" * 64 + ":100"}, "opinion": "sighting",
        "count": 3, "reason": "seen",
    },
    "membership": {
        "type": "membership", "id": _RID, "author": "coord.example",
        "created": "2026-01-02T03:04:05Z", "nonce": _RID, "action": "admit",
        "member": "m.example", "name": "M", "node_url": "https://m.example",
        "vkeys": ["m.example+0a0b0c0d+AQIDBA=="], "roles": ["publisher", "witness"],
        "valid_from": "2026-01-01T00:00:00Z", "valid_until": "2027-01-01T00:00:00Z",
        "reason": "ok",
    },
}
# with their defaults filled in, as canonical bytes always carry them
_BASES = {
    kind: record_from_dict(d).model_dump(mode="json", exclude_none=True)
    for kind, d in _BASES.items()
}
_BAD_ORGS = ["A.example", "-a", "a" * 65, "", "a b", "é", "a/b"]
_BAD_TIMES = ["2026-02-30T00:00:00Z", "2026-01-01T00:00:00z", "2026-01-01 00:00:00Z", ""]
_BAD_HEX = ["0" * 31, "0" * 33, "G" * 32, "A" * 32, " " + "0" * 31, "0" * 30 + "é0"]
_BAD_ORIGINS = ["Hashfed.example", "a.example/", "a.example//x", "-", "a.example/é", "a b"]
_BAD_TEXTS = ["", "a\x00", "a\x1fb", "a\x7fb", "a\u2028b", "a\u2029b"]


def _cases() -> list[tuple[str, dict[str, Any]]]:
    """(kind, {dotted path: new value}) pairs that each break exactly one rule of records.py."""
    c: list[tuple[str, dict[str, Any]]] = []
    for kind in _BASES:
        c += [(kind, {"author": v}) for v in _BAD_ORGS]
        c += [(kind, {"created": v}) for v in _BAD_TIMES]
        c += [(kind, {"id": v}) for v in _BAD_HEX] + [(kind, {"nonce": v}) for v in _BAD_HEX]
        c += [(kind, {"v": 2}), (kind, {"type": "Entry"})]
    c += [("entry", {"media": "video"}), ("entry", {"generated": "maybe"})]
    c += [("entry", {"hash": h}) for h in (
        {"type": "md5", "value": "0" * 32, "quality": 5}, {"type": "pdq", "value": "0" * 64},
        {"type": "pdq", "value": "0" * 64, "quality": 101},
        {"type": "pdq", "value": "0" * 64, "quality": -1},
        {"type": "pdq", "value": "0" * 63, "quality": 1},
        {"type": "pdq", "value": "0" * 65, "quality": 1},
        {"type": "pdq", "value": "0" * 62, "quality": 1},
        {"type": "pdq", "value": "0" * 66, "quality": 1},
        {"type": "md5", "value": "0" * 34},
        {"type": "pdq", "value": "A" * 64, "quality": 1},
        {"type": "PDQ", "value": "0" * 64, "quality": 1},
        {"type": "sha512", "value": "0" * 128},
    )]
    c += [("entry", {"media": "video", "hash": h}) for h in (
        {"type": "vpdq", "value": "0" * 64 + ":101"}, {"type": "vpdq", "value": "0" * 64},
        {"type": "vpdq", "value": "0" * 64 + ":1,"}, {"type": "vpdq", "value": "0" * 63 + ":1"},
        {"type": "vpdq", "value": ",".join(["0" * 64 + ":1"] * 101)},
        {"type": "tmk_pdqf", "value": "0" * 2047 + "G"},
    )]
    c += [("entry", {"labels": v}) for v in (
        ["ic:A3"], ["IC:A1"], ["a:b c"], ["a" * 33 + ":y"], ["a:" + "x" * 65], ["nolabel"],
        ["ns:-x"], ["é:x"], ["ic:A1", "ic:A1"], [f"ns:v{i}" for i in range(33)],
    )]
    c += [("entry", {"vetting.reviews": 0}), ("entry", {"vetting.reviews": 1001}),
          ("entry", {"vetting.status": "unconfirmed", "vetting.reviews": -1}),
          ("entry", {"vetting.standard": "x" * 65}), ("entry", {"vetting.status": "maybe"})]
    c += [("entry", {"vetting.standard": v}) for v in _BAD_TEXTS]
    c += [("entry", {"vetting.at": v}) for v in _BAD_TIMES]
    c += [("entry", {"expires": v}) for v in _BAD_TIMES]
    c += [("entry", {"provenance.org": v}) for v in _BAD_ORGS]
    c += [("entry", {"provenance.node": v}) for v in _BAD_ORIGINS]
    c += [("entry", {"provenance.record": v}) for v in _BAD_HEX]
    c += [("entry", {"provenance.first_seen": v}) for v in _BAD_TIMES]
    c += [("entry", {"provenance.source_ref": v}) for v in [*_BAD_TEXTS, "x" * 257]]
    c += [("entry", {"provenance.chain": [_HOP] * 17})]
    c += [("entry", {"provenance.chain": [{**_HOP, key: v}]})
          for key, bad in (("org", _BAD_ORGS), ("origin", _BAD_ORIGINS), ("record", _BAD_HEX),
                           ("at", _BAD_TIMES)) for v in bad]
    c += [("revocation", {"text": v}) for v in [*_BAD_TEXTS, "x" * 1025]]
    c += [("revocation", {"target": v}) for v in _BAD_HEX]
    c += [("revocation", {"reason": "other", "text": None}), ("revocation", {"role": "x"}),
          ("revocation", {"reason": "boredom"})]
    c += [("revocation", {"target_hash": h}) for h in (
        {"type": "md5", "value": "0" * 31}, {"type": "md5", "value": "0" * 33},
        {"type": "md5", "value": "0" * 31 + "A"}, {"type": "pdq", "value": "0" * 64 + "0"},
        {"type": "vpdq", "value": "0" * 64 + ":101"}, {"type": "x", "value": "0" * 32},
        {"type": "pdq", "value": "0" * 64, "quality": 1},
    )]
    c += [("attestation", {"reason": v}) for v in _BAD_TEXTS]
    c += [("attestation", {"target": v}) for v in _BAD_HEX]
    c += [("attestation", {"target_origin": v}) for v in _BAD_ORIGINS]
    c += [("attestation", {"target_hash.value": "0" * 64 + ":1x"})]
    c += [("attestation", {"count": v}) for v in (0, 2**53, None)]
    c += [("attestation", {"opinion": "agree"}), ("attestation", {"opinion": "maybe"}),
          ("attestation", {"opinion": "disagree", "count": None, "reason": None})]
    c += [("membership", {"member": v}) for v in _BAD_ORGS]
    c += [("membership", {"name": v}) for v in _BAD_TEXTS]
    c += [("membership", {"reason": v}) for v in _BAD_TEXTS]
    c += [("membership", {"valid_from": v}) for v in _BAD_TIMES]
    c += [("membership", {"valid_until": v}) for v in _BAD_TIMES]
    c += [("membership", {"node_url": v}) for v in (
        "ftp://m.example", "https://", "https://a b", "https://a\x00", "http://" + "a" * 251,
    )]
    c += [("membership", {"vkeys": [v]}) for v in (
        "m.example+0a0b0c0d", "m.example+0A0B0C0D+AQIDBA==", "m example+0a0b0c0d+AQIDBA==",
        "m.example+0a0b0c0d+AQ", "m.example+0a0b0c0d+AQIDBA===", "m.example+0a0b0c+AQIDBA==",
        "m.example+0a0b0c0d+AQI-BA==", "+0a0b0c0d+AQIDBA==", "a+b+0a0b0c0d+AQIDBA==",
    )]
    c += [("membership", {"vkeys": ["m.example+0a0b0c0d+AQIDBA=="] * 9}),
          ("membership", {"roles": ["publisher", "publisher"]}),
          ("membership", {"roles": ["publisher", "x"]}),
          ("membership", {"valid_until": "2026-01-01T00:00:00Z"}),
          ("membership", {"valid_until": "2025-01-01T00:00:00Z"}),
          ("membership", {"action": "rotate", "vkeys": []}),
          ("membership", {"action": "fire"})]
    c += [("membership", {field: None}) for field in ("name", "node_url", "valid_from")]
    c += [("membership", {field: []}) for field in ("vkeys", "roles")]
    return c


@pytest.mark.parametrize(("kind", "changes"), _cases())
def test_each_rule_is_enforced_by_the_fast_path(kind: str, changes: dict[str, Any]) -> None:
    d = json.loads(json.dumps(_BASES[kind]))
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        target = d
        for key in parents:
            target = target[key]
        if value is None:
            target.pop(last, None)
        else:
            target[last] = value
    # sort_keys: the same bytes as RFC 8785 here (ASCII keys), also for integers beyond 2^53
    data = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert scan._fast_scan(canonicalize_reference(_BASES[kind])) is not None
    with pytest.raises(FormatError):
        decode_record(data)
    assert scan._fast_scan(data) is None
    assert_agree(data)


# ---- EntryShapes: entries that differ only in ids, hashes, times and quality --------------------

#: a field the shapes cut out, and the end of its key in canonical bytes
_CUT_KEY_RE = re.compile(rb'"(id|nonce|record|created|expires|first_seen|at|value)":"|"quality":')
_BAD_TIME_BYTES = [b"2026-02-30T00:00:00Z", b"2026-13-01T00:00:00Z", b"2026-01-01T24:00:00Z",
              b"2026-01-01T00:00:60Z", b"2026-0a-01T00:00:00Z", b"2026-01-01 00:00:00Z",
              b"0000-01-01T00:00:00Z"]


_LOWER = b"0123456789abcdef"


def _field_end(data: bytes, start: int, quoted: bool) -> int:
    if quoted:
        return data.index(b'"', start)
    end = start
    while end < len(data) and data[end : end + 1].isdigit():
        end += 1
    return end


@st.composite
def _new_value(draw: st.DrawFn, old: bytes, key: bytes) -> bytes:
    """A value of the same length for a cut-out field: mostly valid, sometimes not."""
    n = len(old)
    if key in (b"created", b"expires", b"first_seen", b"at"):
        pool = [t.encode() for t in [draw(timestamps)]] + _BAD_TIME_BYTES
        value: bytes = draw(st.sampled_from(pool))
        return value if len(value) == n else old
    if key == b"quality":
        return draw(st.binary(min_size=n, max_size=n).map(
            lambda b: bytes(b"0123456789a"[x % 11] for x in b)))
    alphabet = draw(st.sampled_from([_LOWER, _LOWER, _LOWER + b"ABCDEFg-"]))
    return bytes(draw(st.lists(st.sampled_from(alphabet), min_size=n, max_size=n)))


@st.composite
def _shape_variants(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """An entry's bytes, and the same bytes with some cut-out fields (and perhaps one other byte)
    changed in place: the inputs EntryShapes.match has to judge."""
    _record, data = build(draw(entries()))
    out = bytearray(data)
    for m in _CUT_KEY_RE.finditer(data):
        if draw(st.booleans()):
            key = m.group(1) or b"quality"
            end = _field_end(data, m.end(), quoted=m.group(1) is not None)
            out[m.end() : end] = draw(_new_value(data[m.end() : end], key))
    if draw(st.integers(0, 3)) == 0:  # and one byte anywhere, to anything
        i = draw(st.integers(0, len(out) - 1))
        out[i] = draw(st.integers(0, 255))
    return data, bytes(out)


def _hex_of(joined: bytes, size: int, i: int) -> bytes:
    return joined[i * size : (i + 1) * size].hex().encode()


def _agrees_with_reference(data: bytes, facts: scan.EntryFacts, rid: bytes, value: bytes) -> None:
    record = decode_record(data)  # a match must be a record the reference accepts ...
    assert isinstance(record, Entry)  # ... read the same way
    assert (record.author, record.hash.type, record.labels) == tuple(facts)
    assert (record.id.encode(), record.hash.value.encode()) == (rid, value)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_shape_variants())
def test_shape_matches_are_never_wider_than_the_reference(pair: tuple[bytes, bytes]) -> None:
    data, variant = pair
    shapes = scan.EntryShapes()
    view = scan_record(data)
    assert isinstance(view, EntryView)
    shapes.learn(data, view)
    matched = shapes.match(variant)
    if matched is not None:
        _agrees_with_reference(variant, *matched)
    run = shapes.match_many([data, variant, data])
    if run is not None:
        assert list(run.positions) == [0, 1, 2]
        for i, leaf in enumerate([data, variant, data]):
            _agrees_with_reference(leaf, run.facts, _hex_of(run.ids, 16, i),
                                   _hex_of(run.values, run.value_size, i))
    if matched is None and variant != data:
        # refused: the reference decides, through scan_record, as for any other bytes
        assert_agree(variant)


def _entry_bytes(**changes: Any) -> bytes:
    d = _valid_entry()
    d["hash"] = {"type": "pdq", "value": "ab" * 32, "quality": 90}
    d["provenance"]["chain"] = [dict(_HOP)]
    d["vetting"]["at"] = "2026-01-01T00:00:00Z"
    for path, value in changes.items():
        _set_path(d, list[str | int](path.split("__")), value)
    return encode_record(record_from_dict(d))


def test_entries_that_differ_only_in_their_variable_fields_match() -> None:
    shapes = scan.EntryShapes()
    first = _entry_bytes()
    assert shapes.match(first) is None  # nothing learned yet
    view = scan_record(first)
    assert isinstance(view, EntryView)
    shapes.learn(first, view)
    others = [
        _entry_bytes(id=f"{i:032x}", nonce=f"{i + 1:032x}", created="2027-03-04T05:06:07Z",
                     hash__value=f"{i:064x}", hash__quality=10 + i, provenance__record=f"{i:032x}",
                     provenance__first_seen="2025-12-31T23:59:59Z",
                     vetting__at="2026-02-28T12:00:00Z")
        for i in range(1, 4)
    ]
    for leaf in others:
        matched = shapes.match(leaf)
        assert matched is not None
        _agrees_with_reference(leaf, *matched)
    revocation = encode_record(record_from_dict(_BASES["revocation"]))
    run = shapes.match_many([others[0], revocation, others[1], first, others[2]])
    assert run is not None and list(run.positions) == [0, 2, 3, 4]
    assert run.ids.hex() == "".join(("1".zfill(32), "2".zfill(32), view.id, "3".zfill(32)))
    assert run.facts == scan.EntryFacts(view.author, "pdq", view.labels)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["entry", "revocation", "short"]), min_size=1, max_size=256))
def test_match_many_takes_the_entries_of_the_most_common_length(kinds: list[str]) -> None:
    # Few or many leaves of other lengths (revocations, entries of another shape) anywhere: the
    # run is every leaf of the most common length (the first of equals), in order.
    shapes = scan.EntryShapes()
    first = _entry_bytes()
    view = scan_record(first)
    assert isinstance(view, EntryView)
    shapes.learn(first, view)
    revocation = encode_record(record_from_dict(_BASES["revocation"]))
    short = _entry_bytes(labels=[])
    leaves = [
        {"entry": _entry_bytes(id=f"{i:032x}"), "revocation": revocation, "short": short}[kind]
        for i, kind in enumerate(kinds)
    ]
    lengths = [len(x) for x in leaves]
    common = max(dict.fromkeys(lengths), key=lengths.count)
    run = shapes.match_many(leaves)
    if common != len(first):
        assert run is None  # no shape of that length was learned
        return
    expected = [i for i, n in enumerate(lengths) if n == common]
    assert run is not None and list(run.positions) == expected
    assert run.ids.hex() == "".join(f"{i:032x}" for i in expected)


@pytest.mark.parametrize(("path", "value"), [
    ("id", "0123456789ABCDEF0123456789abcdef"),  # upper case
    ("nonce", "0123456789abcdeg0123456789abcdef"),  # not hex
    ("created", "2026-02-30T00:00:00Z"),  # not a real date
    ("provenance__first_seen", "2026-01-01T00:00:60Z"),  # not a real time
    ("hash__quality", 100),  # another length: another shape
    ("author", "x.example"),  # same length, outside the fields
    ("labels", ["ic:A2"]),
    ("provenance__chain__0__at", "2026-01-01T00:00:00Z"),  # same as learned: matches
    ("created", "2024-02-29T23:59:59Z"),  # a leap day: matches
    ("created", "2023-02-29T00:00:00Z"),  # not a leap year
    ("created", "0000-01-01T00:00:00Z"),  # no year 0
    ("vetting__at", "2026-01-01T23:60:00Z"),
])
def test_each_field_refuses_what_the_reference_refuses(path: str, value: Any) -> None:
    shapes = scan.EntryShapes()
    first = _entry_bytes()
    view = scan_record(first)
    assert isinstance(view, EntryView)
    shapes.learn(first, view)
    d = json.loads(first)
    keys = path.split("__")
    target = d
    for k in keys[:-1]:
        target = target[int(k)] if k.isdigit() else target[k]
    target[keys[-1]] = value
    variant = json.dumps(d, separators=(",", ":"), sort_keys=True).encode()
    matched = shapes.match(variant)
    run = shapes.match_many([first, variant])
    if path.endswith("chain__0__at") or value == "2024-02-29T23:59:59Z":
        assert matched is not None and run is not None
        return
    assert matched is None and (run is None or 1 not in run.positions)
    assert_agree(variant)  # whatever the reference says, scan_record says the same


def test_shapes_take_bytes_only() -> None:
    shapes = scan.EntryShapes()
    first = _entry_bytes()
    view = scan_record(first)
    assert isinstance(view, EntryView)
    shapes.learn(bytearray(first), view)  # type: ignore[arg-type]  # misuse on purpose
    assert shapes._count == 0
    shapes.learn(first, view)
    other = _entry_bytes(id="e" * 32)
    assert shapes.match(bytearray(other)) is None  # type: ignore[arg-type]
    assert shapes.match(memoryview(other)) is None  # type: ignore[arg-type]
    assert shapes.match(other) is not None


def test_shapes_stay_bounded_and_stop_learning_when_it_does_not_pay() -> None:
    shapes = scan.EntryShapes(limit=5)
    leaves = [_entry_bytes(provenance__source_ref="r" * (i + 1)) for i in range(40)]
    for leaf in leaves:
        assert shapes.match(leaf) is None  # each its own length: never a match
        view = scan_record(leaf)
        assert isinstance(view, EntryView)
        shapes.learn(leaf, view)
        assert shapes._count <= 5
    # 40 misses, no match: learning goes on (64 free lessons), then one miss in 16
    many = scan.EntryShapes()
    for i in range(250):
        leaf = _entry_bytes(provenance__source_ref="s" * (1 + i))
        many.match(leaf)
        view = scan_record(leaf)
        assert isinstance(view, EntryView)
        many.learn(leaf, view)
    assert many._matched == 0 and many._learned <= 64 + 250 // 16 + 1


def test_shapes_rest_after_many_misses_and_then_match_again() -> None:
    shapes = scan.EntryShapes()
    first = _entry_bytes()
    view = scan_record(first)
    assert isinstance(view, EntryView)
    shapes.learn(first, view)
    same_shape = _entry_bytes(id="f" * 32)
    assert shapes.match(same_shape) is not None
    for i in range(scan._MAX_FAILS):  # entries of no known shape, in a row
        assert shapes.match(_entry_bytes(provenance__source_ref="x" * (i + 1))) is None
    # resting: nothing is learned, nothing is tried (not even a known shape)
    shapes.learn(_entry_bytes(provenance__source_ref="y"), view)
    assert shapes._count == 1
    for _ in range(scan._SKIP):
        assert shapes.match_many([same_shape, first]) is None
        assert shapes.match(same_shape) is None
    assert shapes.match(same_shape) is not None  # and then it goes on as before
