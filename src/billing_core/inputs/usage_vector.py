"""Usage events validated a batch at a time (pyarrow compute): a `Batch` every row of which
`Validator.event` would accept becomes the batch's event columns (`Events`), computed as
that function computes each row; a batch with any other row is left to the row path,
which then names each problem as it always has.

The checks here are narrower than the validator's: each accepts only text whose meaning
is beyond doubt (a plain decimal, an ISO 8601 instant of one form, an id without
surrounding spaces or characters COPY escapes), and anything else sends the batch to the
row path, which accepts or refuses it exactly as before. So this path never accepts what
the row path refuses, and what it accepts it stores as the row path would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from billing_core.inputs.usage_blocks import Batch
from billing_core.inputs.usage_validate import (
    END_INSTANT,
    EVENT_ID_LIMIT,
    FIRST_INSTANT,
    MetricDef,
    Validator,
)
from billing_core.store.aggregations import SCALE
from billing_core.store.postgres import copy_text

# What str.strip() removes (str.isspace), as an RE2 class.
_SPACE = (
    r"\t\n\x{0b}\x{0c}\r\x{1c}-\x{1f} \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}"
    r"\x{202f}\x{205f}\x{3000}"
)
# Text the row path takes as it is: not empty, no surrounding space, nothing COPY escapes.
_PLAIN_TEXT = rf"^[^{_SPACE}\\](?:[^\\\t]*[^{_SPACE}\\])?$"
# A quantity whose decimal text is its own canonical form (no leading zeros, no sign, no
# exponent) and far below the store's limit: str(Decimal(text)) == text.
_PLAIN_DECIMAL = r"^(?:0|[1-9][0-9]{0,11})(?:\.[0-9]{1,6})?$"
# An ISO 8601 instant Python's fromisoformat and PostgreSQL read alike (PostgreSQL takes
# offsets up to 15:59; the row path sends others converted to UTC).
_PLAIN_INSTANT = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(?:\.[0-9]{1,6})?(?:Z|[+-](?:0[0-9]|1[0-5]):[0-5][0-9])$"
)
# A property value JSON writes as it is between quotes, its quotes aside (no backslash or
# control character).
_JSON_PLAIN = r"^[^\x{00}-\x{1f}\\]*$"
_INSTANT = pa.timestamp("us", tz="UTC")
_SCALE_DECIMAL = pa.scalar(SCALE, pa.decimal128(7, 0))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FIRST_MICROS = (FIRST_INSTANT - _EPOCH) // timedelta(microseconds=1)
_END_MICROS = (END_INSTANT - _EPOCH) // timedelta(microseconds=1)


@dataclass
class Events:
    """A batch's valid events, column by column (pyarrow arrays), as `Validator.event`
    makes each row: event id, customer, metric, the instant, the quantity's text
    (str(Decimal) of it), value, dimension (null: none) and properties (the extra columns;
    an empty cell is no property)."""

    event_id: Any
    customer: Any
    metric: Any
    timestamp: Any  # timestamp[us, UTC]
    timestamp_text: Any  # the file's text of each instant (PostgreSQL reads it alike)
    quantity: Any
    value: Any
    dimension: Any
    properties: list[tuple[str, Any]]

    @property
    def rows(self) -> int:
        return len(self.event_id)

    def slices(self, size: int) -> Iterator[Events]:
        """The batch in pieces of at most `size` events, in order."""
        if self.rows <= size:
            yield self
            return
        for start in range(0, self.rows, size):
            yield Events(
                *(
                    a.slice(start, size)
                    for a in (
                        self.event_id,
                        self.customer,
                        self.metric,
                        self.timestamp,
                        self.timestamp_text,
                        self.quantity,
                        self.value,
                        self.dimension,
                    )
                ),
                [(k, c.slice(start, size)) for k, c in self.properties],
            )

    def spans(self) -> Any:
        """Each customer and metric's earliest and latest instant in the batch, as a
        table (c, m, t_min, t_max); `fold_spans` brings such tables together."""
        return (
            pa.table({"c": self.customer, "m": self.metric, "t": self.timestamp})
            .group_by(["c", "m"], use_threads=False)
            .aggregate([("t", "min"), ("t", "max")])
        )

    def earlier_than(self, before: datetime | None) -> int:
        if before is None:
            return 0
        return pc.sum(pc.less(self.timestamp, pa.scalar(before, _INSTANT))).as_py() or 0

    def copy_lines(self, tail: str) -> list[str]:
        """Each event's line of COPY text (`store.postgres.USAGE_COLUMNS`), as
        `EventCopy.add` writes it, ending with `tail` (source and load instant)."""
        properties = _properties_json(self.properties)
        lines = pc.binary_join_element_wise(
            self.event_id,
            self.customer,
            self.metric,
            self.timestamp_text,
            self.quantity,
            pc.cast(self.value, pa.string()),
            pc.fill_null(self.dimension, "\\N"),
            properties,
            tail.removeprefix("\t"),
            "\t",
        )
        return lines.to_pylist()

    def row_dicts(self) -> list[dict[str, Any]]:
        """The rows `Validator.event` returns for the batch (the SQLite writer's input)."""
        keys = [k for k, _ in self.properties]
        extra = (
            list(zip(*(c.to_pylist() for _, c in self.properties), strict=True))
            if keys
            else [()] * self.rows
        )
        rows = []
        for i, (event_id, customer, metric, at, quantity, value, dimension) in enumerate(
            zip(
                self.event_id.to_pylist(),
                self.customer.to_pylist(),
                self.metric.to_pylist(),
                self.timestamp.to_pylist(),
                self.quantity.to_pylist(),
                self.value.to_pylist(),
                self.dimension.to_pylist(),
                strict=True,
            )
        ):
            properties = {k: v for k, v in zip(keys, extra[i], strict=True) if v != ""}
            rows.append(
                {
                    "event_id": event_id,
                    "customer_id": customer,
                    "metric_code": metric,
                    "timestamp": at.replace(tzinfo=UTC),
                    "quantity": Decimal(quantity),
                    "value": value,
                    "dimension": dimension,
                    "properties": properties or None,
                }
            )
        return rows


def _properties_json(properties: list[tuple[str, Any]]) -> Any:
    """The properties column as COPY text: `store.postgres.properties_json` of each row's
    non-empty extra cells (values checked to need no escaping), or \\N for none."""
    from billing_core.store.postgres import _json_string

    if not properties:
        return "\\N"
    parts = []
    for key, cells in properties:
        # The key escaped as JSON, then for COPY, once per file: as the row path does.
        # Each property after ", " (the first one's cut below; pyarrow 26's join that
        # skips nulls drops rows whose every part is null).
        prefix = ", " + copy_text(_json_string(key)) + ': "'
        given = pc.not_equal(cells, "")
        if pc.any(pc.match_substring(cells, '"')).as_py():
            cells = pc.replace_substring(cells, '"', '\\\\"')  # JSON's \", COPY's \\"
        parts.append(pc.if_else(given, pc.binary_join_element_wise(prefix, cells, '"', ""), ""))
    joined = pc.binary_join_element_wise(*parts, "")
    wrapped = pc.binary_join_element_wise("{", pc.utf8_slice_codeunits(joined, 2), "}", "")
    return pc.if_else(pc.equal(joined, ""), "\\N", wrapped)


class VectorChecks:
    """The validator's checks over a whole batch."""

    def __init__(self, validator: Validator):
        plain = [c for c in validator.customers if _plain(c)]
        self.customers = pa.array(plain, pa.string())
        self.metrics = {code: m for code, m in validator.metrics.items() if _plain(code)}
        self.metric_codes = pa.array(list(self.metrics), pa.string())

    def events(self, batch: Batch) -> Events | None:
        """The batch's events, or None if any row needs the row path (as well when pyarrow
        fails on something these checks did not foresee: the row path then judges it)."""
        try:
            return self._events(batch)
        except pa.ArrowException:
            return None

    def _events(self, batch: Batch) -> Events | None:
        names = batch.names
        event_id = batch.column("event_id")
        customer = batch.column("customer")
        metric = batch.column("metric")
        stamps = batch.column("timestamp")
        if not (
            _all(pc.match_substring_regex(event_id, _PLAIN_TEXT))
            and pc.max(pc.utf8_length(event_id)).as_py() <= EVENT_ID_LIMIT
            and _all(pc.is_in(customer, value_set=self.customers))
            and _all(pc.is_in(metric, value_set=self.metric_codes))
            and _all(pc.match_substring_regex(stamps, _PLAIN_INSTANT))
        ):
            return None
        instants = pc.cast(stamps, _INSTANT)  # fails on a day the month does not have
        span = pc.min_max(instants.cast(pa.int64()))  # (as numbers: year 0 has no datetime)
        if span["min"].as_py() < _FIRST_MICROS or span["max"].as_py() >= _END_MICROS:
            return None
        if "quantity" in names:
            quantity = pc.if_else(
                pc.equal(batch.column("quantity"), ""), "1", batch.column("quantity")
            )
            if not _all(pc.match_substring_regex(quantity, _PLAIN_DECIMAL)):
                return None
        else:
            quantity = pa.array(["1"] * batch.rows, pa.string())
        properties = [(h, batch.column(h)) for h in batch.extra]
        if properties and not all(
            _all(pc.match_substring_regex(c, _JSON_PLAIN)) for _, c in properties
        ):
            return None
        measured = self._measured(batch, metric, quantity)
        if measured is None:
            return None
        value, dimension = measured
        return Events(
            event_id, customer, metric, instants, stamps, quantity, value, dimension, properties
        )

    def _measured(self, batch: Batch, metric: Any, quantity: Any) -> tuple[Any, Any] | None:
        """The value and dimension columns, metric by metric, as `Validator.event` computes
        them; None if a property a metric reads is missing or not plain."""
        value = _millionths(quantity)
        dimension = pa.nulls(batch.rows, pa.string())
        for code in pc.unique(metric).to_pylist():
            kind: MetricDef = self.metrics[code]
            rows = pc.equal(metric, code)
            if kind.weighs_one:
                value = pc.if_else(rows, SCALE, value)
            elif kind.field in (None, "quantity"):
                if kind.distinct:
                    dimension = pc.if_else(rows, _plain_number(quantity), dimension)
            else:
                if kind.field not in batch.extra:
                    return None  # every row of it lacks the property: the row path says so
                cells = pc.if_else(rows, batch.column(kind.field), "0")
                if kind.distinct:
                    if not _all(pc.match_substring_regex(cells, _PLAIN_TEXT)):
                        return None
                    dimension = pc.if_else(rows, cells, dimension)
                    value = pc.if_else(rows, 0, value)
                else:
                    if not _all(pc.match_substring_regex(cells, _PLAIN_DECIMAL)):
                        return None
                    value = pc.if_else(rows, _millionths(cells), value)
        return value, dimension


def _plain(text: str) -> bool:
    return bool(text) and text == text.strip() and copy_text(text) == text


def _all(mask: Any) -> bool:
    return len(mask) == 0 or pc.all(mask).as_py() is True


def _millionths(decimals: Any) -> Any:
    """int(Decimal(text) * 10^6) of plain decimal texts (see _PLAIN_DECIMAL)."""
    if not _all(pc.invert(pc.match_substring(decimals, "."))):
        scaled = pc.multiply(pc.cast(decimals, pa.decimal128(18, 6)), _SCALE_DECIMAL)
        return pc.cast(scaled, pa.int64())
    return pc.multiply(pc.cast(decimals, pa.int64()), SCALE)


def _plain_number(decimals: Any) -> Any:
    """`usage_validate._plain_text` of plain decimal texts: trailing zeros of the fraction
    dropped, and its point when nothing is left of it."""
    fraction = pc.match_substring(decimals, ".")
    return pc.if_else(fraction, pc.replace_substring_regex(decimals, r"\.?0+$", ""), decimals)


def fold_spans(tables: list[Any]) -> Any:
    """Tables of `Events.spans` as one: each customer and metric once, with the earliest
    of its earliest and the latest of its latest instants."""
    if len(tables) == 1:
        return tables[0]
    folded = (
        pa.concat_tables(tables)
        .group_by(["c", "m"], use_threads=False)
        .aggregate([("t_min", "min"), ("t_max", "max")])
    )
    return pa.table(
        {
            "c": folded.column("c"),
            "m": folded.column("m"),
            "t_min": folded.column("t_min_min"),
            "t_max": folded.column("t_max_max"),
        }
    )


def span_items(table: Any) -> Iterator[tuple[tuple[str, str], datetime, datetime]]:
    """((customer, metric), earliest, latest) of each row of a spans table, as aware
    datetimes in UTC (made from microseconds: a third of the cost of pyarrow's own)."""
    micro = timedelta(microseconds=1)
    for c, m, lo, hi in zip(
        table.column("c").to_pylist(),
        table.column("m").to_pylist(),
        table.column("t_min").cast(pa.int64()).to_pylist(),
        table.column("t_max").cast(pa.int64()).to_pylist(),
        strict=True,
    ):
        yield (c, m), _EPOCH + lo * micro, _EPOCH + hi * micro
