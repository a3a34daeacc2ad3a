"""`billing reports revenue` as finance types it (SPEC §7.1): issued revenue per serviced
or billed customer and currency, net of discounts and before tax, credits apart; drafts
and void invoices left out; the csv and json forms add up; bad options refused in one
line."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from decimal import Decimal

import pytest
from typer.testing import CliRunner

from billing_core.cli.app import app
from tests.helpers import close, import_yaml, invoices

# hq pays for east and west (a roll-up); solo pays for itself, in euros.
CATALOG = """
issuer: {name: Northwind Billing, invoice_prefix: NWB}
tax_rates:
  - {jurisdiction: US-NY, rate: "0.10"}
customers:
  - {id: hq, name: Orbit Group, currency: USD, jurisdiction: US-NY}
  - {id: east, name: Orbit East, currency: USD, parent: hq}
  - {id: west, name: Orbit West, currency: USD, parent: hq}
  - {id: solo, name: Solo GmbH, currency: EUR}
prices:
  - {code: platform, product: Platform, currency: USD, model: flat, amount: "1000.00"}
  - {code: east-seats, product: Seats, currency: USD, model: flat, amount: "300.00"}
  - {code: west-seats, product: Seats, currency: USD, model: flat, amount: "200.10"}
  - {code: solo-fee, product: Fee, currency: EUR, model: flat, amount: "99.99"}
subscriptions:
  - {id: s-hq, customer: hq, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: platform, timing: in_advance}],
     discounts: [{type: percentage, value: "10"}]}
  - {id: s-east, customer: east, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: east-seats, timing: in_advance}],
     discounts: [{type: fixed, amount: "50.00"}]}
  - {id: s-west, customer: west, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: west-seats, timing: in_advance}]}
  - {id: s-solo, customer: solo, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: solo-fee, timing: in_advance}]}
credits:
  - {id: hq-promo, customer: hq, amount: "100.00", currency: USD, effective: 2026-01-01}
  - {id: east-prepaid, customer: east, amount: "40.00", currency: USD, effective: 2026-01-01}
"""
SUBTOTAL_KINDS = ("fixed", "usage", "minimum", "adjustment")


def run(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def billed(store):
    """January and February issued (solo's February then voided), March a draft."""
    import_yaml(CATALOG)
    close("2026-02-01", issue=True)
    close("2026-03-01")
    solo_feb = next(
        i for i in invoices() if (i["billed_customer"], i["billing_date"]) == ("solo", "2026-02-01")
    )
    assert run("invoices", "void", solo_feb["number"]).exit_code == 0
    statuses = sorted((i["billing_date"], i["billed_customer"], i["status"]) for i in invoices())
    assert statuses == [
        ("2026-01-01", "hq", "issued"),
        ("2026-01-01", "solo", "issued"),
        ("2026-02-01", "hq", "issued"),
        ("2026-02-01", "solo", "void"),
        ("2026-03-01", "hq", "draft"),
        ("2026-03-01", "solo", "draft"),
    ]
    return invoices()


def report(*options: str) -> dict:
    dates = ("--from", "2026-01-01", "--to", "2026-03-01")
    done = run("reports", "revenue", *dates, "--format", "json", *options)
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def by_customer(data: dict) -> dict[str, dict]:
    return {row["customer"]: row for row in data["rows"]}


def expected(exported: list[dict], key: str) -> dict[str, dict[str, Decimal]]:
    """Per customer, from the export: revenue (subtotal + discounts), tax and credits of
    the issued invoices, each line to its serviced customer or all to the billed one."""
    sums: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for invoice in exported:
        if invoice["status"] not in ("issued", "paid"):
            continue
        for line in invoice["lines"]:
            who = line["serviced_customer"] if key == "serviced" else invoice["billed_customer"]
            kind = line["kind"]
            bucket = "revenue" if kind in (*SUBTOTAL_KINDS, "discount") else kind
            sums[who][bucket] += Decimal(line["amount"])
    return sums


def test_serviced_shows_each_child_and_billed_puts_all_on_the_parent(billed):
    serviced = by_customer(report())  # --by serviced is the default
    assert report("--by", "serviced") == report()
    billed_ = by_customer(report("--by", "billed"))
    # Two months of each: hq's 1000.00 less 10 %, east's 300.00 less 50.00, west's 200.10.
    assert {c: r["revenue"] for c, r in serviced.items()} == {
        "hq": "1800.00",
        "east": "500.00",
        "west": "400.20",
        "solo": "99.99",  # February's was voided
    }
    assert {c: (r["revenue"], r["invoices"]) for c, r in billed_.items()} == {
        "hq": ("2700.20", 2),
        "solo": ("99.99", 1),
    }
    assert serviced["east"]["customer_name"] == "Orbit East"
    assert serviced["east"]["invoices"] == 2 and serviced["east"]["currency"] == "USD"
    # Each row's figures are the issued lines' (the March drafts and the void left out).
    for data, key in ((serviced, "serviced"), (billed_, "billed")):
        sums = expected(billed, key)
        assert set(data) == set(sums)
        for customer, row in data.items():
            want = sums[customer]
            assert Decimal(row["revenue"]) == want["revenue"], (key, customer)
            assert Decimal(row["tax"]) == want["tax"], (key, customer)
            assert Decimal(row["credits"]) == want["credit"], (key, customer)
            assert Decimal(row["revenue"]) == Decimal(row["subtotal"]) + Decimal(row["discounts"])
            assert Decimal(row["total"]) == sum(
                Decimal(row[k]) for k in ("revenue", "tax", "credits")
            )


def test_revenue_is_the_issued_invoices_subtotal_less_discounts_with_credits_apart(billed):
    issued = [i for i in billed if i["status"] in ("issued", "paid")]
    for by in ("serviced", "billed"):
        data = report("--by", by)
        totals = {t["currency"]: t for t in data["totals"]}
        assert set(totals) == {"USD", "EUR"}
        for currency, total in totals.items():
            mine = [i for i in issued if i["currency"] == currency]
            assert Decimal(total["revenue"]) == sum(
                Decimal(i["subtotal"]) + Decimal(i["discount_total"]) for i in mine
            )
            for name, field in (("tax", "tax_total"), ("credits", "credit_total")):
                assert Decimal(total[name]) == sum(Decimal(i[field]) for i in mine)
            assert Decimal(total["total"]) == sum(Decimal(i["total"]) for i in mine)
            assert total["invoices"] == len(mine)
            # The rows add up to the total.
            rows = [r for r in data["rows"] if r["currency"] == currency]
            for name in ("subtotal", "discounts", "revenue", "tax", "credits", "total"):
                assert sum(Decimal(r[name]) for r in rows) == Decimal(total[name])
    # Credits were consumed, and are shown apart: revenue is not reduced by them.
    usd = {t["currency"]: t for t in report()["totals"]}["USD"]
    assert Decimal(usd["credits"]) < 0
    assert usd["revenue"] == "2700.20"


def test_the_range_is_of_billing_dates_both_ends_included(billed):
    february = ("--from", "2026-02-01", "--to", "2026-02-01")
    done = run("reports", "revenue", *february, "--format", "json")
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert (data["from"], data["to"], data["by"]) == ("2026-02-01", "2026-02-01", "serviced")
    assert {r["customer"]: r["revenue"] for r in data["rows"]} == {
        "hq": "900.00",
        "east": "250.00",
        "west": "200.10",
    }
    # March holds only drafts: nothing issued, an empty report.
    done = run("reports", "revenue", "--from", "2026-03-01", "--to", "2026-12-31")
    assert done.exit_code == 0, done.output
    assert "no issued invoices with a billing date from 2026-03-01 to 2026-12-31" in done.output


def test_csv_rows_and_the_table_add_up(billed):
    done = run(
        "reports", "revenue", "--from", "2026-01-01", "--to", "2026-03-01", "--format", "csv"
    )
    assert done.exit_code == 0, done.output
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert list(rows[0]) == [
        "customer",
        "customer_name",
        "currency",
        "subtotal",
        "discounts",
        "revenue",
        "tax",
        "credits",
        "total",
        "invoices",
    ]
    as_json = report()["rows"]
    assert [{k: str(v) for k, v in r.items()} for r in as_json] == rows
    totals = {t["currency"]: t for t in report()["totals"]}
    for currency in ("USD", "EUR"):
        mine = [r for r in rows if r["currency"] == currency]
        assert sum(Decimal(r["revenue"]) for r in mine) == Decimal(totals[currency]["revenue"])
    table = run("reports", "revenue", "--from", "2026-01-01", "--to", "2026-03-01")
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert "Issued revenue by serviced customer" in lines[0]
    total_usd = next(line for line in lines if "total" in line and "USD" in line)
    cells = [c.strip() for c in total_usd.strip("│ ").split("│")]
    assert cells[3:6] == ["3,000.20", "-300.00", "2,700.20"] and cells[-1] == "2"
    assert any("Orbit West" in line and "400.20" in line for line in lines)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--by", "bogus"], "--by must be serviced or billed, got 'bogus'"),
        (["--format", "xml"], "--format must be table, csv or json, got 'xml'"),
        (
            ["--from", "2026-03-01", "--to", "2026-02-01"],
            "--from 2026-03-01 is after --to 2026-02-01: no billing date is in the range",
        ),
        (["--from", "March"], "--from: not a date (YYYY-MM-DD): 'March'"),
    ],
)
def test_bad_options_are_refused_in_one_line(store, options, message):
    given = {"--from": "2026-01-01", "--to": "2026-03-01"}
    args = list(options)
    for name, value in given.items():
        if name not in args:
            args += [name, value]
    done = run("reports", "revenue", *args)
    assert done.exit_code == 2, done.output
    assert done.output.strip() == message


def test_the_report_sums_exact_decimals_on_both_stores(store):
    """SQLite's own SUM reads text decimals as floats (0.10 + 0.20 is not 0.30 there)."""
    import sqlalchemy as sa

    from billing_core.store.types import DecimalType, decimal_sum

    amounts = sa.union_all(
        *(
            sa.select(sa.literal(value and Decimal(value), DecimalType()).label("amount"))
            for value in ("0.10", "0.20", "1000000000000.000000000001", None)
        )
    ).subquery()
    with store.session() as session:
        total = session.execute(sa.select(decimal_sum(amounts.c.amount))).scalar()
        nothing = session.execute(
            sa.select(decimal_sum(amounts.c.amount)).where(amounts.c.amount.is_(None))
        ).scalar()
    assert total == Decimal("1000000000000.300000000001")
    assert nothing is None
