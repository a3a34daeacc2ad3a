"""Usage events validated: a raw record becomes an event row, or the reason it is refused."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain.limits import FIRST_DAY, LAST_DAY
from billing_core.inputs.usage_text import shown
from billing_core.store.aggregations import AGGREGATIONS, SCALE
from billing_core.store.models import Customer, Metric

MAX_DECIMALS = 6
# What the store and the calendar hold; anything beyond is refused at the door (SPEC §10).
# A quantity's millionths must fit the 64-bit `value` column: at most 9,223,372,036,854.775807
# (docs/decisions.md says why the column is not widened to the spec's 10^15).
MAX_VALUE = 2**63 - 1
MAX_QUANTITY = Decimal(MAX_VALUE).scaleb(-MAX_DECIMALS)
TOO_LARGE = f"(the store holds quantities up to {MAX_QUANTITY:,})"
FIRST_INSTANT = datetime.combine(FIRST_DAY, time(), UTC)
END_INSTANT = datetime.combine(LAST_DAY + timedelta(days=1), time(), UTC)
OUTSIDE_CALENDAR = f"outside {FIRST_DAY}..{LAST_DAY} UTC"
EVENT_ID_LIMIT = 256  # the length of usage_events.event_id


@dataclass(frozen=True)
class MetricDef:
    code: str
    aggregation: str
    field: str | None
    # From its aggregation's entry (store.aggregations): every event weighs one; the value
    # read is kept as text and counted once.
    weighs_one: bool = False
    distinct: bool = False


class Validator:
    """Turns raw records into event rows, or into the reason they are refused."""

    def __init__(self, customers: set[str], metrics: dict[str, MetricDef]):
        self.customers = customers
        self.metrics = metrics

    def event(self, record: dict[str, Any]) -> tuple[dict | None, tuple[str, str] | None]:
        """(row, None) for a valid record, (None, (field, reason)) otherwise."""
        if "__invalid__" in record or "__width__" in record:
            return None, _refused(record)
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
            return None, ("customer", f"unknown customer {shown(customer)!r}")
        code = _text(get("metric"))
        if not code:
            return None, ("metric", "missing")
        metric = self.metrics.get(code)
        if metric is None:
            return None, ("metric", f"unknown metric {shown(code)!r}")
        timestamp, reason = parse_timestamp(record.get("timestamp"))
        if timestamp is None:
            return None, ("timestamp", reason or "invalid")
        quantity, reason = parse_quantity(record.get("quantity"))
        if quantity is None:
            return None, ("quantity", reason or "invalid")
        properties = record.get("properties") or {}
        dimension = None
        if metric.weighs_one:
            value = SCALE
        elif metric.field in (None, "quantity"):
            value = int(quantity * SCALE)
            if metric.distinct:
                dimension = _plain_text(quantity)
        else:
            value, dimension, problem = _from_property(metric, properties)
            if problem is not None:
                return None, problem
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


def _refused(record: dict[str, Any]) -> tuple[str, str]:
    """Why a record the reader already refused (or a row of the wrong width) is refused."""
    if "__invalid__" in record:
        return record.get("__field__", "row"), record["__invalid__"]
    return "row", f"has {record['__width__']} cells, the header has a different number"


def _from_property(
    metric: MetricDef, properties: dict[str, Any]
) -> tuple[int, str | None, tuple[str, str] | None]:
    """The value and dimension a metric reads from a property, or why it cannot."""
    raw = properties.get(metric.field)
    if raw is None or raw == "":
        return 0, None, (f"properties.{metric.field}", f"missing (metric {metric.code} reads it)")
    if metric.distinct:
        return 0, _text(raw), None
    number, reason = parse_quantity(raw)
    if number is None:
        return 0, None, (f"properties.{metric.field}", reason or "invalid")
    return int(number * SCALE), None, None


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
        return None, f"not an ISO 8601 timestamp: {shown(text)!r}"
    zone = parsed.tzinfo
    if zone is None:  # (fromisoformat gives fixed offsets: never one without an offset)
        return None, f"no UTC offset in {shown(text)!r} (add Z or +hh:mm)"
    if 1900 < parsed.year < 2199:  # the usual instant: an offset cannot take it outside
        return (parsed if zone is UTC else parsed.astimezone(UTC)), None
    if not 1900 <= parsed.year <= 2199:  # converting it could overflow
        return None, f"{OUTSIDE_CALENDAR}: {shown(text)!r}"
    instant = parsed.astimezone(UTC)
    if not FIRST_INSTANT <= instant < END_INSTANT:
        return None, f"{OUTSIDE_CALENDAR}: {shown(text)!r}"
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
        return None, f"not a number: {shown(value)!r}"
    if not number.is_finite():
        return None, f"not a finite number: {shown(value)!r}"
    if number < 0:
        return None, f"negative ({shown(value)}); quantities must be zero or more"
    if number.is_signed():
        number = number.copy_abs()  # -0 is 0
    if number > MAX_QUANTITY:
        return None, f"too large: {shown(value)} {TOO_LARGE}"
    if -number.as_tuple().exponent > MAX_DECIMALS and number != number.quantize(
        Decimal(1).scaleb(-MAX_DECIMALS)
    ):
        return None, f"more than {MAX_DECIMALS} decimal places: {shown(value)}"
    return number, None


def load_reference(session: Session) -> Validator:
    """Customers and metrics as the validator needs them."""
    customers = set(session.execute(sa.select(Customer.__table__.c.id)).scalars())
    metrics = {
        r.code: _metric(r.code, r.aggregation, r.field)
        for r in session.execute(sa.select(Metric.__table__))
    }
    return Validator(customers, metrics)


def _metric(code: str, aggregation: str, field: str | None) -> MetricDef:
    kind = AGGREGATIONS.get(aggregation)
    if kind is None:
        return MetricDef(code, aggregation, field)
    return MetricDef(code, aggregation, field, not kind.reads_field, kind.distinct)
