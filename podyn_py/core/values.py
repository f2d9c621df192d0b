"""DynamoDB attribute values → PostgreSQL column values and JSON.

An attribute value arrives in DynamoDB's wire shape, a one-key dict such as ``{"N": "1.5"}``. Binary arrives as
``bytes`` from boto3 and as a base64 ``str`` from raw JSON responses; both are accepted.

Numbers never pass through a float, nor through boto3's TypeDeserializer (which rejects valid DynamoDB numbers such
as ``0e1000`` or 39-character strings): they become :class:`decimal.Decimal` with a context wide enough for every
number DynamoDB accepts, and nested numbers become JSON numbers written digit for digit.

PostgreSQL rejects U+0000 in text and jsonb, so it is removed; callers pass a list that gets an entry for each
value that lost one.

DynamoDB Local writes an empty map inside stream images as ``{}``, without its ``"M"``. A value with no type tag at
all can only be that, so :func:`split_value` reads it as an empty map; callers pass a list (``untagged``) that gets
an entry for each one, to count and report them. Anything else malformed stays an error.

:func:`to_json` is on every item's path, so it takes the common shapes (clean strings, plain numbers, maps, lists,
booleans, string sets) in a few checks and hands anything else to :func:`to_json_general`, which handles every shape
and raises every error; the two give the same tree, byte for byte once dumped (tests/test_fast_rows.py).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

import orjson

from podyn_py.errors import DataError


class PgType(StrEnum):
    """The PostgreSQL types podyn writes. A variant column is named after these values (``amount_text``)."""

    TEXT = "text"
    NUMERIC = "numeric"
    BYTEA = "bytea"
    BOOLEAN = "boolean"
    JSONB = "jsonb"


#: Every DynamoDB type tag and the column type its values go to. NULL has none: a null never decides a type.
PG_TYPE_OF_TAG: dict[str, PgType] = {
    "S": PgType.TEXT,
    "N": PgType.NUMERIC,
    "B": PgType.BYTEA,
    "BOOL": PgType.BOOLEAN,
    "M": PgType.JSONB,
    "L": PgType.JSONB,
    "SS": PgType.JSONB,
    "NS": PgType.JSONB,
    "BS": PgType.JSONB,
}
NULL_TAG = "NULL"

# What DynamoDB accepts as a number: optional sign, digits with an optional point, optional exponent.
# Decimal() alone would also take "1_000", " 1", "NaN" and "Infinity".
NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# The numbers whose JSON text is their DynamoDB text: str(Decimal(text)) == text (no sign to drop, no leading zero, no
# exponent, no point to complete, nothing small enough for str() to write with an exponent). A subset of NUMBER.
_plain_number = re.compile(r"-?(?:[1-9][0-9]*(?:\.[0-9]+)?|0(?:\.[1-9][0-9]*)?)").fullmatch


def decode_number(text: Any) -> Decimal:
    """Parse a DynamoDB number exactly. Raises DataError for anything DynamoDB would not have stored."""
    if not isinstance(text, str) or not NUMBER.fullmatch(text):
        raise DataError(f"not a DynamoDB number: {text!r}")
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only valid literals
        raise DataError(f"not a DynamoDB number: {text!r}") from exc


def is_plain_number(text: str) -> bool:
    """True when ``text`` is a DynamoDB number that JSON writes as it is (see _plain_number)."""
    # Digits alone first: cheaper than the pattern (isascii: "²".isdigit() is true too).
    if text.isdigit() and text.isascii():
        return text[0] != "0" or len(text) == 1
    return _plain_number(text) is not None


def json_number(text: Any) -> orjson.Fragment:
    """A DynamoDB number as a JSON number with every digit kept (``+3`` → ``3``, ``.5`` → ``0.5``)."""
    return orjson.Fragment(str(decode_number(text)))


def decode_binary(raw: Any) -> bytes:
    """Binary from boto3 (bytes) or from raw JSON (base64 text)."""
    if isinstance(raw, bytes | bytearray):
        return bytes(raw)
    if isinstance(raw, str):
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DataError(f"binary value is not valid base64: {raw[:40]!r}") from exc
    raise DataError(f"binary value of unexpected type {type(raw).__name__}")


def encode_binary(raw: Any) -> str:
    """Binary as the base64 text used inside JSON."""
    if isinstance(raw, str):
        decode_binary(raw)  # validate
        return raw
    return base64.b64encode(decode_binary(raw)).decode("ascii")


def split_value(value: Any, untagged: list[int] | None = None) -> tuple[str, Any]:
    """``{"S": "x"}`` → ``("S", "x")``; DataError for anything that is not a one-key attribute value.

    ``{}`` (no type tag: DynamoDB Local's empty map in stream images) → ``("M", {})``, with an entry appended to
    ``untagged`` when given.
    """
    if isinstance(value, dict) and not value:
        if untagged is not None:
            untagged.append(1)
        return "M", {}
    if not isinstance(value, dict) or len(value) != 1:
        raise DataError(f"not a DynamoDB attribute value: {_preview(value)}")
    ((tag, raw),) = value.items()
    return tag, raw


def strip_nul(text: str) -> str:
    return text.replace("\x00", "")


def to_json(value: Any, nuls: list[int] | None = None, untagged: list[int] | None = None) -> Any:
    """An attribute value as a tree that ``orjson.dumps`` writes with real JSON types.

    Maps become objects, lists and sets arrays, numbers JSON numbers (exact), binary base64 strings, NULL null.
    ``nuls``, when given, gets one entry appended for each string or map key that lost a U+0000; ``untagged`` one
    for each empty map without its ``"M"`` (see :func:`split_value`).

    The same as :func:`to_json_general`, which it calls for every value it does not take itself: a value with a
    U+0000 anywhere in it, a number str() would write otherwise, binary, NULL, anything malformed (for the error).
    """
    if value.__class__ is dict and len(value) == 1:
        ((tag, raw),) = value.items()
        if tag == "S":
            if raw.__class__ is str and "\x00" not in raw:
                return raw
        elif tag == "N":
            if raw.__class__ is str and is_plain_number(raw):
                return orjson.Fragment(raw)
            return json_number(raw)
        elif tag == "M":
            if raw.__class__ is dict and _all_clean(raw):
                return {k: to_json(v, nuls, untagged) for k, v in raw.items()}
        elif tag == "L":
            if raw.__class__ is list:
                return [to_json(v, nuls, untagged) for v in raw]
        elif tag == "BOOL":
            if raw.__class__ is bool:
                return raw
        elif tag == "SS":
            if raw.__class__ is list and _all_clean(raw):
                return raw  # the members as they are: to_json_general would copy them
        elif tag == "NS" and raw.__class__ is list:
            return [orjson.Fragment(n) if n.__class__ is str and is_plain_number(n) else json_number(n) for n in raw]
    return to_json_general(value, nuls, untagged)


def to_json_general(value: Any, nuls: list[int] | None = None, untagged: list[int] | None = None) -> Any:
    """:func:`to_json` for every value: each shape, each U+0000 counted, each error raised (the slow path)."""
    tag, raw = split_value(value, untagged)
    if tag == "S":
        return _clean(raw, nuls)
    if tag == "N":
        return json_number(raw)
    if tag == "M":
        if not isinstance(raw, dict):
            raise DataError(f"map value is not an object: {_preview(raw)}")
        return {_clean(k, nuls): to_json_general(v, nuls, untagged) for k, v in raw.items()}
    if tag == "L":
        if not isinstance(raw, list):
            raise DataError(f"list value is not an array: {_preview(raw)}")
        return [to_json_general(v, nuls, untagged) for v in raw]
    if tag == "BOOL":
        return _boolean(raw)
    if tag == "NULL":
        return check_null(raw)
    if tag == "B":
        return encode_binary(raw)
    if tag == "SS":
        return [_clean(s, nuls) for s in _set_members(raw, tag)]
    if tag == "NS":
        return [json_number(n) for n in _set_members(raw, tag)]
    if tag == "BS":
        return [encode_binary(b) for b in _set_members(raw, tag)]
    raise DataError(f"unknown DynamoDB type tag {tag!r}")


def dump_json(tree: Any) -> bytes:
    try:
        return orjson.dumps(tree)
    except orjson.JSONEncodeError as exc:  # e.g. a lone surrogate, possible only in hand-made JSON
        raise DataError(f"value cannot be written as JSON: {exc}") from exc


def check_null(raw: Any) -> None:
    """DynamoDB writes NULL only as ``{"NULL": true}``; anything else is malformed input."""
    if raw is not True:
        raise DataError(f"NULL value is not true: {_preview(raw)}")


def to_column_value(tag: str, raw: Any, nuls: list[int] | None = None, untagged: list[int] | None = None) -> Any:
    """A top-level attribute value as the Python value for its column (see PG_TYPE_OF_TAG).

    jsonb values come back as serialised JSON bytes, ready for :class:`podyn_py.target.postgres.JsonText`.
    ``untagged`` counts empty maps without their ``"M"`` nested in maps and lists (see :func:`split_value`).
    """
    if tag == "S":
        return _clean(raw, nuls)
    if tag == "N":
        return decode_number(raw)
    if tag == "B":
        return decode_binary(raw)
    if tag == "BOOL":
        return _boolean(raw)
    if tag == "NULL":
        return check_null(raw)
    return dump_json(to_json_general({tag: raw}, nuls, untagged))


def key_text(item: Mapping[str, Any], key_attributes: tuple[str, ...]) -> str:
    """A short printable form of an item's key, for error messages and logs."""
    parts = []
    for name in key_attributes:
        value = item.get(name)
        if value is None:
            parts.append(f"{name}=<missing>")
            continue
        try:
            tag, raw = split_value(value)
        except DataError:
            parts.append(f"{name}=<invalid>")
            continue
        shown = encode_binary(raw) if tag == "B" and isinstance(raw, bytes) else raw
        parts.append(f"{name}={shown}")
    return ", ".join(parts)


def _all_clean(strings: Any) -> bool:
    """True when every member (every key, of a dict) is a str without U+0000: one join instead of a loop."""
    try:
        return "\x00" not in "".join(strings)
    except TypeError:  # a member that is not a str: to_json_general says which
        return False


def _clean(text: Any, nuls: list[int] | None) -> str:
    if not isinstance(text, str):
        raise DataError(f"string value of unexpected type {type(text).__name__}")
    if "\x00" in text:
        if nuls is not None:
            nuls.append(1)
        return strip_nul(text)
    return text


def _boolean(raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise DataError(f"BOOL value is not true or false: {_preview(raw)}")
    return raw


def _set_members(raw: Any, tag: str) -> list[Any]:
    if not isinstance(raw, list):
        raise DataError(f"{tag} value is not an array: {_preview(raw)}")
    return raw


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
