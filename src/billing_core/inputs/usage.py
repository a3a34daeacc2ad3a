"""Usage: streamed, validated, idempotent ingestion, and aggregation in the database.

Files are read row by row; rows are written in batches (COPY into a staging table on
PostgreSQL, multi-row inserts on SQLite) inside one transaction, so a refused file leaves
nothing behind and memory does not grow with the file.
"""

from __future__ import annotations

import codecs
import csv
import json
import queue
import re
import sys
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain.limits import FIRST_DAY, LAST_DAY, MAX_DEPTH, TEXT_BYTES
from billing_core.store.engine import is_postgres
from billing_core.store.files import SafeCsvWriter
from billing_core.store.models import Customer, Metric, UsageEvent, UsageLoad, UsageTouch

# Metric values are stored as integers of 10^-6 units: exact sums on both stores.
SCALE = 10**6
MAX_DECIMALS = 6
BATCH = 20_000
CSV_COLUMNS = ("event_id", "customer", "metric", "timestamp", "quantity")

# What the store and the calendar hold; anything beyond is refused at the door (SPEC §10).
# A quantity's millionths must fit the 64-bit `value` column: at most 9,223,372,036,854.775807
# (docs/decisions.md says why the column is not widened to the spec's 10^15).
MAX_VALUE = 2**63 - 1
MAX_QUANTITY = Decimal(MAX_VALUE).scaleb(-MAX_DECIMALS)
TOO_LARGE = f"(the store holds quantities up to {MAX_QUANTITY:,})"
FIRST_INSTANT = datetime.combine(FIRST_DAY, time(), UTC)
END_INSTANT = datetime.combine(LAST_DAY + timedelta(days=1), time(), UTC)
OUTSIDE_CALENDAR = f"outside {FIRST_DAY}..{LAST_DAY} UTC"
# The careful CSV reading still stops somewhere: a field this long (an unclosed quote,
# most likely) makes the rest of the file unreadable, in bounded memory.
CAREFUL_FIELD_LIMIT = 64 * 2**20
EVENT_ID_LIMIT = 256  # the length of usage_events.event_id


@dataclass(frozen=True)
class Problem:
    """One refused row: where, which field, why."""

    file: str
    row: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: row {self.row}: {self.field}: {self.reason}"


class UsageRefused(ValueError):
    """Usage files refused whole (nothing was written)."""

    def __init__(self, summary: str, problems: list[Problem]):
        super().__init__(summary)
        self.summary = summary
        self.problems = problems


@dataclass
class IngestResult:
    files: int = 0
    read: int = 0
    loaded: int = 0
    duplicates: int = 0
    rejected: int = 0
    problems: list[Problem] = field(default_factory=list)
    # Files that cannot be read (a refused header, an unclosed quote): the load is refused
    # even when invalid rows may be skipped.
    unreadable: int = 0


@dataclass(frozen=True)
class MetricDef:
    code: str
    aggregation: str
    field: str | None


# --- reading -----------------------------------------------------------------------------
#
# Readers yield (row number, record). A record the reader already refuses carries the
# reason under "__invalid__" and the field under "__field__" (default "row"); one with
# "__unreadable__" refuses its whole file. The usual row costs no more than it did before the
# door's checks: a file's bytes are scanned once up front (ASCII, UTF-8, NUL), and only a
# file or line that could hold a problem goes through the slower, careful reading.


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, raw record) pairs; the CSV header is row 1, a JSON line its line."""
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        yield from _read_jsonl(path)
    else:
        yield from _read_csv(path)


@dataclass(frozen=True)
class _Scan:
    ascii: bool  # every byte below 0x80 (a leading UTF-8 byte order mark aside)
    utf8: bool  # the whole file decodes as UTF-8
    nul: bool  # some byte is 0


def _scan(path: Path) -> _Scan:
    """What a file's bytes hold, read in large blocks (a small fraction of parsing it)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    ascii, utf8, nul = True, True, False
    with path.open("rb") as handle:
        block = handle.read(1 << 20).removeprefix(codecs.BOM_UTF8)
        while block:
            nul = nul or b"\x00" in block
            if ascii and block.isascii():
                pass
            else:
                ascii = False
                if utf8:
                    try:
                        decoder.decode(block)
                    except UnicodeDecodeError:
                        utf8 = False
            block = handle.read(1 << 20)
    if utf8:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            utf8 = False
    return _Scan(ascii, utf8, nul)


def _text_problem(value: str) -> str | None:
    """Why a text cannot be stored: a NUL, bytes that were not UTF-8, or over 64 KiB."""
    if "\x00" in value:
        return "contains a NUL character"
    if value.isascii():
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:  # a byte that was not UTF-8, kept as a lone surrogate
            return "not UTF-8 text"
    if size > TEXT_BYTES:
        return f"longer than 64 KiB ({size:,} bytes)"
    return None


def _clip(value: Any, limit: int = 200) -> Any:
    """A value as the rejects file shows a refused row: long text cut short."""
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"… ({len(value):,} characters)"
    return value


def _shown(value: Any) -> str:
    """A value as a reason quotes it: long text cut short."""
    text = str(value).strip()
    return text if len(text) <= 40 else text[:20] + f"… ({len(text):,} characters)"


def _column(names: list[str], index: int) -> str:
    """A CSV column as a message names it."""
    name = names[index] if index < len(names) else ""
    return name if name and name.isprintable() else f"column {index + 1}"


def _csv_header(cells: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The header's column names, and its problems as (field, reason) pairs."""
    problems = []
    for i, cell in enumerate(cells):
        reason = _text_problem(cell)
        if reason is not None:
            problems.append((f"column {i + 1}", reason))
    names = [h.strip() for h in cells]
    if problems:
        return names, problems
    seen: set[str] = set()
    reported: set[str] = set()
    for i, name in enumerate(names):
        if name in seen and name not in reported:
            problems.append((_column(names, i), "the header names this column twice"))
            reported.add(name)
        seen.add(name)
    missing = [c for c in ("event_id", "customer", "metric", "timestamp") if c not in names]
    if missing:
        problems.append(
            (
                "header",
                f"lacks {', '.join(missing)} (expected {','.join(CSV_COLUMNS)}, other "
                "columns become properties)",
            )
        )
    return names, problems


def _read_csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a CSV file.

    A file of plain ASCII without NUL bytes is read fast: the csv module's own field limit
    (64 KiB, which is then 64 KiB of bytes) stops at an oversized field. The file is then
    read again, carefully, from the row after the last one read: each cell checked (NUL,
    UTF-8, size in bytes), the oversized field named, and no row inside a long quoted field
    taken for an event. Any other file is read carefully from the start. A field over
    CAREFUL_FIELD_LIMIT even there ends the reading: the file is refused whole.
    """
    scan = _scan(path)
    careful = not scan.ascii or scan.nul
    header: list[str] | None = None
    done = 0  # the physical line where the last row yielded ends
    previous_limit = csv.field_size_limit()
    try:
        while True:  # at most twice: fast, then careful
            csv.field_size_limit(CAREFUL_FIELD_LIMIT if careful else TEXT_BYTES)
            with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
                reader = csv.reader(handle)
                if header is None:
                    try:
                        cells = next(reader, None)
                    except csv.Error as error:
                        if not careful:
                            careful = True  # a header cell over the limit: read carefully
                            continue
                        cells, problems = [], [("header", f"not readable as CSV ({error})")]
                    else:
                        if cells is None:
                            return
                        header, problems = _csv_header(cells)
                    for where, reason in problems:
                        yield 1, {"__invalid__": reason, "__field__": where, "__unreadable__": True}
                    if problems:
                        return
                    done = reader.line_num
                names = header
                extra = [h for h in names if h not in CSV_COLUMNS]
                width = len(names)
                known = [(h, i) for i, h in enumerate(names) if h not in extra]
                others = [(h, i) for i, h in enumerate(names) if h in extra]
                if not careful:
                    try:
                        for values in reader:
                            if len(values) == width:  # the usual row: straight from its cells
                                record: dict[str, Any] = {h: values[i] for h, i in known}
                                record["properties"] = {
                                    h: values[i] for h, i in others if values[i] != ""
                                }
                                done = reader.line_num
                                yield done, record
                                continue
                            done = reader.line_num
                            if not values or (len(values) == 1 and not values[0].strip()):
                                continue
                            yield done, _odd_row(values, names, extra)
                        return
                    except csv.Error:
                        careful = True  # a field over the limit: read again, carefully
                        continue
                try:
                    for values in reader:
                        if reader.line_num <= done:
                            continue  # read before, on the fast path
                        done = reader.line_num
                        if not values or (len(values) == 1 and not values[0].strip()):
                            continue
                        refused = _cells_problem(values, names)
                        if refused is not None:
                            yield done, refused
                        elif len(values) == width:
                            record = {h: values[i] for h, i in known}
                            record["properties"] = {
                                h: values[i] for h, i in others if values[i] != ""
                            }
                            yield done, record
                        else:
                            yield done, _odd_row(values, names, extra)
                except csv.Error as error:
                    # Where the record ends cannot be told: nothing after it is read, and
                    # the file is refused even with --skip-invalid.
                    yield (
                        reader.line_num,
                        {
                            "__invalid__": f"not readable as CSV ({error}); the rest of the "
                            "file is not read (an unclosed quote?)",
                            "__unreadable__": True,
                        },
                    )
                return
    finally:
        csv.field_size_limit(previous_limit)


def _cells_problem(values: list[str], names: list[str]) -> dict[str, Any] | None:
    """A refused record for the first cell that cannot be stored, or None."""
    for i, cell in enumerate(values):
        reason = _text_problem(cell)
        if reason is not None:
            return {
                **{_column(names, j): _clip(v) for j, v in enumerate(values)},
                "__invalid__": reason,
                "__field__": _column(names, i),
            }
    return None


def _odd_row(values: list[str], names: list[str], extra: list[str]) -> dict[str, Any]:
    """A row with more or fewer cells than the header (refused by the validator)."""
    record: dict[str, Any] = dict(zip(names, values, strict=False))
    record["__width__"] = len(values)
    props = {k: record.pop(k) for k in extra if record.get(k, "") != ""}
    for k in extra:
        record.pop(k, None)
    record["properties"] = props
    return record


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


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    careful_file = not _scan(path).utf8
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
        if _text_problem(line) == "not UTF-8 text":
            return {"__invalid__": "not UTF-8 text"}
        msg = err.msg if isinstance(err, json.JSONDecodeError) else str(err)
        return {"__invalid__": f"not valid JSON ({msg})"}
    if not isinstance(record, dict):
        return {"__invalid__": "a line must be a JSON object"}
    found = _json_problem(record, [])
    if found is not None:
        where, reason = found
        return {
            **{k: _clip(v) for k, v in record.items() if isinstance(v, str)},
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
        reason = _text_problem(value)
        return None if reason is None else (path, reason)
    if isinstance(value, dict):
        if isinstance(value, _Duplicated):
            return [*path, value.key], "the line names this key twice"
        for key, item in value.items():
            reason = _text_problem(key)
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


# --- validation --------------------------------------------------------------------------


class Validator:
    """Turns raw records into event rows, or into the reason they are refused."""

    def __init__(self, customers: set[str], metrics: dict[str, MetricDef]):
        self.customers = customers
        self.metrics = metrics

    def event(self, record: dict[str, Any]) -> tuple[dict | None, tuple[str, str] | None]:
        """(row, None) for a valid record, (None, (field, reason)) otherwise."""
        if "__invalid__" in record:
            return None, (record.get("__field__", "row"), record["__invalid__"])
        if "__width__" in record:
            return None, (
                "row",
                f"has {record['__width__']} cells, the header has a different number",
            )
        get = record.get
        event_id = _text(get("event_id"))
        if not event_id:
            return None, ("event_id", "missing (every event needs an idempotency key)")
        if len(event_id) > EVENT_ID_LIMIT:
            return None, ("event_id", f"longer than {EVENT_ID_LIMIT} characters")
        customer = _text(get("customer"))
        if not customer:
            return None, ("customer", "missing")
        if customer not in self.customers:
            return None, ("customer", f"unknown customer {_shown(customer)!r}")
        code = _text(get("metric"))
        if not code:
            return None, ("metric", "missing")
        metric = self.metrics.get(code)
        if metric is None:
            return None, ("metric", f"unknown metric {_shown(code)!r}")
        timestamp, reason = parse_timestamp(record.get("timestamp"))
        if timestamp is None:
            return None, ("timestamp", reason or "invalid")
        quantity, reason = parse_quantity(record.get("quantity"))
        if quantity is None:
            return None, ("quantity", reason or "invalid")
        properties = record.get("properties") or {}
        dimension = None
        if metric.aggregation == "count":
            value = SCALE
        elif metric.field in (None, "quantity"):
            value = int(quantity * SCALE)
            if metric.aggregation == "unique_count":
                dimension = _plain_text(quantity)
        else:
            raw = properties.get(metric.field)
            if raw is None or raw == "":
                return None, (f"properties.{metric.field}", f"missing (metric {code} reads it)")
            if metric.aggregation == "unique_count":
                value, dimension = 0, _text(raw)
            else:
                number, reason = parse_quantity(raw)
                if number is None:
                    return None, (f"properties.{metric.field}", reason or "invalid")
                value = int(number * SCALE)
        return {
            "event_id": event_id,
            "customer_id": customer,
            "metric_code": code,
            "timestamp": timestamp,
            "quantity": quantity,
            "value": value,
            "dimension": dimension,
            "properties": properties or None,
        }, None


def _text(value: Any) -> str:
    if type(value) is str:
        return value.strip()
    return "" if value is None else str(value).strip()


def _plain_text(number: Decimal) -> str:
    return str(int(number)) if number == number.to_integral_value() else f"{number.normalize():f}"


def parse_timestamp(value: Any) -> tuple[datetime | None, str | None]:
    """An aware instant from ISO 8601 text with a UTC offset or Z, from 1900 to 2199 in UTC."""
    text = _text(value)
    if not text:
        return None, "missing"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None, f"not an ISO 8601 timestamp: {_shown(text)!r}"
    zone = parsed.tzinfo
    if zone is None:  # (fromisoformat gives fixed offsets: never one without an offset)
        return None, f"no UTC offset in {_shown(text)!r} (add Z or +hh:mm)"
    if 1900 < parsed.year < 2199:  # the usual instant: an offset cannot take it outside
        return (parsed if zone is UTC else parsed.astimezone(UTC)), None
    if not 1900 <= parsed.year <= 2199:  # converting it could overflow
        return None, f"{OUTSIDE_CALENDAR}: {_shown(text)!r}"
    instant = parsed.astimezone(UTC)
    if not FIRST_INSTANT <= instant < END_INSTANT:
        return None, f"{OUTSIDE_CALENDAR}: {_shown(text)!r}"
    return instant, None


def parse_quantity(value: Any) -> tuple[Decimal | None, str | None]:
    """A non-negative decimal with at most six decimal places, up to MAX_QUANTITY; missing
    means 1."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return Decimal(1), None
    if isinstance(value, str) and len(value) < 13 and value.isdigit() and value.isascii():
        return Decimal(value), None  # the common case: a whole number below 10^12
    if isinstance(value, (bool, float)):
        return None, f"not a decimal number: {value!r}"
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None, f"not a number: {_shown(value)!r}"
    if not number.is_finite():
        return None, f"not a finite number: {_shown(value)!r}"
    if number < 0:
        return None, f"negative ({_shown(value)}); quantities must be zero or more"
    if number.is_signed():
        number = number.copy_abs()  # -0 is 0
    if number > MAX_QUANTITY:
        return None, f"too large: {_shown(value)} {TOO_LARGE}"
    if -number.as_tuple().exponent > MAX_DECIMALS and number != number.quantize(
        Decimal(1).scaleb(-MAX_DECIMALS)
    ):
        return None, f"more than {MAX_DECIMALS} decimal places: {_shown(value)}"
    return number, None


def load_reference(session: Session) -> Validator:
    """Customers and metrics as the validator needs them."""
    customers = set(session.execute(sa.select(Customer.__table__.c.id)).scalars())
    metrics = {
        r.code: MetricDef(r.code, r.aggregation, r.field)
        for r in session.execute(sa.select(Metric.__table__))
    }
    return Validator(customers, metrics)


# --- writing -----------------------------------------------------------------------------


_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")
_to_json = json.JSONEncoder(default=str, ensure_ascii=False, separators=(", ", ": ")).encode
_json_string = json.encoder.encode_basestring  # a str as JSON, not ASCII-escaped


def _copy_text(value: str) -> str:
    """A value in COPY's text format (backslash, tab and line ends escaped)."""
    if value.isprintable() and "\\" not in value:
        return value  # the usual case, told apart without a regular expression
    if _COPY_SPECIAL.search(value) is None:
        return value
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def _properties_json(properties: dict) -> str:
    """Properties as JSON text, as `_to_json` writes them; a flat object of strings (every
    CSV row's extra columns) is written without the general encoder."""
    parts = []
    for key, value in properties.items():
        if type(key) is not str or type(value) is not str:
            return _to_json(properties)
        parts.append(f"{_json_string(key)}: {_json_string(value)}")
    return "{" + ", ".join(parts) + "}"


def refresh_statistics(loaded: int) -> None:
    """After a bulk load has committed, let PostgreSQL's planner see the new events.

    Without fresh statistics the planner takes a just-loaded table for a small one and
    rates a period with an index nested loop ten times slower than its hash join. Run
    outside the load's transaction, so that concurrent loads do not queue on its lock.
    """
    if loaded < 10_000:
        return  # autovacuum catches up with small loads soon enough
    from billing_core.store.engine import get_engine

    engine = get_engine()
    if not is_postgres(engine):
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text("ANALYZE usage_events"))


# A batch from the staging table into the events; an event id already there (or twice
# in the batch) is skipped.
MERGE_STAGING = (
    "INSERT INTO usage_events (event_id, customer_id, metric_code, timestamp, quantity, value, "
    "dimension, properties, source, ingested_at) "
    "SELECT event_id, customer_id, metric_code, timestamp, quantity, value, dimension, "
    "properties, source, ingested_at FROM usage_staging ON CONFLICT (event_id) DO NOTHING"
)


# pg_advisory lock key of usage loads: the bytes of "billload" as a signed 64-bit integer.
LOAD_KEY = int.from_bytes(b"billload", "big", signed=True)
DEADLOCK_ATTEMPTS = 4


def is_deadlock(error: BaseException) -> bool:
    """PostgreSQL chose this transaction as a deadlock's victim."""
    from psycopg.errors import DeadlockDetected

    return isinstance(getattr(error, "orig", None) or error, DeadlockDetected)


def retrying_deadlocks(load):
    """Run `load(session)` in a unit of work of its own and commit it. Two loads that
    share new event ids insert them in different orders and can deadlock on the events'
    key (each waits for a row the other wrote); PostgreSQL then aborts one. That one is
    rolled back whole and run again alone (every load holds LOAD_KEY shared; the retry
    holds it exclusively, after the others), so it cannot deadlock again. Idempotency by
    event id makes the retry count each event once."""
    from billing_core.store.engine import unit_of_work

    for attempt in range(DEADLOCK_ATTEMPTS):
        with unit_of_work() as session:
            session.info["load_alone"] = attempt > 0
            try:
                result = load(session)
                session.commit()
                return result
            except Exception as error:
                if not is_deadlock(error) or attempt == DEADLOCK_ATTEMPTS - 1:
                    raise
    raise AssertionError("unreachable")


class _Writer:
    """Batches valid events into the store, skipping event ids already present."""

    def __init__(self, session: Session, source: str):
        self.session = session
        self.source = source
        self.postgres = is_postgres(session)
        self.batch: list[dict] = []  # SQLite: the rows
        self.ids: list[str] = []  # PostgreSQL: the event ids and COPY lines
        self.lines: list[str] = []
        self.loaded = 0
        self.now = datetime.now(UTC)
        # (customer, metric) -> earliest and latest timestamps seen: late-usage touches.
        self.touched: dict[tuple[str, str], list[datetime]] = {}
        if self.postgres:
            self.session.execute(
                sa.text(
                    "CREATE TEMP TABLE IF NOT EXISTS usage_staging "
                    "(LIKE usage_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                )
            )
            self.session.execute(sa.text("TRUNCATE usage_staging"))
            # Each event becomes its line of COPY text here, as it is validated; a thread
            # of its own sends the batches. While the server copies one batch, this
            # thread parses the next (psycopg waits for the server without the GIL, and
            # the sending thread has almost no Python to run). At most two batches wait:
            # bounded memory.
            self.tail = f"\t{_copy_text(source)}\t{self.now.isoformat()}\n"
            self.escaped: dict[tuple[str, str], str] = {}
            self.raw = self.session.connection().connection.driver_connection
            self.queue: queue.Queue[tuple[list[str], list[str]] | None] = queue.Queue(maxsize=2)
            self.error: BaseException | None = None
            self.thread = threading.Thread(target=self._work, name="usage-writer", daemon=True)
            self.thread.start()

    def _work(self) -> None:
        while (batch := self.queue.get()) is not None:
            if self.error is not None:
                continue  # keep draining so the reader never blocks on a full queue
            ids, lines = batch
            try:
                if self._copy_direct(ids, lines):
                    continue
                self._copy(lines, "usage_staging")
                with self.raw.cursor() as cursor:
                    cursor.execute(MERGE_STAGING)
                    self.loaded += max(cursor.rowcount, 0)
                    cursor.execute("TRUNCATE usage_staging")
            except BaseException as error:  # noqa: BLE001 - re-raised by close()
                self.error = error

    def _copy_direct(self, ids: list[str], lines: list[str]) -> bool:
        """COPY a batch straight into the events when none of its ids is known yet.

        The usual case (new usage) then costs one pass of the server instead of a COPY into
        staging plus a merge. A concurrent load that writes one of the ids first makes the
        COPY fail; it is undone to its savepoint and the batch goes through staging.
        """
        from psycopg.errors import UniqueViolation

        if len(set(ids)) != len(ids):
            return False
        # A sample of the ids tells a batch loaded before (a file sent again) without
        # probing them all, which costs the server as much as the COPY; the COPY's own
        # key check is the guard for the rest.
        sample = ids[:: max(1, len(ids) // 16)] + ids[-1:]
        with self.raw.cursor() as cursor:
            cursor.execute("SELECT 1 FROM usage_events WHERE event_id = ANY(%s) LIMIT 1", (sample,))
            if cursor.fetchone() is not None:
                return False
        try:
            with self.raw.transaction():  # a savepoint inside the load's transaction
                self._copy(lines, "usage_events")
        except UniqueViolation:
            return False
        self.loaded += len(lines)
        return True

    def close(self) -> None:
        """Wait for the writing thread (PostgreSQL); raise what it failed with."""
        if self.postgres and self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.postgres and self.error is not None:
            raise self.error

    def abandon(self) -> None:
        """Stop the writing thread without waiting for its batches (the load failed)."""
        if self.postgres and self.thread.is_alive():
            self.error = self.error or RuntimeError("load abandoned")
            self.queue.put(None)
            self.thread.join()

    def add(self, row: dict) -> None:
        timestamp = row["timestamp"]
        key = (row["customer_id"], row["metric_code"])
        span = self.touched.get(key)
        if span is None:
            self.touched[key] = [timestamp, timestamp]
        elif timestamp < span[0]:
            span[0] = timestamp
        elif timestamp > span[1]:
            span[1] = timestamp
        if not self.postgres:
            self.batch.append(row)
            if len(self.batch) >= BATCH:
                self.flush()
            return
        dimension, properties = row["dimension"], row["properties"]
        self.ids.append(row["event_id"])
        who = self.escaped.get(key)
        if who is None:  # a customer and metric's text, escaped once per load
            who = self.escaped[key] = f"{_copy_text(key[0])}\t{_copy_text(key[1])}"
        self.lines.append(
            "\t".join(
                (
                    _copy_text(row["event_id"]),
                    who,
                    timestamp.isoformat(),
                    str(row["quantity"]),
                    str(row["value"]),
                    "\\N" if dimension is None else _copy_text(dimension),
                    "\\N" if properties is None else _copy_text(_properties_json(properties)),
                )
            )
            + self.tail
        )
        if len(self.lines) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.postgres:
            if not self.lines:
                return
            if self.error is not None:
                self.close()
            self.queue.put((self.ids, self.lines))
            self.ids, self.lines = [], []
        elif self.batch:
            self._insert(self.batch)
            self.batch = []

    def finish(self) -> int:
        self.flush()
        self.close()
        if self.loaded:
            from billing_core.store.rows import insert_rows

            insert_rows(
                self.session,
                UsageTouch,
                [
                    {
                        "customer_id": c,
                        "metric_code": m,
                        "earliest": lo,
                        "latest": hi,
                        "created_at": self.now,
                    }
                    for (c, m), (lo, hi) in self.touched.items()
                ],
            )
        return self.loaded

    def _copy(self, lines: list[str], table: str) -> None:
        """COPY lines of text into `table` (faster than per-value adaptation)."""
        columns = (
            "event_id, customer_id, metric_code, timestamp, quantity, value, dimension, "
            "properties, source, ingested_at"
        )
        with (
            self.raw.cursor() as cursor,
            cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy,
        ):
            copy.write("".join(lines))

    def _insert(self, rows: list[dict]) -> None:
        table = UsageEvent.__table__
        from sqlalchemy.dialects.sqlite import insert

        stmt = insert(table).on_conflict_do_nothing(index_elements=["event_id"])
        result = self.session.execute(
            stmt,
            [
                {
                    **r,
                    "properties": _json_ready(r["properties"]),
                    "source": self.source,
                    "ingested_at": self.now,
                }
                for r in rows
            ],
        )
        self.loaded += result.rowcount or 0


def _json_ready(properties: dict | None) -> dict | None:
    """Properties as the JSON column can store them: decimals (JSON Lines numbers) and other
    non-JSON values as text, as COPY writes them on PostgreSQL."""
    if properties is None:
        return None
    return json.loads(json.dumps(properties, default=str))


def ingest_records(
    session: Session,
    sources: Iterable[tuple[str, Iterable[tuple[int, dict[str, Any]]]]],
    *,
    skip_invalid: bool = False,
    source: str = "cli",
    rejects: Any = None,
) -> IngestResult:
    """Validate and write records from several named sources as one all-or-nothing load.

    With `skip_invalid`, bad rows are left out (and written to `rejects`, a CSV writer);
    otherwise any bad row refuses everything. The caller commits.
    """
    if is_postgres(session):
        # Loads run side by side (each holds this key shared); one run again after a
        # deadlock with another holds it alone (see `retrying_deadlocks`).
        alone = session.info.get("load_alone", False)
        session.execute(
            sa.text(
                "SELECT pg_advisory_xact_lock(:key)"
                if alone
                else "SELECT pg_advisory_xact_lock_shared(:key)"
            ),
            {"key": LOAD_KEY},
        )
    validator = load_reference(session)
    writer = _Writer(session, source)
    result = IngestResult()
    try:
        for name, records in sources:
            result.files += 1
            for number, record in records:
                result.read += 1
                row, problem = validator.event(record)
                if problem is not None:
                    result.rejected += 1
                    if "__unreadable__" in record:
                        result.unreadable += 1
                    issue = Problem(name, number, problem[0], problem[1])
                    result.problems.append(issue)
                    if rejects is not None:
                        rejects.writerow(
                            [
                                name,
                                number,
                                issue.field,
                                issue.reason,
                                json.dumps(record, default=str),
                            ]
                        )
                    continue
                if result.problems and (not skip_invalid or result.unreadable):
                    continue  # refused anyway: keep validating, stop writing
                writer.add(row)
    except BaseException:
        writer.abandon()
        raise
    if result.problems and (not skip_invalid or result.unreadable):
        writer.close()
        advice = (
            "fix them; a file that cannot be read is refused even with --skip-invalid"
            if result.unreadable
            else "fix them, or pass --skip-invalid REJECTS_FILE"
        )
        raise UsageRefused(
            f"{len(result.problems)} invalid row(s) in {result.files} file(s); nothing was "
            f"loaded ({advice})",
            result.problems,
        )
    result.loaded = writer.finish()
    result.duplicates = result.read - result.rejected - result.loaded
    return result


def ingest_files(
    session: Session, paths: list[Path], *, rejects_path: Path | None = None, source: str = "cli"
) -> IngestResult:
    """Ingest CSV or JSON Lines files as one load; see `ingest_records`."""
    for path in paths:
        if not path.is_file():
            raise UsageRefused(f"{path}: no such file", [])
        try:
            path.open("rb").close()
        except OSError as error:
            raise UsageRefused(f"{path}: cannot be read ({error.strerror})", []) from None
    handle = None
    rejects = None
    try:
        if rejects_path is not None:
            try:
                handle = rejects_path.open("w", newline="", encoding="utf-8")
            except OSError as error:
                raise UsageRefused(
                    f"{rejects_path}: the rejects file cannot be written ({error.strerror})", []
                ) from None
            rejects = SafeCsvWriter(csv.writer(handle))  # it echoes the files' own text
            rejects.writerow(["file", "row", "field", "reason", "record"])
        result = ingest_records(
            session,
            ((str(p), read_rows(p)) for p in paths),
            skip_invalid=rejects_path is not None,
            source=source,
            rejects=rejects,
        )
    finally:
        if handle is not None:
            handle.close()
    now = datetime.now(UTC)
    for path in paths:
        session.add(
            UsageLoad(
                source=source,
                key=str(path),
                events_read=result.read,
                events_loaded=result.loaded,
                duplicates=result.duplicates,
                rejected=result.rejected,
                loaded_at=now,
            )
        )
    return result


# --- aggregation -------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Usage of one customer and metric between two instants, identified by `key`."""

    key: int
    customer_id: str
    metric_code: str
    start: datetime
    end: datetime


_windows = sa.Table(
    "usage_windows",
    sa.MetaData(),
    sa.Column("batch", sa.String(36), primary_key=True),
    sa.Column("key", sa.Integer, primary_key=True),
    sa.Column("customer_id", sa.String(128), nullable=False),
    sa.Column("metric_code", sa.String(128), nullable=False),
    sa.Column("start_ts", UsageEvent.__table__.c.timestamp.type, nullable=False),
    sa.Column("end_ts", UsageEvent.__table__.c.timestamp.type, nullable=False),
)
SIMPLE = ("sum", "count", "max")
# Above this many distinct spans the sum/count/max pass joins its windows instead.
GROUPED_SPANS = 8


def aggregate(
    session: Session,
    windows: list[Window],
    aggregations: dict[str, str],
    every_customer: bool = False,
) -> dict[int, Decimal]:
    """Each window's aggregated quantity, in at most three set-based passes.

    `aggregations` maps metric code to its aggregation. One pass computes every `sum`,
    `count` and `max` metric at once, one `unique_count`, one `latest`; on PostgreSQL each
    is a parallel scan of the periods' events. Windows without events get 0.

    The `unique_count` and `latest` passes join the events to the windows, which go into
    `usage_windows` under a batch id of their own. The `sum`/`count`/`max` pass does too,
    unless `every_customer` says the windows are the whole store's (a close over every
    family) and they share at most `GROUPED_SPANS` distinct spans: then it is a plain
    `GROUP BY customer, metric` over the events with one filtered aggregate per span,
    which costs about what a bare GROUP BY does (the join costs some 70 % more). On
    PostgreSQL that grouped pass takes the `latest` metrics too (see `_latest_column`):
    one scan of the events fewer.
    """
    out = {w.key: Decimal(0) for w in windows}
    if not windows:
        return out
    from billing_core.store.rows import insert_rows

    connection = session.connection()
    postgres = is_postgres(session)
    if postgres:
        # Room for the hash aggregates of a large close (this transaction only).
        connection.execute(sa.text("SET LOCAL work_mem = '128MB'"))
    e = UsageEvent.__table__.c
    # With latest metrics where they fit, else without (SQLite: always without).
    for grouped_kinds in ((*SIMPLE, "latest"), SIMPLE) if postgres else (SIMPLE,):
        grouped_windows = [x for x in windows if aggregations.get(x.metric_code) in grouped_kinds]
        spans = sorted({(x.start, x.end) for x in grouped_windows})
        grouped = (
            every_customer
            and 0 < len(spans) <= GROUPED_SPANS
            and ("latest" not in grouped_kinds or spans[0][0] >= _LATEST_FROM)
        )
        if grouped:
            break
    joined_windows = windows
    if grouped:
        joined_windows = [
            x for x in windows if aggregations.get(x.metric_code) not in grouped_kinds
        ]
    metric_of = {x.key: x.metric_code for x in windows}

    def store_simple(key: int, total: Any, count: Any, highest_value: Any) -> None:
        kind = aggregations[metric_of[key]]
        if kind == "count":
            out[key] = Decimal(int(count))
        elif kind == "sum":
            out[key] = Decimal(_millionths(total)) / SCALE
        else:
            out[key] = Decimal(int(highest_value)) / SCALE

    if grouped:
        codes = sorted({x.metric_code for x in grouped_windows})
        latest_codes = [c for c in codes if aggregations.get(c) == "latest"]
        width = 4 if latest_codes else 3

        def grouped_query(wide: bool) -> Any:
            columns = []
            for start, end in spans:
                inside = (
                    # the query's own range: nothing to filter
                    None if len(spans) == 1 else sa.and_(e.timestamp >= start, e.timestamp < end)
                )
                span_columns = [sa.func.count(), sa.func.max(e.value)]
                if latest_codes:
                    span_columns.append(_latest_column(e, e.metric_code.in_(latest_codes)))
                if inside is not None:
                    span_columns = [c.filter(inside) for c in span_columns]
                columns += [_sum(e.value, inside, wide), *span_columns]
            return (
                sa.select(e.customer_id, e.metric_code, *columns)
                .where(
                    e.metric_code.in_(codes),
                    e.timestamp >= min(s for s, _ in spans),
                    e.timestamp < max(end for _, end in spans),
                )
                .group_by(e.customer_id, e.metric_code)
            )

        span_index = {span: i for i, span in enumerate(spans)}
        wanted: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
        for x in grouped_windows:
            wanted[(x.customer_id, x.metric_code)].append((span_index[(x.start, x.end)], x.key))
        for row in _summed(connection, grouped_query):
            for i, key in wanted.get((row[0], row[1]), ()):
                values = row[2 + width * i : 2 + width * (i + 1)]
                if not values[1]:  # no events in this span
                    continue
                if width == 4 and values[3] is not None:  # a latest metric
                    out[key] = Decimal(int(values[3][2])) / SCALE
                else:
                    store_simple(key, *values[:3])
    if not joined_windows:
        return out

    batch = uuid.uuid4().hex
    insert_rows(
        session,
        _windows,
        [
            {
                "batch": batch,
                "key": w.key,
                "customer_id": w.customer_id,
                "metric_code": w.metric_code,
                "start_ts": w.start,
                "end_ts": w.end,
            }
            for w in joined_windows
        ],
    )
    if postgres:
        connection.execute(sa.text("ANALYZE usage_windows"))
    w = _windows.c
    events = UsageEvent.__table__
    joined = _windows.join(
        events,
        sa.and_(
            e.customer_id == w.customer_id,
            e.metric_code == w.metric_code,
            e.timestamp >= w.start_ts,
            e.timestamp < w.end_ts,
        ),
    )
    present = {x.metric_code for x in joined_windows}
    lowest, highest = min(x.start for x in joined_windows), max(x.end for x in joined_windows)

    def where(kinds: tuple[str, ...]) -> list[Any] | None:
        codes = sorted(c for c in present if aggregations.get(c) in kinds)
        if not codes:
            return None
        return [
            w.batch == batch,
            w.metric_code.in_(codes),
            e.metric_code.in_(codes),
            # The whole pass's span: lets PostgreSQL's BRIN index skip other periods.
            e.timestamp >= lowest,
            e.timestamp < highest,
        ]

    simple = where(SIMPLE)
    if simple:

        def joined_query(wide: bool) -> Any:
            return (
                sa.select(w.key, _sum(e.value, None, wide), sa.func.count(), sa.func.max(e.value))
                .select_from(joined)
                .where(*simple)
                .group_by(w.key)
            )

        for key, total, count, highest_value in _summed(connection, joined_query):
            store_simple(key, total, count, highest_value)
    unique = where(("unique_count",))
    if unique:
        pairs = (
            sa.select(w.key.label("key"), e.dimension.label("dimension"))
            .select_from(joined)
            .where(*unique, e.dimension.is_not(None))
            .group_by(w.key, e.dimension)
            .subquery()
        )
        query = sa.select(pairs.c.key, sa.func.count()).group_by(pairs.c.key)
        for key, count in connection.execute(query).fetchall():
            out[key] = Decimal(int(count))
    latest = where(("latest",))
    if latest:
        # The value of the last event by timestamp; equal timestamps go to the greater
        # event id.
        ranked = (
            sa.select(
                w.key.label("key"),
                e.value.label("value"),
                sa.func.row_number()
                .over(partition_by=w.key, order_by=(e.timestamp.desc(), e.event_id.desc()))
                .label("rank"),
            )
            .select_from(joined)
            .where(*latest)
            .subquery()
        )
        query = sa.select(ranked.c.key, ranked.c.value).where(ranked.c.rank == 1)
        for key, value in connection.execute(query).fetchall():
            out[key] = Decimal(int(value)) / SCALE
    connection.execute(_windows.delete().where(w.batch == batch))
    return out


def _sum(value: Any, inside: Any, wide: bool) -> Any:
    """The sum of a column of millionths (filtered by `inside` unless it is None).

    SQLite sums integers in 64 bits and fails past 2^63 (two quantities of 5 * 10^12 do
    it); PostgreSQL's sum of a bigint is a numeric, which never overflows. `wide` sums
    the high and low 32 bits apart instead, each far from overflowing, as text "high:low"
    that `_millionths` puts together: SQLite's fallback, used only when the plain sum
    overflows (see `_summed`).
    """
    if not wide:
        total = sa.func.sum(value)
        return total if inside is None else total.filter(inside)
    high, low = sa.func.sum(value.op(">>")(32)), sa.func.sum(value.op("&")(0xFFFFFFFF))
    if inside is not None:
        high, low = high.filter(inside), low.filter(inside)
    return sa.func.printf("%d:%d", high, low)


def _millionths(total: Any) -> int:
    """A sum from `_sum`, as an integer."""
    if type(total) is str:
        high, low = total.split(":")
        return (int(high) << 32) + int(low)
    return int(total)


def _summed(connection: Any, query: Any) -> list[Any]:
    """The rows of `query(wide)`: with the store's own integer sum, or, on SQLite when that
    overflows, with the wide one (a failed SELECT leaves SQLite's transaction as it was)."""
    try:
        return connection.execute(query(False)).fetchall()
    except sa.exc.OperationalError as error:
        if is_postgres(connection) or "integer overflow" not in str(error.orig):
            raise
    return connection.execute(query(True)).fetchall()


# The instants `_latest_column` orders right as text: four-digit years.
_LATEST_FROM = datetime(1000, 1, 1, tzinfo=UTC)


def _latest_column(e: Any, condition: Any) -> Any:
    """PostgreSQL: the latest event of a group as [instant, event id, value], inside a
    GROUP BY, as the `latest` pass's ORDER BY timestamp DESC, event_id DESC would pick it.

    `max` of a text array compares element by element: first the instant in UTC as twenty
    digits (YYYYMMDDHHMISS and microseconds; digit strings of one length order as the
    instants do, in any collation), then on equal instants the event id in the column's
    own collation, as the ORDER BY compares it. Event ids are unique, so the value never
    decides. `max` combines across parallel workers, so the pass stays parallel.
    """
    from sqlalchemy.dialects.postgresql import array

    instant = sa.func.to_char(sa.func.timezone("UTC", e.timestamp), "YYYYMMDDHH24MISSUS")
    return sa.func.max(array([instant, e.event_id, sa.cast(e.value, sa.Text)])).filter(condition)
