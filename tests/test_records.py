"""Records: schema, hash-type formats, canonical encoding, and every rejection the SPEC promises."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from protocol import hashtypes
from protocol.errors import FormatError, RecordTooLargeError
from protocol.records import (
    MAX_RECORD_SIZE,
    Attestation,
    Entry,
    Membership,
    Revocation,
    decode_record,
    encode_record,
    new_nonce,
    new_record_id,
    parse_timestamp,
    record_from_dict,
    timestamp,
)


def rhex(n_bytes: int) -> str:
    return os.urandom(n_bytes).hex()


def entry_dict(**overrides: Any) -> dict[str, Any]:
    rid = new_record_id()
    d: dict[str, Any] = {
        "v": 1,
        "type": "entry",
        "id": rid,
        "author": "platform.example",
        "created": "2026-11-26T18:53:27Z",
        "nonce": new_nonce(),
        "hash": {"type": "pdq", "value": rhex(32), "quality": 90},
        "media": "image",
        "labels": ["ic:A1", "tvec:propaganda"],
        "generated": "unknown",
        "vetting": {"status": "confirmed", "reviews": 2, "standard": "two-reviewer"},
        "provenance": {
            "org": "platform.example",
            "node": "hashfed.platform.example/csam",
            "record": rid,
            "first_seen": "2026-11-20T10:00:00Z",
        },
    }
    d.update(overrides)
    return d


def test_entry_round_trip_is_byte_exact() -> None:
    rec = record_from_dict(entry_dict())
    data = encode_record(rec)
    assert decode_record(data) == rec
    assert encode_record(decode_record(data)) == data
    # canonical form: sorted keys, no whitespace, no nulls
    parsed = json.loads(data)
    assert list(parsed) == sorted(parsed)
    assert b" " not in data
    assert b"null" not in data


def test_records_are_frozen() -> None:
    rec = record_from_dict(entry_dict())
    assert isinstance(rec, Entry)
    with pytest.raises(ValidationError):
        rec.media = "video"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("hash_type", "value", "quality", "media"),
    [
        ("md5", rhex(16), None, "image"),
        ("sha1", rhex(20), None, "video"),
        ("sha256", rhex(32), None, "image"),
        ("pdq", rhex(32), 0, "image"),
        ("pdq", rhex(32), 100, "image"),
        ("photodna", rhex(144), None, "image"),
        ("tmk_pdqf", rhex(1024), None, "video"),
        ("vpdq", ",".join(f"{rhex(32)}:{q}" for q in (0, 50, 100)), None, "video"),
        (
            "vpdq",
            ",".join(f"{rhex(32)}:7" for _ in range(hashtypes.VPDQ_MAX_FRAMES)),
            None,
            "video",
        ),
    ],
)
def test_every_registered_hash_type_accepts_its_canonical_form(
    hash_type: str, value: str, quality: int | None, media: str
) -> None:
    h: dict[str, Any] = {"type": hash_type, "value": value}
    if quality is not None:
        h["quality"] = quality
    rec = record_from_dict(entry_dict(hash=h, media=media))
    assert decode_record(encode_record(rec)) == rec


PNG_AS_BASE64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + os.urandom(2000)).decode()


@pytest.mark.parametrize(
    ("hash_obj", "field", "needle"),
    [
        ({"type": "md6", "value": rhex(16)}, "hash.type", "unknown hash type"),
        ({"type": "md5", "value": rhex(15)}, "hash.value", "exactly 32"),
        ({"type": "md5", "value": "A" + rhex(16)[1:].upper()}, "hash.value", "lowercase hex"),
        ({"type": "sha256", "value": "z" * 64}, "hash.value", "lowercase hex"),
        ({"type": "sha256", "value": " " + rhex(32)[1:]}, "hash.value", "lowercase hex"),
        ({"type": "sha256", "value": PNG_AS_BASE64}, "hash.value", "at most 64"),
        ({"type": "photodna", "value": PNG_AS_BASE64[:288]}, "hash.value", "lowercase hex"),
        ({"type": "pdq", "value": rhex(32)}, "hash.quality", "quality"),
        ({"type": "pdq", "value": rhex(32), "quality": 101}, "hash.quality", "between 0 and 100"),
        ({"type": "pdq", "value": rhex(32), "quality": -1}, "hash.quality", "between 0 and 100"),
        ({"type": "md5", "value": rhex(16), "quality": 5}, "hash.quality", "no quality"),
        ({"type": "vpdq", "value": rhex(32)}, "hash.value", "frame 0"),
        ({"type": "vpdq", "value": f"{rhex(32)}:101"}, "hash.value", "frame 0"),
        (
            {"type": "vpdq", "value": ",".join(f"{rhex(32)}:1" for _ in range(101))},
            "hash.value",
            "at most",
        ),
    ],
)
def test_malformed_hashes_are_refused_naming_the_field(
    hash_obj: dict[str, Any], field: str, needle: str
) -> None:
    media = "video" if hash_obj["type"] == "vpdq" else "image"
    with pytest.raises(FormatError) as err:
        record_from_dict(entry_dict(hash=hash_obj, media=media))
    assert err.value.field == field
    assert needle in err.value.message


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"media": "video"}, "media"),  # pdq is an image hash
        ({"media": "audio"}, "media"),
        ({"labels": ["ic:C3"]}, "labels.0"),
        ({"labels": ["NoNamespace"]}, "labels.0"),
        ({"labels": ["ic:A1", "ic:A1"]}, "labels"),
        ({"generated": "maybe"}, "generated"),
        ({"created": "2026-11-26 18:53:27"}, "created"),
        ({"created": "2026-02-30T00:00:00Z"}, "created"),
        ({"id": "A" + rhex(16)[1:].upper()}, "id"),
        ({"nonce": "abc"}, "nonce"),
        ({"author": "Has Space"}, "author"),
        ({"extra_field": 1}, "extra_field"),
        ({"v": 2}, "v"),
        ({"vetting": {"status": "confirmed", "reviews": 0}}, "vetting"),
        ({"vetting": {"status": "confirmed", "reviews": "2"}}, "vetting.reviews"),
        (
            {"vetting": {"status": "confirmed", "reviews": 1, "standard": "a\nb"}},
            "vetting.standard",
        ),
    ],
)
def test_schema_violations_are_refused(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(FormatError) as err:
        record_from_dict(entry_dict(**overrides))
    assert err.value.field == field, err.value.diagnostics()


def test_decode_refuses_non_canonical_bytes() -> None:
    rec = record_from_dict(entry_dict(expires="2027-01-01T00:00:00Z"))
    data = encode_record(rec)
    as_obj = json.loads(data)
    variants = [
        json.dumps(as_obj).encode(),  # whitespace
        json.dumps(as_obj, separators=(",", ":"), sort_keys=False)
        .encode()
        .replace(b'{"author"', b'{"zz":1,"author"'),  # unknown field
        data.replace(b'"expires":"2027-01-01T00:00:00Z"', b'"expires":null'),  # null field
        data[:-1] + b',"v":1}',  # duplicate key
        data.replace(b'"v":1', b'"v":1.0'),  # float for int
        b"\xef\xbb\xbf" + data,  # BOM
        data + b"\n",
    ]
    keys_reversed = json.dumps(dict(reversed(list(as_obj.items()))), separators=(",", ":"))
    variants.append(keys_reversed.encode())
    for bad in variants:
        with pytest.raises(FormatError):
            decode_record(bad)


@pytest.mark.parametrize(
    "junk",
    [b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"type":"entry"}', b'{"type":"media"}', b"1" * 100],
)
def test_decode_refuses_junk(junk: bytes) -> None:
    with pytest.raises(FormatError):
        decode_record(junk)


def test_oversized_records_are_refused_before_parsing() -> None:
    with pytest.raises(RecordTooLargeError):
        decode_record(b'{"a":"' + b"x" * MAX_RECORD_SIZE + b'"}')


def test_revocation_attestation_membership() -> None:
    target = record_from_dict(entry_dict())
    assert isinstance(target, Entry)
    common = {"id": new_record_id(), "author": "platform.example", "created": timestamp(),
              "nonce": new_nonce()}
    rev = record_from_dict({**common, "type": "revocation", "target": target.id,
                            "target_hash": {"type": "pdq", "value": target.hash.value},
                            "reason": "false_positive"})
    assert isinstance(rev, Revocation)
    assert decode_record(encode_record(rev)) == rev
    with pytest.raises(FormatError, match="needs a text"):
        record_from_dict({**common, "type": "revocation", "target": target.id,
                          "target_hash": {"type": "pdq", "value": target.hash.value},
                          "reason": "other"})
    att = record_from_dict({**common, "type": "attestation", "target": target.id,
                            "target_origin": "hashfed.platform.example/csam",
                            "target_hash": {"type": "pdq", "value": target.hash.value},
                            "opinion": "sighting", "count": 3})
    assert isinstance(att, Attestation)
    with pytest.raises(FormatError, match="count"):
        record_from_dict({**common, "type": "attestation", "target": target.id,
                          "target_origin": "hashfed.platform.example/csam",
                          "target_hash": {"type": "pdq", "value": target.hash.value},
                          "opinion": "agree", "count": 3})
    mem = record_from_dict({**common, "type": "membership", "action": "admit",
                            "member": "partner.example", "name": "Partner",
                            "node_url": "https://hashfed.partner.example",
                            "vkeys": ["hashfed.partner.example+1a2b3c4d+AaaaBBBBccccDDDD"],
                            "roles": ["publisher", "subscriber"],
                            "valid_from": "2026-11-01T00:00:00Z",
                            "valid_until": "2027-11-01T00:00:00Z"})
    assert isinstance(mem, Membership)
    assert decode_record(encode_record(mem)) == mem
    with pytest.raises(FormatError, match="needs"):
        record_from_dict({**common, "type": "membership", "action": "admit",
                          "member": "partner.example"})


def test_timestamps() -> None:
    assert parse_timestamp(timestamp(0)).timestamp() == 0
    with pytest.raises(FormatError):
        parse_timestamp("yesterday")


hex_strings = st.binary(min_size=32, max_size=32).map(bytes.hex)
free_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=40
)


@settings(max_examples=200, deadline=None)
@given(
    value=hex_strings,
    quality=st.integers(0, 100),
    labels=st.lists(st.sampled_from(["ic:A1", "ic:A2", "ic:B1", "ic:B2", "ncii:x", "tvec:y.z"]),
                    unique=True, max_size=6),
    generated=st.sampled_from(["generated", "not_generated", "unknown"]),
    reviews=st.integers(1, 1000),
    source_ref=st.none() | free_text,
)
def test_property_entries_round_trip(
    value: str, quality: int, labels: list[str], generated: str, reviews: int,
    source_ref: str | None,
) -> None:
    prov: dict[str, Any] = {"org": "a.example", "node": "a.example/set", "record": rhex(16),
                            "first_seen": "2026-01-01T00:00:00Z"}
    if source_ref is not None:
        prov["source_ref"] = source_ref
    rec = record_from_dict(entry_dict(
        hash={"type": "pdq", "value": value, "quality": quality}, labels=labels,
        generated=generated, vetting={"status": "confirmed", "reviews": reviews},
        provenance=prov))
    data = encode_record(rec)
    assert decode_record(data) == rec


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_property_decode_never_raises_foreign_errors(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        decode_record(data)


def test_record_ids_are_time_ordered_with_80_random_bits() -> None:
    """UUIDv7-like ids (SPEC "Common members"): 48-bit milliseconds, then 80 random bits."""
    t = 1_764_000_000.123
    a, b = new_record_id(t), new_record_id(t + 0.001)
    for rid in (a, b, new_record_id()):
        assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert a[:12] == f"{1_764_000_000_123:012x}" and a < b
    same_ms = {new_record_id(t) for _ in range(1000)}
    assert len(same_ms) == 1000 and {r[:12] for r in same_ms} == {a[:12]}
    # sorted by creation across milliseconds, which is what keeps id indexes append-mostly
    ids = [new_record_id(t + i / 1000) for i in range(100)]
    assert ids == sorted(ids)
