"""Tests for protocol.jcs: published RFC 8785 vectors, fast path == reference, strict parsing."""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol.jcs as jcs
from protocol.errors import FormatError
from protocol.jcs import (
    MAX_SAFE_INTEGER,
    JSONValue,
    canonicalize,
    canonicalize_reference,
    parse_canonical,
    parse_json,
)

VECTORS = Path(__file__).parent / "vectors" / "jcs"
VECTOR_NAMES = sorted(p.stem for p in (VECTORS / "input").glob("*.json"))

needs_orjson = pytest.mark.skipif(jcs._orjson_dumps is None, reason="orjson not installed")


def _orjson(value: Any) -> bytes:
    """What orjson alone writes with the fast path's options."""
    assert jcs._orjson_dumps is not None
    return jcs._orjson_dumps(value, option=jcs._ORJSON_OPTIONS)


@pytest.fixture(params=["fast", "reference"])
def encoder(request: pytest.FixtureRequest) -> Any:
    return canonicalize if request.param == "fast" else canonicalize_reference


# ---------------------------------------------------------------------------------------------
# Published vectors
# ---------------------------------------------------------------------------------------------


def test_vector_set_is_complete() -> None:
    assert VECTOR_NAMES == [
        "arrays",
        "french",
        "simpleString",
        "structures",
        "unicode",
        "values",
        "weird",
    ]
    for name in VECTOR_NAMES:
        assert (VECTORS / "output" / f"{name}.json").is_file()


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_cyberphone_vectors(name: str, encoder: Any) -> None:
    source = (VECTORS / "input" / f"{name}.json").read_bytes()
    expected = (VECTORS / "output" / f"{name}.json").read_bytes()
    value = parse_json(source)
    assert encoder(value) == expected
    # The expected bytes are canonical, and parse to the same value.
    assert parse_canonical(expected) == value


def _number_vectors() -> Iterator[tuple[str, float, str]]:
    for line in (VECTORS / "numbers.txt").read_text("ascii").splitlines():
        bits, expected = line.split(",")
        value = struct.unpack(">d", bytes.fromhex(bits.zfill(16)))[0]
        yield bits, value, expected


NUMBER_VECTORS = list(_number_vectors())


def test_number_vectors_cover_appendix_b() -> None:
    assert len(NUMBER_VECTORS) == 29


@pytest.mark.parametrize(("bits", "value", "expected"), NUMBER_VECTORS)
def test_es6_number_formatting(bits: str, value: float, expected: str) -> None:
    if expected == "null":
        assert not math.isfinite(value)
        return
    assert jcs._es_number(value) == expected
    assert float(expected) == value


@pytest.mark.parametrize(("bits", "value", "expected"), NUMBER_VECTORS)
def test_number_vectors_through_canonicalize(
    bits: str, value: float, expected: str, encoder: Any
) -> None:
    refused_by_policy = value.is_integer() and MAX_SAFE_INTEGER < abs(value) < 1e21
    if expected == "null" or refused_by_policy:
        with pytest.raises(FormatError):
            encoder(value)
        with pytest.raises(FormatError):
            encoder([value])
    else:
        assert encoder(value) == expected.encode()
        assert encoder({"n": [value]}) == b'{"n":[' + expected.encode() + b"]}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, "1"),
        (-1.5, "-1.5"),
        (100.0, "100"),
        (1e20, None),  # integral beyond 2^53: refused by policy
        (1e21, "1e+21"),
        (1.5e21, "1.5e+21"),
        (1e-6, "0.000001"),
        (1.5e-6, "0.0000015"),
        (1e-7, "1e-7"),
        (1.25e-7, "1.25e-7"),
        (123456789.125, "123456789.125"),
        (-0.0, "0"),
        (0.1, "0.1"),
        (float(MAX_SAFE_INTEGER), "9007199254740991"),
    ],
)
def test_float_layout(value: float, expected: str | None, encoder: Any) -> None:
    if expected is None:
        with pytest.raises(FormatError):
            encoder(value)
    else:
        assert encoder(value) == expected.encode()


# ---------------------------------------------------------------------------------------------
# Fast path == reference, proved rather than assumed
# ---------------------------------------------------------------------------------------------


@needs_orjson
def test_every_code_point_is_escaped_like_jcs() -> None:
    """orjson's string escaping equals RFC 8785's for every code point (surrogates excluded)."""
    step = 0x1000
    for start in range(0, 0x110000, step):
        text = "".join(chr(c) for c in range(start, start + step) if not 0xD800 <= c <= 0xDFFF)
        if not text:
            continue
        value: JSONValue = {"k": text, text: 1}
        assert _orjson(value) == canonicalize_reference(
            value
        )


@needs_orjson
@pytest.mark.parametrize("code", [*range(0x20), 0x22, 0x2F, 0x5C, 0x7F])
def test_control_and_special_characters(code: int) -> None:
    value: JSONValue = {chr(code): chr(code)}
    expected = canonicalize_reference(value)
    assert _orjson(value) == expected
    assert canonicalize(value) == expected
    short = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}
    if code in short:
        assert short[code].encode() in expected
    elif code < 0x20:
        assert f"\\u{code:04x}".encode() in expected
    elif code in (0x22, 0x5C):
        assert b"\\" + bytes([code]) in expected
    else:  # '/' and DEL are not escaped
        assert expected == b'{"' + bytes([code]) + b'":"' + bytes([code]) + b'"}'


def test_utf16_key_order_differs_from_code_point_order(encoder: Any) -> None:
    # U+1F600 sorts before U+E000 in UTF-16 (lead surrogate D83D < E000), after it by code point.
    value = {"\ue000": 1, "\U0001f600": 2, "a": 3}
    assert encoder(value) == '{"a":3,"\U0001f600":2,"\ue000":1}'.encode()


@needs_orjson
def test_orjson_would_get_that_order_wrong() -> None:
    """Documents why the fast path checks for astral + U+E000..U+FFFF characters."""
    value: JSONValue = {"\ue000": 1, "\U0001f600": 2}
    assert _orjson(value) != canonicalize_reference(value)
    assert canonicalize(value) == canonicalize_reference(value)


@needs_orjson
def test_orjson_would_get_floats_wrong() -> None:
    assert _orjson([1.0, 1e21]) != b"[1,1e+21]"
    assert canonicalize([1.0, 1e21]) == b"[1,1e+21]"


def _record(seed: int) -> dict[str, JSONValue]:
    hex32 = f"{seed:032x}"
    return {
        "v": 1,
        "type": "entry",
        "id": hex32,
        "author": "org.example",
        "hash": {"type": "pdq", "value": hex32 * 2, "quality": seed % 101},
        "labels": ["ic:A1", "tvec:demo"],
        "provenance": {"chain": [], "first_seen": "2026-11-20T10:00:00Z", "x": None},
        "flags": [True, False],
    }


@needs_orjson
def test_plain_records_take_the_orjson_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(value: JSONValue) -> bytes:
        raise AssertionError("reference path taken")

    unicode_value: JSONValue = {"é": "ü", "\U0001f600": "\x00", "中": ["\u2028"]}
    expected = [canonicalize_reference(_record(7)), canonicalize_reference(unicode_value)]
    monkeypatch.setattr(jcs, "canonicalize_reference", forbidden)
    assert [canonicalize(_record(7)), canonicalize(unicode_value)] == expected


def test_without_orjson_the_reference_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jcs, "_orjson_dumps", None)
    assert canonicalize(_record(3)) == canonicalize_reference(_record(3))
    with pytest.raises(FormatError):
        canonicalize({"a": float("nan")})


# Text that exercises every interesting region: controls, quotes, DEL, Latin-1, the U+E000..U+FFFF
# block, astral characters, and anything else hypothesis likes (surrogates excluded).
_SPECIAL = st.sampled_from(
    ["\x00", "\x1f", "\n", '"', "\\", "/", "\x7f", "é", "\u2028", "\ue000", "\uffff", "\U0001f600"]
)
_TEXT = st.lists(
    st.one_of(_SPECIAL, st.characters(exclude_categories=["Cs"])), max_size=8
).map("".join)
_INTS = st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
_FLOATS = st.floats(allow_nan=False, allow_infinity=False).filter(
    lambda x: not (x.is_integer() and MAX_SAFE_INTEGER < abs(x) < 1e21)
)


def _json_values(floats: bool) -> st.SearchStrategy[JSONValue]:
    scalars: list[st.SearchStrategy[Any]] = [st.none(), st.booleans(), _INTS, _TEXT]
    if floats:
        scalars.append(_FLOATS)
    return st.recursive(
        st.one_of(scalars),
        lambda children: st.one_of(
            st.lists(children, max_size=5), st.dictionaries(_TEXT, children, max_size=5)
        ),
        max_leaves=30,
    )


PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(_json_values(floats=True))
def test_fast_equals_reference(value: JSONValue) -> None:
    assert canonicalize(value) == canonicalize_reference(value)


@PROPERTY
@given(_json_values(floats=False))
def test_fast_equals_reference_without_floats(value: JSONValue) -> None:
    # No floats: these are the values that can stay on the orjson path.
    assert canonicalize(value) == canonicalize_reference(value)


@PROPERTY
@given(_json_values(floats=True))
def test_round_trip_and_idempotence(value: JSONValue) -> None:
    data = canonicalize(value)
    parsed = parse_json(data, max_depth=100)
    assert parsed == value
    assert canonicalize(parsed) == data
    assert parse_canonical(data, max_depth=100) == value


@settings(max_examples=2000, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_es_number_is_shortest_round_trip(value: float) -> None:
    text = jcs._es_number(value)
    assert float(text) == value
    digits = text.lstrip("-").split("e")[0].replace(".", "").strip("0")
    shortest = repr(abs(value)).split("e")[0].replace(".", "").strip("0")
    assert len(digits) == len(shortest) or value == 0


# ---------------------------------------------------------------------------------------------
# Values JCS cannot represent
# ---------------------------------------------------------------------------------------------


class _Str(str):
    __slots__ = ()


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        [float("-inf")],
        {"a": {"b": [1, float("nan")]}},
        {1: "x"},
        {None: "x"},
        {_Str("k"): 1},
        "\ud800",
        ["ok", "a\udfffb"],
        {"\udc00": 1},
        MAX_SAFE_INTEGER + 1,
        [-MAX_SAFE_INTEGER - 1],
        {"n": 2**64},
        (1, 2),
        {"t": (1, 2)},
        b"bytes",
        {"s": {1, 2}},
        _Str("sub"),
        [_Str("sub")],
        object(),
    ],
)
def test_unrepresentable_values_are_refused(value: Any, encoder: Any) -> None:
    with pytest.raises(FormatError):
        encoder(value)


def test_error_names_the_field() -> None:
    with pytest.raises(FormatError) as info:
        canonicalize({"a": [1, {"b/c": float("nan")}]})
    assert info.value.field == "/a/1/b~1c"


def test_int_bounds(encoder: Any) -> None:
    assert encoder([MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER]) == b"[9007199254740991,-9007199254740991]"
    assert encoder(True) == b"true" and encoder([False, None]) == b"[false,null]"


def test_deep_values(encoder: Any) -> None:
    # Deeper than orjson's own limit (254) but within ours: both paths agree.
    value: Any = []
    for _ in range(300):
        value = [value]
    assert encoder(value) == b"[" * 301 + b"]" * 301
    for _ in range(600):
        value = [value]
    with pytest.raises(FormatError):
        encoder(value)


def test_very_deep_values_do_not_crash(encoder: Any) -> None:
    value: Any = {}
    for _ in range(sys.getrecursionlimit() * 2):
        value = {"a": value}
    with pytest.raises(FormatError):
        encoder(value)


# ---------------------------------------------------------------------------------------------
# Strict parsing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1,"a":2}',
        b'{"a":{"b":1,"b":1}}',
        b'{"\\u0061":1,"a":2}',  # duplicates after unescaping
        b"\xff",
        b'"\xc3"',  # truncated sequence
        b'"\xed\xa0\x80"',  # UTF-8-encoded surrogate
        b'"\xc0\xaf"',  # overlong
        b"\xef\xbb\xbf{}",  # BOM
        b"NaN",
        b"[NaN]",
        b"Infinity",
        b"[-Infinity]",
        b"1e400",
        b"[-1e999]",
        b'"\\ud800"',
        b'"\\uDFFF"',
        b'{"\\ud83d":1}',
        b'["\\ude02\\ud83d"]',  # pair in the wrong order
        b"[" * 33 + b"]" * 33,
        b'{"a":' * 33 + b"1" + b"}" * 33,
        b"[" * 100000,
        b"{} x",
        b"[1]]",
        b"[1,]",
        b"{'a':1}",
        b"",
        b"   ",
        b"01",
        b"// comment\n1",
        b'"raw\ncontrol"',
        b"9007199254740992",
        b"[-9007199254740992]",
        b"1" * 5000,
        b'{"a":1}\x00',
    ],
)
def test_parse_json_rejects(data: bytes) -> None:
    with pytest.raises(FormatError):
        parse_json(data)


def test_parse_json_rejects_non_bytes() -> None:
    with pytest.raises(FormatError):
        parse_json("{}")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b' {"a" : [1, 2.5, "x", true, false, null]}\n', {"a": [1, 2.5, "x", True, False, None]}),
        (b'"\\ud83d\\ude02"', "\U0001f602"),
        (b"[" * 32 + b"]" * 32, [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]),
        (b"9007199254740991", MAX_SAFE_INTEGER),
        (b"-9007199254740991", -MAX_SAFE_INTEGER),
        (b"1E2", 100.0),
        (b'"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["', "[" * 42),
        (b'"\\\\ud800"', "\\ud800"),  # an escaped backslash, not a surrogate escape
    ],
)
def test_parse_json_accepts(data: bytes, value: JSONValue) -> None:
    assert parse_json(data) == value


def test_parse_json_types() -> None:
    parsed = parse_json(b"[1,1.0,1e0]")
    assert isinstance(parsed, list)
    assert [type(x) for x in parsed] == [int, float, float]


def test_max_depth_parameter() -> None:
    assert parse_json(b"[[1]]", max_depth=2) == [[1]]
    with pytest.raises(FormatError):
        parse_json(b"[[1]]", max_depth=1)
    assert parse_json(b"1", max_depth=0) == 1
    with pytest.raises(FormatError):
        parse_json(b"[]", max_depth=0)


@pytest.mark.parametrize(
    "data",
    [
        b'{"b":1,"a":2}',  # unsorted
        b'{"a": 1}',  # whitespace
        b"[1.0]",
        b"[1e+21 ]",
        b"[1E+21]",
        b'"\\u0041"',
        b'"\\/"',
        b'"\\u001F"',  # uppercase hex
        b"-0",
        b"[1e2]",
        b'{"\\ue000":1,"\\ud83d\\ude00":2}',
        '{"\ue000":1,"\U0001f600":2}'.encode(),  # code point order, not UTF-16 order
        b'{"a":1}\n',
        b"1e20",  # value refused by policy
    ],
)
def test_parse_canonical_rejects_non_canonical(data: bytes) -> None:
    parse_json(data)  # well-formed ...
    with pytest.raises(FormatError):
        parse_canonical(data)  # ... but not canonical


def test_parse_canonical_message() -> None:
    with pytest.raises(FormatError, match="not canonical"):
        parse_canonical(b'{"b":1,"a":2}')


def test_parse_canonical_accepts_record() -> None:
    record = _record(42)
    data = canonicalize(record)
    assert parse_canonical(data) == record


def test_never_a_foreign_exception() -> None:
    for data in [b"\x80", b"{", b'{"a"', b"[1,2", b"tru", b'"\\x"', b'"\\u12"', b"-", b"1.", b".5"]:
        with pytest.raises(FormatError):
            parse_json(data)
