"""Metric aggregations, one entry each: what an event of the metric stores, the SQL that
aggregates a window of them, and how its result becomes the window's quantity.

The catalog accepts the names registered here, the usage validator reads each entry's
flags, and `store.usage_totals.aggregate` builds its passes from the entries: adding an
aggregation is one `register` call. An entry with `days` is read from the day buckets
kept at ingestion (`store.usage_buckets`) for the whole UTC days of a window, and from
the events only for the days the window cuts; its parts are put together by `days.merge`
(or, for a `distinct` aggregation, counted once over the union of their values). An entry
without `days` is read from the events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from billing_core.store import postgres

# Metric values are stored as integers of 10^-6 units: exact sums on both stores.
SCALE = 10**6


@dataclass(frozen=True)
class Variant:
    """A PostgreSQL aggregate that lets the grouped pass take the aggregation too."""

    column: Callable[[Any, Any], Any]  # (events' columns, condition) -> aggregate
    combine: Callable[[Any], Decimal]  # its result -> the window's quantity
    since: datetime  # the earliest window start it is right for


@dataclass(frozen=True)
class Days:
    """How an aggregation reads the day buckets (`usage_buckets`), as `Aggregation` reads
    events: a column of the shared pass, (buckets' columns, filter or None, wide) ->
    aggregate, or a pass of its own, (windows' columns, buckets' columns, the join, its
    conditions) -> SELECT of (window key, result); a PostgreSQL variant over the buckets'
    columns; and how a window's parts (its first cut day, its whole days, its last cut day,
    in time order, each the quantity `combine` made of it, only those with events) make
    its quantity. A `distinct` aggregation needs none of these: its values are counted
    once over the events of the cut days and `usage_bucket_values` of the whole ones.

    `latest`: it reads the day's latest event (`latest_at`, `latest_event_id`,
    `latest_value`). Only the buckets of metrics whose aggregation says so keep it (the
    others' are NULL), as only `distinct` metrics' days keep their values
    (`store.usage_buckets`): a metric's aggregation cannot change once it has usage
    (`inputs.catalog_check`). The count, sum and maximum every bucket keeps."""

    column: Callable[[Any, Any, bool], Any] | None = None
    query: Callable[[Any, Any, Any, list[Any]], Any] | None = None
    postgres: Variant | None = None
    merge: Callable[[list[Decimal]], Decimal] | None = None
    latest: bool = False


@dataclass(frozen=True)
class Aggregation:
    name: str
    combine: Callable[[Any], Decimal]  # a result of its SQL -> the window's quantity
    # What an event stores for it (the usage validator reads these):
    reads_field: bool = True  # False: the metric reads no field; each event weighs one
    distinct: bool = False  # the value read is kept as text (`dimension`) and counted once
    # Its SQL: a column of the pass shared by every such aggregation, (value column,
    # filter or None, wide) -> aggregate (see `wide_sum` for `wide`) ...
    column: Callable[[Any, Any, bool], Any] | None = None
    # ... or a pass of its own: (windows' columns, events' columns, the join, its
    # conditions) -> SELECT of (window key, result).
    query: Callable[[Any, Any, Any, list[Any]], Any] | None = None
    postgres: Variant | None = None
    # Read from the day buckets for a window's whole days (None: from the events only).
    days: Days | None = None


AGGREGATIONS: dict[str, Aggregation] = {}


def register(aggregation: Aggregation) -> Aggregation:
    AGGREGATIONS[aggregation.name] = aggregation
    return aggregation


def unregister(name: str) -> None:
    AGGREGATIONS.pop(name, None)


def _filtered(aggregate: Any, inside: Any) -> Any:
    return aggregate if inside is None else aggregate.filter(inside)


def wide_sum(value: Any, inside: Any, wide: bool) -> Any:
    """The sum of a column of millionths (filtered by `inside` unless it is None).

    SQLite sums integers in 64 bits and fails past 2^63 (two quantities of 5 * 10^12 do
    it); PostgreSQL's sum of a bigint is a numeric, which never overflows. `wide` sums
    the high and low 32 bits apart instead, each far from overflowing, as text "high:low"
    that `millionths` puts together: SQLite's fallback, used only when the plain sum
    overflows (see `usage_totals._summed`).
    """
    if not wide:
        return _filtered(sa.func.sum(value), inside)
    high, low = sa.func.sum(value.op(">>")(32)), sa.func.sum(value.op("&")(0xFFFFFFFF))
    if inside is not None:
        high, low = high.filter(inside), low.filter(inside)
    return sa.func.printf("%d:%d", high, low)


def millionths(total: Any) -> int:
    """A sum from `wide_sum`, as an integer."""
    if type(total) is str:
        high, low = total.split(":")
        return (int(high) << 32) + int(low)
    return int(total)


def _units(value: Any) -> Decimal:
    return Decimal(int(value)) / SCALE


def _unique_query(w: Any, e: Any, joined: Any, conditions: list[Any]) -> Any:
    pairs = (
        sa.select(w.key.label("key"), e.dimension.label("dimension"))
        .select_from(joined)
        .where(*conditions, e.dimension.is_not(None))
        .group_by(w.key, e.dimension)
        .subquery()
    )
    return sa.select(pairs.c.key, sa.func.count()).group_by(pairs.c.key)


def _latest_query(w: Any, e: Any, joined: Any, conditions: list[Any]) -> Any:
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
        .where(*conditions)
        .subquery()
    )
    return sa.select(ranked.c.key, ranked.c.value).where(ranked.c.rank == 1)


def _bucket_sum(b: Any, inside: Any, wide: bool) -> Any:
    """The buckets' sum as text "high:low" (`millionths` reads it): exact on both stores
    (SQLite would turn an overflowing product into a float without a word)."""
    high, low = (
        _filtered(sa.func.sum(b.total_high), inside),
        _filtered(sa.func.sum(b.total_low), inside),
    )
    return sa.cast(high, sa.Text).op("||")(":").op("||")(sa.cast(low, sa.Text))


def _latest_day_query(w: Any, b: Any, joined: Any, conditions: list[Any]) -> Any:
    # The latest event of the window's last day with events (days do not overlap).
    ranked = (
        sa.select(
            w.key.label("key"),
            b.latest_value.label("value"),
            sa.func.row_number().over(partition_by=w.key, order_by=b.day.desc()).label("rank"),
        )
        .select_from(joined)
        .where(*conditions)
        .subquery()
    )
    return sa.select(ranked.c.key, ranked.c.value).where(ranked.c.rank == 1)


def _total(parts: list[Decimal]) -> Decimal:
    return sum(parts, Decimal(0))


def _last(parts: list[Decimal]) -> Decimal:
    return parts[-1]


# The instants the PostgreSQL `latest` variant's text orders right: four-digit years.
_FOUR_DIGIT_YEARS = datetime(1000, 1, 1, tzinfo=UTC)

register(
    Aggregation(
        "sum",
        combine=lambda total: Decimal(millionths(total)) / SCALE,
        column=wide_sum,
        days=Days(column=_bucket_sum, merge=_total),
    )
)
register(
    Aggregation(
        "count",
        combine=lambda count: Decimal(int(count)),
        reads_field=False,
        column=lambda value, inside, wide: _filtered(sa.func.count(), inside),
        days=Days(
            column=lambda b, inside, wide: _filtered(sa.func.sum(b.events), inside),
            merge=_total,
        ),
    )
)
register(
    Aggregation(
        "max",
        combine=_units,
        column=lambda value, inside, wide: _filtered(sa.func.max(value), inside),
        days=Days(
            column=lambda b, inside, wide: _filtered(sa.func.max(b.max_value), inside),
            merge=max,
        ),
    )
)
register(
    Aggregation(
        "unique_count",
        combine=lambda count: Decimal(int(count)),
        distinct=True,
        query=_unique_query,
        days=Days(),
    )
)


def _latest_variant(columns: Callable[[Any], tuple]) -> Variant:
    """PostgreSQL's latest value in one aggregate over (instant, event id, value): the
    events' `columns`, or a day bucket's."""
    return Variant(
        lambda t, condition: postgres.latest_column(*columns(t), condition),
        lambda latest: _units(latest[2]),
        since=_FOUR_DIGIT_YEARS,
    )


register(
    Aggregation(
        "latest",
        combine=_units,
        query=_latest_query,
        postgres=_latest_variant(lambda e: (e.timestamp, e.event_id, e.value)),
        days=Days(
            query=_latest_day_query,
            postgres=_latest_variant(lambda b: (b.latest_at, b.latest_event_id, b.latest_value)),
            merge=_last,
            latest=True,
        ),
    )
)
