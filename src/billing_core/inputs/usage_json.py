"""Usage events from JSON Lines files, read line by line (see `usage.read_rows`), and the
checks of JSON text that the SQL source's properties go through too."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from billing_core.domain.limits import MAX_DEPTH, TEXT_BYTES
from billing_core.inputs.usage_text import CSV_COLUMNS, clip, scan_file, text_problem


class _DuplicateKey(ValueError):
    """A JSON object names a key twice (raised on the fast path, which then reads again)."""


class _NotFinite(ValueError):
    """NaN or an infinity in a JSON line (raised on the fast path)."""


class _Duplicated(dict):
    """A JSON object that named `key` twice (the careful reading marks it)."""

    key: str = ""


class _LongInt(Decimal):
    """A JSON integer with more digits than Python converts to an int."""


class _Constant(Decimal):
    """NaN or an infinity written in a JSON line."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):
        raise _DuplicateKey
    return record


def _marked_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) == len(pairs):
        return record
    marked = _Duplicated(record)
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            marked.key = key
            break
        seen.add(key)
    return marked


def _not_finite(name: str) -> Any:
    raise _NotFinite(name)


def _long_int(digits: str) -> int | Decimal:
    limit = sys.get_int_max_str_digits()
    if limit and len(digits) - digits.startswith("-") > limit:
        return _LongInt(digits)
    return int(digits)


# Fast: every object checked for a key named twice, NaN and infinities refused (a line
# with either is read again carefully). Careful: both marked where they are, and long
# integers kept as decimals, so that the walk names the field.
_FAST_JSON = json.JSONDecoder(
    parse_float=Decimal, parse_constant=_not_finite, object_pairs_hook=_unique_pairs
)
_CAREFUL_JSON = json.JSONDecoder(
    parse_float=Decimal,
    parse_int=_long_int,
    parse_constant=_Constant,
    object_pairs_hook=_marked_pairs,
)
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}:]')
# An escape that writes a NUL or half of a surrogate pair (which may stand alone).
_RISKY_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    careful_file = not scan_file(path).utf8
    with path.open(encoding="utf-8", errors="surrogateescape") as handle:
        for number, line in enumerate(handle, start=1):
            if line.isspace():
                continue
            record: Any = None
            if not (
                careful_file
                or len(line) > TEXT_BYTES
                or ("\\u" in line and _RISKY_ESCAPE.search(line) is not None)
                or line.count("{") + line.count("[") > MAX_DEPTH
            ):
                try:
                    record = _FAST_JSON.decode(line)
                except json.JSONDecodeError as err:
                    yield number, {"__invalid__": f"not valid JSON ({err.msg})"}
                    continue
                except ValueError:  # a key twice, NaN, a very long integer: read carefully
                    record = None
            if record is None:
                record = _careful_json(line)
                if "__invalid__" in record:
                    yield number, record
                    continue
            if not isinstance(record, dict):
                yield number, {"__invalid__": "a line must be a JSON object"}
                continue
            props = record.get("properties") or {}
            if not isinstance(props, dict):
                yield number, {"__invalid__": "properties must be a JSON object"}
                continue
            for key in list(record):
                if key not in CSV_COLUMNS and key != "properties":
                    if key in props:
                        record = {
                            "__invalid__": "given both as a key of the line and in properties",
                            "__field__": _json_field(["properties", key]),
                        }
                        break
                    props[key] = record.pop(key)
            else:
                record["properties"] = props
            yield number, record


def _careful_json(line: str) -> dict[str, Any]:
    """A JSON line read with every check; a record with "__invalid__" if refused."""
    if line.count("{") + line.count("[") > MAX_DEPTH:
        path = _too_deep(line)
        if path is not None:
            return {"__invalid__": f"nested deeper than {MAX_DEPTH} levels", "__field__": path}
    try:
        record = _CAREFUL_JSON.decode(line)
    except (ValueError, RecursionError) as err:
        if text_problem(line) == "not UTF-8 text":
            return {"__invalid__": "not UTF-8 text"}
        msg = err.msg if isinstance(err, json.JSONDecodeError) else str(err)
        return {"__invalid__": f"not valid JSON ({msg})"}
    if not isinstance(record, dict):
        return {"__invalid__": "a line must be a JSON object"}
    found = _json_problem(record, [])
    if found is not None:
        where, reason = found
        return {
            **{k: clip(v) for k, v in record.items() if isinstance(v, str)},
            "__invalid__": reason,
            "__field__": _json_field(where),
        }
    return record


def read_properties(text: str) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    """Properties given as JSON text (a column of the SQL source), read with the checks of
    a JSON line: (the object, None), or (None, (field, reason))."""
    record = _careful_json('{"properties": ' + text + "}")
    if "__invalid__" in record:
        return None, (record.get("__field__", "properties"), record["__invalid__"])
    properties = record["properties"]
    if properties is None:
        return {}, None
    if not isinstance(properties, dict):
        return None, ("properties", "not a JSON object")
    return properties, None


def stored_problem(record: dict[str, Any]) -> tuple[str, str] | None:
    """The first text in a record (its properties included) that the store cannot hold, as
    (field, reason): for sources whose values were not read by `read_rows`."""
    found = _json_problem(record, [])
    return None if found is None else (_json_field(found[0]), found[1])


def _json_field(path: list[Any]) -> str:
    """A place in a JSON line as a message names it: the key of the line, and the
    property's key under `properties`."""
    names = [k if isinstance(k, str) and k.isprintable() and k else repr(k) for k in path[:2]]
    if len(names) == 2 and path[0] != "properties":
        names = names[:1]
    return ".".join(names) if names else "row"


def _json_problem(value: Any, path: list[Any]) -> tuple[list[Any], str] | None:
    """The first value in a parsed line that cannot be stored: where, and why."""
    if isinstance(value, str):
        reason = text_problem(value)
        return None if reason is None else (path, reason)
    if isinstance(value, dict):
        if isinstance(value, _Duplicated):
            return [*path, value.key], "the line names this key twice"
        for key, item in value.items():
            reason = text_problem(key)
            if reason is not None:
                return [*path, key], reason
            found = _json_problem(item, [*path, key])
            if found is not None:
                return found
        return None
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _json_problem(item, [*path, index])
            if found is not None:
                return found
        return None
    if len(path) == 1 and path[0] in CSV_COLUMNS:
        return None  # the validator judges the event's own numbers (a quantity too large)
    if isinstance(value, _Constant):
        return path, f"not a finite number: {str(value)!r}"
    if isinstance(value, _LongInt):
        digits = len(value.as_tuple().digits)
        return path, (
            f"a number of {digits:,} digits (at most {sys.get_int_max_str_digits():,} are read)"
        )
    return None


def _too_deep(line: str) -> str | None:
    """Where a JSON line nests deeper than MAX_DEPTH, found without parsing it (a parser
    would recurse as deep as the line goes)."""
    keys: list[Any] = []  # the key each open container sits under
    last: str | None = None
    key: str | None = None
    for token in _JSON_TOKEN.findall(line):
        if token[0] == '"':
            last = token
        elif token == ":":
            key = last
        elif token in "[{":
            keys.append(key)
            key = None
            if len(keys) > MAX_DEPTH:
                path = [_json_key(k) for k in keys[1:3] if k is not None]
                return _json_field(path)
        elif keys:
            keys.pop()
    return None


def _json_key(token: str) -> str:
    try:
        return json.loads(token)
    except ValueError:
        return token
