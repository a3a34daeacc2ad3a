"""The SQL usage source: a query on another database, read incrementally by a watermark.

`BILLING_USAGE_SQL_QUERY` returns the columns `event_id`, `customer`, `metric`, `timestamp`
and optionally `quantity` (default 1), `properties` (a JSON object) and any other column
(a property, as in a CSV file). It must take the bound parameter `:watermark`: the greatest
`timestamp` read so far, as the source returned it (ISO 8601 text for a text column; the
epoch `1970-01-01T00:00:00+00:00` on the first read), less the lookback
(`BILLING_USAGE_SQL_LOOKBACK`, a day by default) written the same way. Filter with `>=`:
the rows of the lookback window are read again, so a row that reached the source late with
an earlier time is not lost, and event ids make reading the others again harmless; the
step's report counts the late ones found (`sql_late_events`).

Each collect reads every row the query returns as one batch, streamed (the memory used does
not grow with the rows), validated and written like a usage file, in one transaction with
the new watermark and a `usage_loads` row. Invalid rows are skipped and reported, and the
watermark stops at the earliest of them, so they are read again at every collect until
they are fixed (or excluded by the query): nothing is lost, nothing is billed twice. See
docs/usage-sources.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Result

from billing_core.config import Settings, normalize_database_url
from billing_core.inputs.usage import ingest_records, retrying_deadlocks
from billing_core.inputs.usage_json import read_properties, stored_problem
from billing_core.inputs.usage_text import CSV_COLUMNS
from billing_core.inputs.usage_validate import parse_timestamp
from billing_core.report import StepReport
from billing_core.store.engine import safe_url
from billing_core.store.models import UsageLoad, UsageSource

SOURCE = "sql"
KIND = "sql"
EPOCH = "1970-01-01T00:00:00+00:00"
FETCH = 5_000
REQUIRED = ("event_id", "customer", "metric", "timestamp")
# Bad rows named one by one in the step's report; the rest are counted.
MAX_ROW_WARNINGS = 50


class SqlSourceRefused(ValueError):
    """The SQL source cannot be read as configured; nothing was read."""


def check_query(query: str) -> sa.TextClause:
    """The query as a statement, or SqlSourceRefused saying in one line what is wrong."""
    statement = sa.text(query)
    params = set(statement.compile().params)
    if "watermark" not in params:
        raise SqlSourceRefused(
            "BILLING_USAGE_SQL_QUERY has no :watermark parameter, so every collect would "
            "read the whole table; filter with e.g. `WHERE ts >= :watermark`"
        )
    others = sorted(params - {"watermark"})
    if others:
        raise SqlSourceRefused(
            "BILLING_USAGE_SQL_QUERY may take only :watermark, not "
            + ", ".join(f":{name}" for name in others)
        )
    return statement


# The date and time of an ISO 8601 watermark, and its fraction's digits: `earlier` writes
# the instant it binds the same way, so a text column compares it as it compares its own.
_SHAPE = re.compile(r"(\d{4}-\d{2}-\d{2})([Tt ])(\d{2}:\d{2}:\d{2})(?:([.,])(\d+))?")


def earlier(watermark: str, lookback: timedelta) -> str:
    """The watermark less the lookback, written as the watermark is (separator, fraction
    digits, offset as written), never before the epoch the first read starts from. A
    watermark that is no instant (an operator's `2026-01-01`) is bound as it is."""
    try:
        parsed = datetime.fromisoformat(watermark)
    except ValueError:
        return watermark
    if not lookback or parsed.tzinfo is None:
        return watermark
    try:
        shifted = parsed - lookback
    except OverflowError:
        return EPOCH
    if shifted < _instant(EPOCH):
        return EPOCH
    shape = _SHAPE.match(watermark)
    if shape is None:
        return shifted.isoformat()
    _, sep, _, point, digits = shape.groups()
    text = shifted.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    if digits:  # cut, never rounded up: the bound stays at or before the instant
        text += point + f"{shifted.microsecond:06d}".ljust(len(digits), "0")[: len(digits)]
    return text + watermark[shape.end() :]


def lookback_text(lookback: timedelta) -> str:
    """`1 day`, `6 hours`, `90 minutes`, `45 seconds`, `none`."""
    if not lookback:
        return "none"
    seconds = int(lookback.total_seconds())
    if seconds != lookback.total_seconds():
        return f"{lookback.total_seconds()} seconds"
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60), ("second", 1)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    raise AssertionError("unreachable")


def _raw(value: Any) -> str:
    """A timestamp value as the watermark keeps it: the source's own text."""
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value).strip()


class _Span:
    """The greatest timestamp among the rows read (instant and text)."""

    def __init__(self, start: str):
        self.text = start
        self.at = _instant(start)

    def see(self, value: Any) -> None:
        at, _ = parse_timestamp(value)
        if at is not None and at > self.at:
            self.at, self.text = at, _raw(value)


class _BadRows:
    """Receives the skipped rows (the `rejects` writer of `ingest_records`): the earliest
    timestamp among them, and whether any had none that could be placed."""

    def __init__(self) -> None:
        self.count = 0
        self.unplaced = 0
        self.at: datetime | None = None
        self.text: str | None = None

    def writerow(self, row: list[Any]) -> None:
        self.count += 1
        record = json.loads(row[4])
        value = record.get("timestamp")
        at, _ = parse_timestamp(value)
        if at is None:
            self.unplaced += 1
        elif self.at is None or at < self.at:
            self.at, self.text = at, _raw(value)


def _instant(text: str) -> datetime:
    at, _ = parse_timestamp(text)
    return at if at is not None else datetime(1970, 1, 1, tzinfo=UTC)


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def _records(result: Result, span: _Span) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, raw record) pairs, rows numbered from 1 in the query's order."""
    columns = list(result.keys())
    extra = [c for c in columns if c not in CSV_COLUMNS and c != "properties"]
    for number, row in enumerate(result, start=1):
        values = row._mapping
        timestamp = values["timestamp"]
        span.see(timestamp)
        record: dict[str, Any] = {c: values[c] for c in CSV_COLUMNS if c in values}
        properties: Any = values.get("properties") or {}
        if isinstance(properties, str):
            properties, problem = read_properties(properties)
            if problem is not None:
                yield number, _refused(problem, timestamp)
                continue
        if not isinstance(properties, dict):
            yield number, _refused(("properties", "not a JSON object"), timestamp)
            continue
        properties = dict(properties)
        for column in extra:
            value = values[column]
            if value is not None and value != "":
                properties[column] = _json_value(value)
        record["properties"] = properties
        problem = stored_problem(record)
        if problem is not None:
            yield number, _refused(problem, timestamp)
            continue
        yield number, record


def _refused(problem: tuple[str, str], timestamp: Any) -> dict[str, Any]:
    """A row refused before validation; its timestamp places it for the watermark."""
    return {"__invalid__": problem[1], "__field__": problem[0], "timestamp": timestamp}


def collect_sql(
    url: str,
    query: str,
    close_run_id: int | None,
    report: StepReport,
    lookback: timedelta = timedelta(0),
    session: Any = None,
) -> None:
    """Read the rows from the watermark less the lookback on, load them, and move the
    watermark (in a dry run's `session`: loaded there and never committed)."""
    try:
        statement = check_query(query)
    except SqlSourceRefused as refused:
        report.warnings.append(f"sql usage source refused: {refused}; nothing read from it")
        return
    engine = sa.create_engine(normalize_database_url(url), poolclass=sa.pool.NullPool)
    try:
        outcome = retrying_deadlocks(
            lambda into: _load(into, engine, statement, close_run_id, report, lookback), session
        )
        if outcome is None:
            return
        loaded, end, read_from = outcome
    finally:
        engine.dispose()
    _report(report, url, loaded, end)
    report.details["sql_lookback"] = lookback_text(lookback)
    if read_from is not None:
        report.details["sql_read_from"] = read_from
        report.details["sql_late_events"] = loaded.loaded_before


def _load(
    session: Any,
    engine: sa.Engine,
    statement: Any,
    close_run_id: int | None,
    report: StepReport,
    lookback: timedelta,
) -> tuple[Any, str, str | None] | None:
    """One load of the source's rows with the new watermark; None if the query is refused.
    The rows from the watermark less the lookback are read (`read_from`, None on the first
    read), and the new events before the watermark counted: the late ones."""
    state = session.get(UsageSource, SOURCE, with_for_update=True)
    if state is None:
        state = UsageSource(name=SOURCE, kind=KIND)
        session.add(state)
    start = state.watermark or EPOCH
    read_from = earlier(start, lookback) if state.watermark else None
    span = _Span(start)
    bad = _BadRows()
    with engine.connect() as source:
        result = source.execution_options(stream_results=True, yield_per=FETCH).execute(
            statement, {"watermark": read_from or start}
        )
        columns = set(result.keys())
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            result.close()
            report.warnings.append(
                f"sql usage source refused: the query returns no {', '.join(missing)} "
                f"column (it needs {', '.join(REQUIRED)}, quantity optional); "
                "nothing read from it"
            )
            return None
        loaded = ingest_records(
            session,
            [(SOURCE, _records(result, span))],
            skip_invalid=True,
            source=SOURCE,
            rejects=bad,
            count_before=_instant(start) if read_from is not None else None,
        )
    end = _end(start, span, bad)
    now = datetime.now(UTC)
    if loaded.read:
        window = f", read from {read_from}" if read_from not in (None, start) else ""
        session.add(
            UsageLoad(
                source=SOURCE,
                key=f"watermark {start} -> {end}{window}"[:512],
                close_run_id=close_run_id,
                events_read=loaded.read,
                events_loaded=loaded.loaded,
                duplicates=loaded.duplicates,
                rejected=loaded.rejected,
                loaded_at=now,
            )
        )
    state.kind = KIND
    state.watermark = end
    state.updated_at = now
    return loaded, end, read_from


def _end(start: str, span: _Span, bad: _BadRows) -> str:
    """The new watermark. Skipped rows hold it at the earliest of them (read again next
    time), even one the lookback found before the old watermark: the watermark goes back
    to it, so it stays in every read until it is fixed. One without a usable timestamp
    cannot be placed, so the watermark stays put."""
    if bad.unplaced:
        return start
    if bad.at is not None:
        return bad.text or start
    return span.text


def _report(report: StepReport, url: str, loaded: Any, end: str) -> None:
    """What the load brought, in the step's report; the skipped rows named."""
    report.read += loaded.read
    report.written += loaded.loaded
    details = report.details
    details["duplicates"] = details.get("duplicates", 0) + loaded.duplicates
    details["sql_rows"] = loaded.read
    details["sql_watermark"] = end
    if loaded.rejected:
        details["sql_rejected"] = loaded.rejected
        details["refused_rows"] = details.get("refused_rows", 0) + loaded.rejected
        for problem in loaded.problems[:MAX_ROW_WARNINGS]:
            report.warnings.append(str(problem))
        more = loaded.rejected - MAX_ROW_WARNINGS
        report.warnings.append(
            f"sql usage source ({safe_url(normalize_database_url(url))}): "
            f"{loaded.rejected} invalid row(s) skipped"
            + (f" ({more} more not listed)" if more > 0 else "")
            + f"; the watermark stays at {end} so they are read again once fixed "
            "(or excluded by the query)"
        )


class SqlQuery:
    """The SQL usage source, as the collect step lists it."""

    def configured(self, settings: Settings) -> bool:
        return bool(settings.usage_sql_url)

    def collect(
        self,
        settings: Settings,
        close_run_id: int | None,
        report: StepReport,
        session: Any = None,
    ) -> None:
        if settings.usage_sql_url and settings.usage_sql_query:
            collect_sql(
                settings.usage_sql_url,
                settings.usage_sql_query,
                close_run_id,
                report,
                settings.usage_sql_lookback,
                session,
            )
