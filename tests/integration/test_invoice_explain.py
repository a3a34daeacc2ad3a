"""`billing invoices explain` (SPEC §7.1): on a pooled, a tiered, a package and a prorated
line it prints steps whose numbers reproduce the line's amount, and for usage the events
behind it, checked here against the events ingested."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from typer.testing import CliRunner

from billing_core.cli.app import app
from billing_core.invoices.lifecycle import issue
from billing_core.store.engine import unit_of_work
from tests.helpers import close, import_yaml, ingest_csv, invoices

CATALOG = """
issuer: {name: Acme Cloud Ltd, invoice_prefix: EXP}
customers:
  - {id: hold, name: Holding, currency: USD}
  - {id: hold-a, name: Holding A, currency: USD, parent: hold}
  - {id: hold-b, name: Holding B, currency: USD, parent: hold}
  - {id: solo, name: Solo, currency: USD}
  - {id: boxes, name: Boxes, currency: EUR, timezone: Europe/Berlin}
  - {id: late, name: Late Starter, currency: USD}
metrics:
  - {code: calls, name: API calls, aggregation: sum, field: quantity}
  - {code: gb, name: Storage, aggregation: sum, field: quantity}
prices:
  - code: tiered
    product: API calls
    currency: USD
    model: graduated
    metric: calls
    tiers:
      - {up_to: 1000, unit_price: "0.02"}
      - {up_to: 10000, unit_price: "0.015"}
      - {up_to: null, unit_price: "0.011"}
  - {code: packs, product: Storage, currency: EUR, model: package, metric: gb,
     package_size: 100, package_price: "40.00"}
  - {code: base, product: Analytics base, currency: USD, model: flat, amount: "900.00"}
subscriptions:
  - {id: s-hold, customer: hold, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: tiered, timing: in_arrears, pool: breakdown}]}
  - {id: s-solo, customer: solo, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: tiered, timing: in_arrears}]}
  - {id: s-boxes, customer: boxes, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: packs, timing: in_arrears}]}
  - {id: s-late, customer: late, start: 2026-01-14, cadence: monthly, billing_day: 1,
     items: [{price: base, timing: in_advance}]}
"""
# Events per customer and metric: (customer, metric, hours after 1 Jan 00:00 UTC, quantity).
EVENTS = [
    ("hold", "calls", 5, 700),
    ("hold", "calls", 300, 333),
    ("hold-a", "calls", 40, 4100),
    ("hold-a", "calls", 500, 77),
    ("hold-a", "calls", 743, 1),  # 31 Jan 23:00 UTC: inside January
    ("hold-b", "calls", 100, 6900),
    ("hold-b", "calls", 744, 50),  # 1 Feb 00:00 UTC: February's, not January's
    ("solo", "calls", 10, 12345),
    ("solo", "calls", 20, 1),
    ("boxes", "gb", 2, 250),
    ("boxes", "gb", 400, 337),
    ("boxes", "gb", 742, 5),  # 31 Jan 22:00 UTC = 23:00 in Berlin: January's
    ("boxes", "gb", 743, 9),  # 31 Jan 23:00 UTC = 1 Feb in Berlin: February's
]
START = datetime(2026, 1, 1, tzinfo=UTC)
NUMBER = re.compile(r"-?[\d,]+(?:\.\d+)?")


def run(*args: str):
    done = CliRunner().invoke(app, list(args))
    assert done.exit_code == 0, done.output
    return done.output


def value(text: str) -> Decimal:
    """The number in a formatted amount or quantity ("$1,128.65", "€40.00", "6")."""
    return Decimal(NUMBER.search(text).group().replace(",", ""))


def january(customer: str, metric: str, zone_offset_hours: int = 0) -> list[tuple]:
    """The events of January on the customer's calendar (UTC, or a fixed offset)."""
    lo, hi = -zone_offset_hours, 744 - zone_offset_hours
    return [e for e in EVENTS if e[0] == customer and e[1] == metric and lo <= e[2] < hi]


def at(hours: int) -> str:
    return (START + timedelta(hours=hours)).strftime("%Y-%m-%d %H:%M:%S UTC")


@pytest.fixture
def explained(store, tmp_path):
    import_yaml(CATALOG)
    rows = ["event_id,customer,metric,timestamp,quantity"]
    for i, (customer, metric, hours, quantity) in enumerate(EVENTS):
        stamp = (START + timedelta(hours=hours)).isoformat().replace("+00:00", "Z")
        rows.append(f"e{i},{customer},{metric},{stamp},{quantity}")
    ingest_csv("\n".join(rows) + "\n")
    close("2026-02-01")
    with unit_of_work() as session:
        issue(session)
        session.commit()
    return {(i["billed_customer"], i["billing_date"]): i for i in invoices()}


def blocks(output: str) -> dict[str, list[str]]:
    """The explain output per line: "line N" → its lines of text."""
    out: dict[str, list[str]] = {}
    current = None
    for row in output.splitlines():
        if row.startswith("line "):
            current = row.split()[0] + " " + row.split()[1]
            out[current] = [row]
        elif current:
            out[current].append(row.strip())
    return out


def events_of(block: list[str]) -> tuple[int, str, str, Decimal]:
    found = next(r for r in block if r.startswith("events "))
    m = re.match(r"events ([\d,]+): first (.+ UTC), last (.+ UTC); they give (\S+) now", found)
    assert m, found
    return int(m[1].replace(",", "")), m[2], m[3], value(m[4])


def line_amount(block: list[str]) -> tuple[Decimal, Decimal]:
    """(quantity, amount) from the line's "q × unit → amount"."""
    quantity, _, amount = block[1].partition(" × ")[0], None, block[1].split("→")[1]
    return value(quantity), value(amount)


def tiers(block: list[str]) -> list[tuple[Decimal, Decimal, Decimal]]:
    found = []
    for row in block:
        m = re.match(r"Tier \d+ \([^)]*\): (\S+) × (\S+) = (\S+)", row)
        if m:
            found.append((value(m[1]), value(m[2]), value(m[3])))
    return found


def cents(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def test_a_tiered_line_reproduces_from_its_tiers_and_events(explained):
    invoice = explained[("solo", "2026-02-01")]
    (block,) = blocks(run("invoices", "explain", invoice["number"], "--line", "1")).values()
    quantity, amount = line_amount(block)
    count, first, last, now = events_of(block)
    mine = january("solo", "calls")
    assert (count, first, last) == (len(mine), at(mine[0][2]), at(mine[-1][2]))
    assert now == quantity == sum(Decimal(e[3]) for e in mine)
    reached = tiers(block)
    assert [q for q, _, _ in reached] == [1000, 9000, quantity - 10000]
    for q, price, part in reached:
        assert q * price == part
    assert cents(sum(part for _, _, part in reached)) == amount
    assert amount == Decimal(invoice["total"])


def test_a_pooled_line_is_its_share_of_the_pools_amount(explained):
    invoice = explained[("hold", "2026-02-01")]
    output = run("invoices", "explain", invoice["number"])
    usage = [b for b in blocks(output).values() if "API calls" in b[0]]
    assert len(usage) == 3
    pool_total = sum(
        Decimal(e[3]) for c in ("hold", "hold-a", "hold-b") for e in january(c, "calls")
    )
    pool_amount = cents(sum(q * p for q, p, _ in tiers(usage[0])))
    shares = Decimal(0)
    for block in usage:
        customer = block[0].split()[-7]
        quantity, amount = line_amount(block)
        count, _, _, now = events_of(block)
        mine = january(customer, "calls")
        assert count == len(mine) and now == quantity == sum(Decimal(e[3]) for e in mine)
        assert f"Pool total {pool_total:,}" in " ".join(block)
        share = next(r for r in block if r.startswith("Share: "))
        m = re.match(r"Share: (\S+) × (\S+) / (\S+) [=≈] (\S+), .*: (\S+)$", share)
        assert m, share
        assert (value(m[1]), value(m[2]), value(m[3])) == (pool_amount, quantity, pool_total)
        assert abs(pool_amount * quantity / pool_total - amount) < Decimal("0.01")
        assert value(m[5]) == amount
        # The line's unit price is its own average, labelled, as the steps give it.
        said = next(r for r in block if r.startswith("Average unit price"))
        assert f"× avg. {said.rsplit(' ', 1)[1]} →" in block[1]
        assert value(said.rsplit(" ", 1)[1]) == (amount / quantity).quantize(
            Decimal("0.000001"), rounding=ROUND_HALF_UP
        )
        shares += amount
    assert shares == pool_amount
    # Tier by tier, the block: its quantities add up to the pool's total.
    assert sum(q for q, _, _ in tiers(usage[0])) == pool_total


def test_a_package_line_counts_packs_in_the_customers_time_zone(explained):
    invoice = explained[("boxes", "2026-02-01")]
    (block,) = blocks(run("invoices", "explain", invoice["number"], "--line", "1")).values()
    quantity, amount = line_amount(block)
    mine = january("boxes", "gb", zone_offset_hours=1)  # Berlin is UTC+1 in January
    count, first, last, now = events_of(block)
    assert (count, first, last) == (len(mine), at(mine[0][2]), at(mine[-1][2]))
    assert now == quantity == sum(Decimal(e[3]) for e in mine)
    packs = next(r for r in block if "pack of" in r)
    m = re.match(r"(\d+) × pack of (\d+) at (\S+) = (\S+)", packs)
    assert m, packs
    assert int(m[1]) == math.ceil(quantity / int(m[2])) == 6
    assert int(m[1]) * value(m[3]) == value(m[4]) == amount
    assert "(Europe/Berlin)" in " ".join(block)
    assert "2026-01-01 00:00:00 +0100" in " ".join(block)


def test_a_prorated_line_is_days_of_days(explained):
    invoice = explained[("late", "2026-01-14")]
    (block,) = blocks(run("invoices", "explain", invoice["number"], "--line", "1")).values()
    _, amount = line_amount(block)
    m = re.match(r"Prorated: (\d+) of (\d+) days × (\S+) [=≈] (\S+), rounded: (\S+)", block[2])
    assert m, block
    days, of_days, fee = int(m[1]), int(m[2]), value(m[3])
    assert (days, of_days, fee) == (18, 31, Decimal(900))
    assert cents(fee * days / of_days) == value(m[5]) == amount == Decimal("522.58")


def test_a_line_that_is_not_there_is_refused_in_one_line(explained):
    invoice = explained[("solo", "2026-02-01")]
    done = CliRunner().invoke(app, ["invoices", "explain", invoice["number"], "--line", "99"])
    assert done.exit_code == 1
    assert done.output.strip().splitlines() == [
        f"invoice {invoice['number']} has no line 99 (it has lines 1–1)"
    ]
