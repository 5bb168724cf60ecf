"""RFC 8785 (JCS) canonical JSON bytes, and the strict I-JSON parser that goes with them.

Every signed or hashed structure in hashfed is the JCS encoding of a JSON value, so two nodes
that hold the same value always produce the same bytes. This module has three parts:

* ``canonicalize_reference`` — a plain, pure-Python RFC 8785 encoder: UTF-16 code unit key
  order (§3.2.3), minimal string escaping (§3.2.2.2) and ECMAScript ``Number::toString`` for
  numbers (§3.2.2.3). It is the definition; everything else is checked against it.
* ``canonicalize`` — the same bytes, faster: when orjson is importable and the value lies in a
  subset where ``orjson.dumps(value, option=OPT_SORT_KEYS)`` is byte-identical to JCS (no
  floats, exact JSON types only, key order unaffected by UTF-16), orjson writes the bytes;
  anything else goes through the reference encoder. tests/test_jcs.py proves the identity.
* ``parse_json`` / ``parse_canonical`` — a strict I-JSON (RFC 7493) reader that never lets a
  foreign exception escape.

Policy beyond RFC 8785, applied identically on both encoding paths and by the parser: integers
must lie within ±(2^53 − 1) (``MAX_SAFE_INTEGER``), because beyond that an IEEE-754 double — the
only number type JCS knows — is no longer exact. A float with an integral value beyond that
bound (e.g. ``1e20``) is refused too, since JCS would write it as a bare integer that the parser
must refuse; ``1e21`` and above are written in exponent form and are accepted.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

from protocol.errors import FormatError

JSONValue: TypeAlias = bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"] | None

MAX_SAFE_INTEGER = 2**53 - 1

# Deeper values are refused by both encoding paths rather than left to Python's recursion limit,
# whose distance from the caller's own stack depth is unknowable.
_MAX_ENCODE_DEPTH = 500

_orjson_dumps: Callable[..., bytes] | None
try:  # orjson is an optional accelerator; the reference path gives identical bytes without it.
    import orjson

    _orjson_dumps = orjson.dumps
    _ORJSON_OPTIONS = orjson.OPT_SORT_KEYS
except ImportError:  # pragma: no cover - exercised only where orjson is not installed
    _orjson_dumps = None
    _ORJSON_OPTIONS = 0


# ---------------------------------------------------------------------------------------------
# Reference encoder
# ---------------------------------------------------------------------------------------------

# RFC 8785 §3.2.2.2: escape only '"', '\' and U+0000..U+001F; five of the controls have short
# forms, the rest use lowercase \u00xx. Everything else (DEL, U+2028, non-ASCII) is written as is.
_ESCAPE_RE = re.compile('[\x00-\x1f"\\\\]')
_ESCAPES: dict[str, str] = {chr(c): f"\\u{c:04x}" for c in range(0x20)}
_ESCAPES.update({'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n"})
_ESCAPES.update({"\f": "\\f", "\r": "\\r"})
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _escape_match(match: re.Match[str]) -> str:
    return _ESCAPES[match.group()]


def _pointer(path: list[str | int]) -> str:
    """The JSON Pointer (RFC 6901) naming a position inside the value, for error messages."""
    if not path:
        return "/"
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _format_string(text: str, path: list[str | int]) -> str:
    # A lone surrogate has no UTF-8 encoding, so no JCS text can carry it (RFC 8785 §3.2.2.2).
    if not text.isascii() and _SURROGATE_RE.search(text):
        raise FormatError("string contains a lone surrogate", field=_pointer(path))
    return '"' + _ESCAPE_RE.sub(_escape_match, text) + '"'


def _es_number(value: float) -> str:
    """ECMAScript Number::toString of a finite double (ECMA-262 §7.1.12.1, RFC 8785 §3.2.2.3).

    repr() gives the shortest digit string that round-trips, choosing the closest one when
    several are equally short (David Gay's mode 0) — exactly the digits ECMAScript asks for;
    only the layout differs, and that is redone here from the digits and the decimal exponent.
    """
    if value == 0:
        return "0"  # also -0: ECMAScript writes both zeros as "0"
    text = repr(value)
    sign = ""
    if text[0] == "-":
        sign, text = "-", text[1:]
    mantissa, _, exponent_text = text.partition("e")
    integer_part, _, fraction_part = mantissa.partition(".")
    digits = integer_part + fraction_part
    # n is the position of the decimal point relative to the digit string: value = 0.digits × 10^n
    n = len(integer_part) + (int(exponent_text) if exponent_text else 0)
    significant = digits.lstrip("0")
    n -= len(digits) - len(significant)
    digits = significant.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * (-n) + digits
    else:
        exponent = n - 1
        marker = "e+" if exponent >= 0 else "e-"
        mantissa_out = digits if k == 1 else digits[0] + "." + digits[1:]
        body = mantissa_out + marker + str(abs(exponent))
    return sign + body


def _format_float(value: float, path: list[str | int]) -> str:
    if not math.isfinite(value):
        raise FormatError(f"{value!r} cannot be represented in JSON", field=_pointer(path))
    if value.is_integer() and MAX_SAFE_INTEGER < abs(value) < 1e21:
        # JCS would write this as a bare integer beyond ±(2^53 − 1), which parse_json refuses.
        raise FormatError(
            f"integer-valued number {value!r} is beyond ±(2^53 - 1)", field=_pointer(path)
        )
    return _es_number(value)


def _utf16_key(key: str) -> bytes:
    # Big-endian UTF-16 bytes compare exactly like the sequence of UTF-16 code units (§3.2.3).
    return key.encode("utf-16-be")


def _encode(value: object, path: list[str | int], out: list[str]) -> None:
    kind = type(value)
    if kind is str:
        out.append(_format_string(value, path))  # type: ignore[arg-type]
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif kind is int:
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:  # type: ignore[operator]
            raise FormatError(f"integer {value} is beyond ±(2^53 - 1)", field=_pointer(path))
        out.append(str(value))
    elif kind is float:
        out.append(_format_float(value, path))  # type: ignore[arg-type]
    elif kind is list:
        if len(path) >= _MAX_ENCODE_DEPTH:
            raise FormatError("value is nested too deeply", field=_pointer(path))
        items: list[Any] = value  # type: ignore[assignment]
        out.append("[")
        for index, item in enumerate(items):
            if index:
                out.append(",")
            path.append(index)
            _encode(item, path, out)
            path.pop()
        out.append("]")
    elif kind is dict:
        if len(path) >= _MAX_ENCODE_DEPTH:
            raise FormatError("value is nested too deeply", field=_pointer(path))
        members: dict[Any, Any] = value  # type: ignore[assignment]
        for key in members:
            if type(key) is not str:
                raise FormatError(
                    f"object member name {key!r} is not a str", field=_pointer(path)
                )
            if not key.isascii() and _SURROGATE_RE.search(key):
                raise FormatError("member name contains a lone surrogate", field=_pointer(path))
        out.append("{")
        for index, key in enumerate(sorted(members, key=_utf16_key)):
            if index:
                out.append(",")
            out.append(_format_string(key, path))
            out.append(":")
            path.append(key)
            _encode(members[key], path, out)
            path.pop()
        out.append("}")
    else:
        # Exact types only: subclasses (enums, str/int subclasses), tuples, bytes, datetimes...
        # have no single obvious JSON form, so the caller converts them explicitly.
        raise FormatError(f"{kind.__name__} is not a JSON type", field=_pointer(path))


def canonicalize_reference(value: JSONValue) -> bytes:
    """Encode ``value`` as RFC 8785 canonical JSON, in plain Python.

    Accepts exactly ``None``, ``bool``, ``int`` (within ±MAX_SAFE_INTEGER), finite ``float``,
    ``str``, ``list`` and ``dict`` with ``str`` keys — no subclasses, no tuples. Raises
    ``FormatError`` (with ``field`` set to a JSON Pointer) for anything JCS cannot represent.
    """
    out: list[str] = []
    _encode(value, [], out)
    # Surrogates were refused above, so this encode cannot fail.
    return "".join(out).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Fast path
# ---------------------------------------------------------------------------------------------


def _plain(values: Iterable[Any]) -> bool:
    """True if every value below is an exact str/int-in-range/bool/None/list/dict (no float).

    Called with a dict's values or a list's items; one function for both keeps the hot path's
    rules in one place.
    """
    for item in values:
        kind = type(item)
        if kind is str:
            continue
        if kind is int:
            if -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                continue
            return False
        if kind is dict:
            if not _plain(item.values()):
                return False
        elif kind is list:
            if not _plain(item):
                return False
        elif kind is not bool and item is not None:
            return False
    return True


# UTF-16 and code point order disagree only between a character above U+FFFF (UTF-8 lead byte
# F0..F4) and one in U+E000..U+FFFF (lead byte EE or EF). Seeing both anywhere in the output is a
# cheap over-approximation of "two such characters meet in one object's member names".
_ASTRAL_LEAD_RE = re.compile(b"[\xf0-\xf4]")
_HIGH_BMP_LEAD_RE = re.compile(b"[\xee\xef]")


def canonicalize(value: JSONValue) -> bytes:
    """Encode ``value`` as RFC 8785 canonical JSON; byte-identical to ``canonicalize_reference``.

    Takes the orjson path when orjson is installed and the value holds no floats and only the
    exact JSON types (floats are laid out differently by orjson: ``1.0`` versus JCS ``1``), and
    the output cannot have been sorted differently from UTF-16 order. Otherwise, and for every
    error, the reference encoder decides, so the errors are the same with or without orjson.
    """
    if _orjson_dumps is not None:
        kind = type(value)
        try:
            if kind is dict:
                plain = _plain(value.values())  # type: ignore[union-attr]
            elif kind is list:
                plain = _plain(value)  # type: ignore[arg-type]
            else:
                plain = False  # a bare scalar: nothing to gain
        except RecursionError:
            plain = False  # absurdly deep: the reference path refuses it with a FormatError
        if plain:
            try:
                data = _orjson_dumps(value, option=_ORJSON_OPTIONS)
            except TypeError:
                # orjson.JSONEncodeError (a TypeError): non-str key, lone surrogate, or its own
                # nesting limit of 254. The reference path raises the precise error, or encodes
                # the deep-but-legal value.
                pass
            else:
                if (
                    data.isascii()
                    or _ASTRAL_LEAD_RE.search(data) is None
                    or _HIGH_BMP_LEAD_RE.search(data) is None
                ):
                    return data
    return canonicalize_reference(value)


# ---------------------------------------------------------------------------------------------
# Strict parsing
# ---------------------------------------------------------------------------------------------

_UTF8_BOM = b"\xef\xbb\xbf"
# A lone surrogate can only enter through a \uD800..\uDFFF escape: strict UTF-8 decoding refuses
# encoded surrogates. Finding no such escape lets the common case skip the tree walk.
_SURROGATE_ESCAPE_RE = re.compile(rb"\\u[dD][89a-fA-F]")


def _reject_constant(name: str) -> JSONValue:
    raise FormatError(f"{name} is not a JSON number")


def _parse_int(text: str) -> int:
    # Bound the length first: int() of thousands of digits is slow and raises ValueError.
    if len(text) > 17 or not -MAX_SAFE_INTEGER <= (number := int(text)) <= MAX_SAFE_INTEGER:
        raise FormatError(f"integer {text[:40]} is beyond ±(2^53 - 1)")
    return number


def _parse_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise FormatError(f"number {text[:40]} is too large for an IEEE-754 double")
    return number


def _object_from_pairs(pairs: list[tuple[str, JSONValue]]) -> dict[str, JSONValue]:
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise FormatError(f"duplicate object member name {key!r}")
            seen.add(key)
    return members


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_from_pairs,
    parse_int=_parse_int,
    parse_float=_parse_float,
    parse_constant=_reject_constant,
    strict=True,  # raw control characters inside strings are an error
)


def _check_tree(value: JSONValue, max_depth: int, check_surrogates: bool) -> None:
    """Enforce the nesting limit and (when escapes made it possible) refuse lone surrogates."""
    stack: list[tuple[JSONValue, int, str]] = [(value, 0, "")]
    while stack:
        node, depth, where = stack.pop()
        if isinstance(node, str):
            if check_surrogates and _SURROGATE_RE.search(node):
                raise FormatError("string contains a lone surrogate escape", field=where or "/")
        elif isinstance(node, list | dict):
            if depth >= max_depth:
                raise FormatError(f"nesting deeper than {max_depth} levels", field=where or "/")
            if isinstance(node, dict):
                for key, item in node.items():
                    escaped = key.replace("~", "~0").replace("/", "~1")
                    if check_surrogates and _SURROGATE_RE.search(key):
                        raise FormatError(
                            "member name contains a lone surrogate escape", field=where or "/"
                        )
                    stack.append((item, depth + 1, f"{where}/{escaped}"))
            else:
                stack.extend((item, depth + 1, f"{where}/{i}") for i, item in enumerate(node))


def parse_json(data: bytes, *, max_depth: int = 32) -> JSONValue:
    """Parse ``data`` as strict I-JSON (RFC 7493).

    Refuses, with ``FormatError``: input that is not valid UTF-8 or starts with a byte order
    mark; anything that is not exactly one JSON text (trailing data, NaN, Infinity, comments);
    duplicate member names; lone surrogates, raw or escaped; integers beyond ±(2^53 − 1);
    numbers that overflow a double; and containers nested more than ``max_depth`` levels.
    Integers come back as ``int``, numbers with a fraction or exponent as ``float``.
    """
    if not isinstance(data, bytes):
        raise FormatError(f"expected bytes, got {type(data).__name__}")
    if data.startswith(_UTF8_BOM):
        raise FormatError("JSON text starts with a byte order mark")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"JSON text is not valid UTF-8 (byte offset {e.start})") from e
    try:
        value: JSONValue = _DECODER.decode(text)
    except json.JSONDecodeError as e:
        raise FormatError(f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except RecursionError as e:
        raise FormatError(f"nesting deeper than {max_depth} levels") from e
    except ValueError as e:  # e.g. float() of a pathological literal
        raise FormatError(f"invalid JSON: {e}") from e
    # The number of brackets bounds the depth, so most inputs skip the walk entirely.
    check_surrogates = _SURROGATE_ESCAPE_RE.search(data) is not None
    if check_surrogates or data.count(b"[") + data.count(b"{") > max_depth:
        _check_tree(value, max_depth, check_surrogates)
    return value


def parse_canonical(data: bytes, *, max_depth: int = 32) -> JSONValue:
    """Parse ``data`` like ``parse_json`` and require it to be exactly its own JCS encoding.

    Signatures and hashes cover the bytes received, so a record is accepted only in the one
    encoding every node would produce; any other spelling of the same value is refused.
    """
    value = parse_json(data, max_depth=max_depth)
    if canonicalize(value) != data:
        raise FormatError("not canonical JSON (RFC 8785): re-encoding gives different bytes")
    return value
