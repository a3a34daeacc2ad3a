"""Usage aggregated at ingestion (per customer, metric and UTC day) gives the quantities
and the invoices that reading every event gives, on random data: windows cut at local
midnights of several time zones and at random instants, late events, duplicates within a
file and across loads, equal instants for `latest`, and every aggregation."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from billing_core.steps.dry_run import dry_run
from billing_core.store import usage_totals
from billing_core.store.engine import unit_of_work
from billing_core.store.usage_buckets import rebuild
from billing_core.store.usage_totals import Window, aggregate
from tests.helpers import close, import_yaml, ingest_csv, invoices

CUSTOMERS = ["c0", "c1", "c2", "c3"]
KINDS = {
    "units": "sum",
    "calls": "count",
    "peak": "max",
    "users": "unique_count",
    "seats": "latest",
}
CATALOG = """
customers:
  - {id: c0, name: Zero, currency: USD}
  - {id: c1, name: One, currency: USD, timezone: America/New_York}
  - {id: c2, name: Two, currency: USD, timezone: Asia/Kolkata, parent: c0}
  - {id: c3, name: Three, currency: USD, timezone: Asia/Kathmandu}
metrics:
  - {code: units, name: Units, aggregation: sum}
  - {code: calls, name: Calls, aggregation: count}
  - {code: peak, name: Peak, aggregation: max}
  - {code: users, name: Users, aggregation: unique_count, field: user_id}
  - {code: seats, name: Seats, aggregation: latest}
"""
ZONES = [UTC, ZoneInfo("America/New_York"), ZoneInfo("Asia/Kolkata"), ZoneInfo("Pacific/Chatham")]
START = datetime(2026, 1, 1, tzinfo=UTC)
SPAN_SECONDS = 90 * 86400  # January to March


def _instant(rng: random.Random) -> datetime:
    """A random instant of the quarter, often on or next to a UTC or local midnight."""
    day = START + timedelta(days=rng.randrange(90))
    pick = rng.random()
    if pick < 0.15:
        return day  # a UTC midnight
    if pick < 0.25:
        return day - timedelta(microseconds=1)  # the last instant of a day
    if pick < 0.35:
        zone = rng.choice(ZONES)
        local = day.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)
        return local.astimezone(UTC)  # a local midnight
    return START + timedelta(seconds=rng.randrange(SPAN_SECONDS), microseconds=rng.randrange(10**6))


def _events(rng: random.Random, count: int, first_id: int) -> list[tuple]:
    rows = []
    for n in range(count):
        at = _instant(rng)
        zone = rng.choice(ZONES)
        stamp = at.astimezone(zone).isoformat()  # written with the zone's offset
        quantity = rng.choice(["1", "0", "2.5", "0.000001", str(rng.randrange(1, 10**6))])
        rows.append(
            (
                f"e{first_id + n:06d}",
                rng.choice(CUSTOMERS),
                rng.choice(list(KINDS)),
                stamp,
                quantity,
                f"u{rng.randrange(12)}",
            )
        )
    # Equal instants for `latest`: some events copy another's instant.
    for _ in range(count // 10):
        i, j = rng.randrange(count), rng.randrange(count)
        rows[i] = rows[i][:3] + (rows[j][3],) + rows[i][4:]
    return rows


def _csv(rows: list[tuple]) -> str:
    return "event_id,customer,metric,timestamp,quantity,user_id\n" + "\n".join(
        ",".join(r) for r in rows
    )


def _windows(rng: random.Random, count: int) -> list[Window]:
    made = []
    for key in range(count):
        kind = rng.random()
        if kind < 0.3:  # a local month or a few local days
            zone = rng.choice(ZONES)
            first = (START + timedelta(days=rng.randrange(80))).astimezone(zone)
            first = first.replace(hour=0, minute=0, second=0, microsecond=0)
            start, end = first, first + timedelta(days=rng.choice([1, 3, 28, 31]))
        elif kind < 0.45:  # whole UTC days
            start = START + timedelta(days=rng.randrange(80))
            end = start + timedelta(days=rng.randrange(1, 10))
        elif kind < 0.6:  # within one day
            start = _instant(rng)
            end = start + timedelta(seconds=rng.randrange(1, 86400))
        else:  # random instants
            start = _instant(rng)
            end = start + timedelta(seconds=rng.randrange(1, 40 * 86400))
        made.append(Window(key, rng.choice(CUSTOMERS), rng.choice(list(KINDS)), start, end))
    return made


def _oracle(windows: list[Window]) -> dict[int, Decimal]:
    """Each window's quantity computed in Python from the stored events."""
    with unit_of_work() as session:
        events = session.execute(
            sa.text(
                "SELECT event_id, customer_id, metric_code, timestamp, value, dimension "
                "FROM usage_events"
            )
        ).all()
    out = {}
    for w in windows:
        inside = []
        for event_id, customer, metric, at, value, dimension in events:
            at = at if isinstance(at, datetime) else datetime.fromisoformat(at)
            at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
            if customer == w.customer_id and metric == w.metric_code and w.start <= at < w.end:
                inside.append((at, event_id, value, dimension))
        kind = KINDS[w.metric_code]
        if not inside:
            out[w.key] = Decimal(0)
        elif kind == "sum":
            out[w.key] = Decimal(sum(v for _, _, v, _ in inside)) / 10**6
        elif kind == "count":
            out[w.key] = Decimal(len(inside))
        elif kind == "max":
            out[w.key] = Decimal(max(v for _, _, v, _ in inside)) / 10**6
        elif kind == "unique_count":
            out[w.key] = Decimal(len({d for *_, d in inside if d is not None}))
        else:  # latest: the last by instant, equal instants to the greater event id
            out[w.key] = Decimal(max(inside)[2]) / 10**6
    return out


def _buckets() -> list[tuple]:
    with unit_of_work() as session:
        rows = session.execute(
            sa.text(
                "SELECT customer_id, metric_code, day, events, total_high, total_low, "
                "max_value, latest_at, latest_event_id, latest_value FROM usage_buckets "
                "ORDER BY customer_id, metric_code, day"
            )
        ).all()
        values = session.execute(sa.text("SELECT count(*) FROM usage_bucket_values")).scalar_one()
    return [tuple(r) for r in rows] + [("values", values)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_quantities_from_day_buckets_are_those_of_every_event(store, seed):
    rng = random.Random(seed)
    import_yaml(CATALOG)
    first = _events(rng, 300, 0)
    again = rng.sample(first, 40)  # a file sent again in part: duplicates add nothing
    late = _events(rng, 120, 300)  # later loads into days already bucketed
    twice = late[:10] + late  # duplicates within one file: the first is kept
    ingest_csv(_csv(first), name="first.csv")
    ingest_csv(_csv(again + twice[:60]), name="second.csv")
    ingest_csv(_csv(twice[60:]), name="third.csv")

    kept = _buckets()
    with unit_of_work() as session:
        rebuild(session.connection())  # the buckets computed again from every event
        session.commit()
    assert _buckets() == kept  # what the loads kept is what the events make

    made = _windows(rng, 160)
    expected = _oracle(made)
    for every_customer in (False, True):
        for buckets in (True, False):
            with unit_of_work() as session:
                got = aggregate(session, made, KINDS, every_customer, buckets)
            wrong = {
                w: (got[w.key], expected[w.key]) for w in made if got[w.key] != expected[w.key]
            }
            assert not wrong, (every_customer, buckets, wrong)
    assert sum(1 for v in expected.values() if v) > 60  # most windows have usage


BILLED = (
    CATALOG
    + """
prices:
  - {code: units, product: Units, currency: USD, model: per_unit, metric: units,
     unit_price: "0.013"}
  - {code: calls, product: Calls, currency: USD, model: graduated, metric: calls,
     tiers: [{up_to: 20, unit_price: "0.50"}, {up_to: null, unit_price: "0.25"}]}
  - {code: peak, product: Peak, currency: USD, model: per_unit, metric: peak,
     unit_price: "0.0007"}
  - {code: users, product: Users, currency: USD, model: per_unit, metric: users,
     unit_price: "3.00"}
  - {code: seats, product: Seats, currency: USD, model: per_unit, metric: seats,
     unit_price: "0.0011"}
subscriptions:
"""
    + "".join(
        f"""  - {{id: s-{c}, customer: {c}, start: {start}, cadence: monthly, billing_day: {day},
     items: [{{price: units, timing: in_arrears}}, {{price: calls, timing: in_arrears}},
             {{price: peak, timing: in_arrears}}, {{price: users, timing: in_arrears}},
             {{price: seats, timing: in_arrears}}]}}
"""
        for c, start, day in (
            ("c0", "2026-01-01", 1),
            ("c1", "2026-01-10", 10),
            ("c3", "2026-01-17", 17),
        )
    )
)


@pytest.mark.parametrize("closed_with_buckets", [True, False], ids=["buckets", "events"])
def test_invoices_from_day_buckets_are_those_of_every_event(
    store, monkeypatch, closed_with_buckets
):
    """Closed one way, a dry run the other way would change nothing: the invoices (late
    usage adjustments included) are the same whether whole days come from the buckets or
    from the events."""
    rng = random.Random(7 if closed_with_buckets else 8)
    import_yaml(BILLED)
    ingest_csv(_csv(_events(rng, 400, 0)), name="january.csv")
    monkeypatch.setattr(usage_totals, "READ_DAY_BUCKETS", closed_with_buckets)
    close("2026-02-20", issue=True)
    late = _events(rng, 200, 400)  # late usage for issued periods, and new usage
    ingest_csv(_csv(late[:150] + late[:20]), name="late.csv")
    ingest_csv(_csv(late[150:] + late[100:110]), name="later.csv")
    close("2026-04-01")
    billed = invoices()
    assert len(billed) >= 6
    kinds = {line["kind"] for i in billed for line in i["lines"]}
    assert {"usage", "adjustment"} <= kinds, kinds  # usage billed, and late usage too

    monkeypatch.setattr(usage_totals, "READ_DAY_BUCKETS", not closed_with_buckets)
    diff = dry_run(datetime(2026, 4, 1).date())
    assert diff["counts"]["added"] == diff["counts"]["changed"] == diff["counts"]["removed"] == 0, (
        diff
    )
    # Every draft computed again, each the same (issued invoices do not change).
    assert diff["counts"]["unchanged"] == sum(1 for i in billed if i["status"] == "draft") >= 3


def test_only_the_metrics_that_read_them_keep_a_latest_event_or_values(store):
    """A day's latest event is kept for `latest` metrics only, its values for
    `unique_count` ones only: by the loads, by `rebuild` (even of events that carry a
    value for another metric), and the quantities stay those of every event."""
    rng = random.Random(11)
    import_yaml(CATALOG)
    ingest_csv(_csv(_events(rng, 300, 0)), name="first.csv")
    ingest_csv(_csv(_events(rng, 100, 300)), name="second.csv")  # into days already kept

    def kept() -> tuple[dict, set]:
        # Per metric: which of its buckets' three latest columns are NULL (all or none).
        latest: dict[str, set] = {}
        for metric, *columns in store.rows(
            "SELECT metric_code, latest_at IS NULL, latest_event_id IS NULL, "
            "latest_value IS NULL FROM usage_buckets"
        ):
            latest.setdefault(metric, set()).add(tuple(columns))
        values = {m for (m,) in store.rows("SELECT DISTINCT metric_code FROM usage_bucket_values")}
        return latest, values

    none, every = {(True, True, True)}, {(False, False, False)}
    expected = (
        {"units": none, "calls": none, "peak": none, "users": none, "seats": every},
        {"users"},
    )
    assert kept() == expected

    # Events that carry a value for a `sum` metric (written straight to the store):
    # `rebuild` keeps no values for it either.
    with unit_of_work() as session:
        session.execute(
            sa.text(
                "UPDATE usage_events SET dimension = 'u1' WHERE event_id IN (SELECT event_id "
                "FROM usage_events WHERE metric_code = 'units' ORDER BY event_id LIMIT 5)"
            )
        )
        rebuild(session.connection())
        session.commit()
    assert kept() == expected

    made = _windows(rng, 120)
    quantities = _oracle(made)
    for every_customer in (False, True):
        with unit_of_work() as session:
            got = aggregate(session, made, KINDS, every_customer, True)
        assert {w.key: got[w.key] for w in made} == quantities, every_customer


def test_day_buckets_summed_while_loading_are_those_the_events_make(store, monkeypatch):
    """On PostgreSQL the batches copied straight into the events have their day buckets
    summed by the loading process (the `latest` metric's events left to the server); the
    batches merged past known ids are summed by the server, and a load with both adds
    them up once. Into new days the INSERT skips its conflict handling; one that meets a
    bucket written meanwhile runs again with it. Each time the buckets are what `rebuild`
    makes of the events."""
    from billing_core.inputs import usage_write
    from billing_core.store import usage_buckets

    rng = random.Random(5)
    import_yaml(CATALOG)
    monkeypatch.setattr(usage_write, "BATCH", 40)
    statements = []  # PostgreSQL's: how each load's statements were made
    fill_sql = usage_buckets.fill_sql

    def recorded(*args, **kwargs):
        if kwargs:  # a load's, not rebuild's
            statements.append(kwargs)
        return fill_sql(*args, **kwargs)

    monkeypatch.setattr(usage_buckets, "fill_sql", recorded)

    def same_as_rebuilt() -> None:
        kept = _buckets()
        with unit_of_work() as session:
            rebuild(session.connection())
            session.commit()
        assert _buckets() == kept

    first = _events(rng, 200, 0)
    ingest_csv(_csv(first), name="first.csv")  # every batch straight in, new days
    same_as_rebuilt()
    late = _events(rng, 200, 200)
    # Batches of new ids only (straight in) and batches with known ids (merged).
    ingest_csv(_csv(late[:80] + first[:10] + late[80:110] + late[110:]), name="second.csv")
    same_as_rebuilt()
    # A bucket of the load's days stored meanwhile: the plain INSERT fails, and is run
    # again with its conflict handling.
    monkeypatch.setattr(usage_buckets, "_days_stored", lambda cursor, days: False)
    ingest_csv(_csv(_events(rng, 120, 400)), name="third.csv")
    same_as_rebuilt()
    assert sum(n for _, _, _, n, *_ in _buckets()[:-1]) == 520
    if store.backend == "postgres":
        assert statements == [
            {"parts": True, "regroup": False, "conflict": False},  # new days
            {"parts": True, "regroup": True, "conflict": True},  # merged and summed here
            {"parts": True, "regroup": False, "conflict": False},  # met a stored bucket
            {"parts": True, "regroup": False},  # run again with its conflict handling
        ]
