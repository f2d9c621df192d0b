"""DynamoDB keys in the forms podyn needs: as a row's primary key values, back from them, and as JSON.

A key (or a whole item, whose key attributes are read) in DynamoDB's wire form, ``{"pk": {"S": "a"}}``, becomes the
primary key values in primary key column order, as a row holds them; a row's key values become a DynamoDB key for
BatchGetItem again. A scan position (LastEvaluatedKey) is stored as JSON, binary values as base64 text. Not for
telling keys apart (:func:`podyn_py.core.changes.key_identity`) nor for showing them (:func:`values.key_text`).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

from podyn_py.core.schema import TableSpec
from podyn_py.core.values import split_value, to_column_value


def key_values(spec: TableSpec, key: Mapping[str, Any]) -> tuple[Any, ...]:
    """An item's (or a DynamoDB key's) primary key as the row holds it, in primary key column order."""
    return tuple(to_column_value(*split_value(key[attribute.name])) for attribute in spec.primary_key)


def key_from_values(spec: TableSpec, values: Sequence[Any]) -> dict[str, Any]:
    """A row's primary key values (in primary key column order) as a DynamoDB key."""
    return {
        k.name: {k.tag: str(v) if k.tag == "N" else bytes(v) if k.tag == "B" else v}
        for k, v in zip(spec.primary_key, values, strict=True)
    }


def key_to_json(key: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A key in wire form that JSON can hold: boto3's binary values become base64 text."""
    if key is None:
        return None
    result = {}
    for name, value in key.items():
        tag, raw = split_value(value)
        result[name] = {tag: base64.b64encode(raw).decode("ascii") if isinstance(raw, bytes) else raw}
    return result


def key_from_json(key: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The inverse of :func:`key_to_json`, ready for boto3 (binary as bytes)."""
    if key is None:
        return None
    result = {}
    for name, value in key.items():
        tag, raw = split_value(value)
        result[name] = {tag: base64.b64decode(raw) if tag == "B" else raw}
    return result
