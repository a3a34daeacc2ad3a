"""Billing schedules end to end on both stores (SPEC §3): closes bill the periods the rules
give, `billing subscriptions list` shows each schedule's lifecycle, and `billing
subscriptions preview` shows what a close would produce without writing anything."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from billing_core.cli.app import app
from billing_core.inputs.catalog import CatalogError
from billing_core.store.engine import get_engine
from tests.helpers import close, import_yaml, ingest_csv, invoices, lines, one


def billing(*args: str) -> str:
    """Run a `billing` command in-process; returns its standard output."""
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.stderr + str(result.exception)
    return result.stdout


def fixed_lines(**match) -> list[tuple]:
    """(billing date, period start, inclusive period end, amount) of every fixed line."""
    out = []
    for invoice in invoices():
        if all(invoice[k] == v for k, v in match.items()):
            for line in lines(invoice, kind="fixed"):
                out.append(
                    (invoice["billing_date"], line["period_start"], line["period_end"])
                    + (line["amount"],)
                )
    return sorted(out)


# --- periods and proration through a close ---------------------------------------------------


def test_sequence_annual_fee_from_24_january_is_prorated_8_of_365(store):
    import_yaml(
        """
        customers: [{id: yearly, name: Yearly Ltd, currency: USD}]
        prices: [{code: licence, product: Licence, currency: USD, model: flat, amount: "3650.00"}]
        subscriptions:
          - {id: sub-yearly, customer: yearly, start: 2026-01-24, cadence: annual,
             billing_day: 1, items: [{price: licence, timing: in_advance}]}
        """
    )
    close("2026-02-01")
    # 24-31 January is 8 days of the year 1 Feb 2025 - 31 Jan 2026 (365 days):
    # 3650 x 8/365 = 80.00, billed in advance on the start; the first whole year on 1 Feb.
    assert fixed_lines() == [
        ("2026-01-24", "2026-01-24", "2026-01-31", "80.00"),
        ("2026-02-01", "2026-02-01", "2027-01-31", "3650.00"),
    ]


def test_quarterly_in_arrears_from_a_mid_month_start(store):
    import_yaml(
        """
        customers: [{id: quarterly, name: Quarterly GmbH, currency: EUR, timezone: Europe/Berlin}]
        prices: [{code: base, product: Base, currency: EUR, model: flat, amount: "920.00"}]
        subscriptions:
          - {id: sub-q, customer: quarterly, start: 2026-01-24, cadence: quarterly,
             billing_day: 1, items: [{price: base, timing: in_arrears}]}
        """
    )
    close("2026-05-01")
    # 24-31 January against 1 Nov - 31 Jan (30 + 31 + 31 = 92 days): 920 x 8/92 = 80.00,
    # due 1 February; then 1 Feb - 30 Apr, due 1 May.
    assert fixed_lines() == [
        ("2026-02-01", "2026-01-24", "2026-01-31", "80.00"),
        ("2026-05-01", "2026-02-01", "2026-04-30", "920.00"),
    ]


def test_the_31st_through_a_leap_february_and_back(store):
    import_yaml(
        """
        customers: [{id: late, name: Month End Co, currency: USD}]
        prices: [{code: fee, product: Fee, currency: USD, model: flat, amount: "290.00"}]
        subscriptions:
          - {id: sub-end, customer: late, start: 2024-01-31, cadence: monthly,
             billing_day: 31, items: [{price: fee, timing: in_advance}]}
        """
    )
    close("2024-04-30")
    # Whole periods whatever their length, each billed on its (clamped) first day.
    assert fixed_lines() == [
        ("2024-01-31", "2024-01-31", "2024-02-28", "290.00"),
        ("2024-02-29", "2024-02-29", "2024-03-30", "290.00"),
        ("2024-03-31", "2024-03-31", "2024-04-29", "290.00"),
        ("2024-04-30", "2024-04-30", "2024-05-30", "290.00"),
    ]


def test_a_backdated_schedule_with_a_mid_month_end(store):
    import_yaml(
        """
        customers: [{id: migrated, name: Migrated Inc, currency: USD}]
        prices: [{code: support, product: Support, currency: USD, model: flat, amount: "300.00"}]
        subscriptions:
          - {id: sub-m, customer: migrated, start: 2026-02-01, end: 2026-04-15,
             cadence: monthly, billing_day: 1, items: [{price: support, timing: in_arrears}]}
        """
    )
    # One close after the end bills every past period; the last, 1-15 April, is 15 of
    # April's 30 days (300 x 15/30 = 150.00), due the day after its last day.
    close("2026-05-01")
    assert fixed_lines() == [
        ("2026-03-01", "2026-02-01", "2026-02-28", "300.00"),
        ("2026-04-01", "2026-03-01", "2026-03-31", "300.00"),
        ("2026-04-16", "2026-04-01", "2026-04-15", "150.00"),
    ]


def test_align_to_parent_prorates_the_childs_first_period(store):
    import_yaml(
        """
        customers:
          - {id: hq, name: HQ Inc, currency: USD, billing_day: 1}
          - {id: branch, name: Branch, currency: USD, parent: hq}
        prices:
          - {code: seat-pack, product: Seat pack, currency: USD, model: flat, amount: "310.00"}
        subscriptions:
          - {id: sub-branch, customer: branch, start: 2026-01-10, cadence: monthly,
             billing_day: 15, rollup: true, align_to_parent: true,
             items: [{price: seat-pack, timing: in_advance}]}
        """
    )
    close("2026-02-01")
    # Re-anchored on HQ's day 1: 10-31 January is 22 of 31 days, 310 x 22/31 = 220.00,
    # due 10 January and billed on HQ's next billing day, 1 February, with February.
    assert fixed_lines(billed_customer="hq") == [
        ("2026-02-01", "2026-01-10", "2026-01-31", "220.00"),
        ("2026-02-01", "2026-02-01", "2026-02-28", "310.00"),
    ]


def test_a_phase_inside_a_period_is_two_prorated_lines_due_together(store):
    import_yaml(
        """
        customers: [{id: ramp, name: Ramp Co, currency: USD}]
        prices:
          - {code: starter, product: Starter, currency: USD, model: flat, amount: "280.00"}
          - {code: growth, product: Growth, currency: USD, model: flat, amount: "560.00"}
        subscriptions:
          - id: sub-ramp
            customer: ramp
            start: 2026-01-01
            cadence: monthly
            billing_day: 1
            items: [{price: starter, timing: in_advance}]
            phases:
              - {start: 2026-02-08, items: [{price: growth, timing: in_advance}]}
              - {start: 2026-04-01, items: [{price: starter, timing: in_advance}]}
        """
    )
    close("2026-04-01")
    # February (28 days) split on the 8th: 280 x 7/28 = 70.00 and 560 x 21/28 = 420.00,
    # both due 1 February. March is all Growth; April back on Starter (a boundary start).
    assert fixed_lines() == [
        ("2026-01-01", "2026-01-01", "2026-01-31", "280.00"),
        ("2026-02-01", "2026-02-01", "2026-02-07", "70.00"),
        ("2026-02-01", "2026-02-08", "2026-02-28", "420.00"),
        ("2026-03-01", "2026-03-01", "2026-03-31", "560.00"),
        ("2026-04-01", "2026-04-01", "2026-04-30", "280.00"),
    ]


def test_usage_periods_are_local_midnights_across_daylight_saving(store):
    import_yaml(
        """
        customers: [{id: nyc, name: NYC Corp, currency: USD, timezone: America/New_York}]
        metrics: [{code: calls, name: Calls, aggregation: sum, field: quantity}]
        prices: [{code: per-call, product: Calls, currency: USD, model: per_unit,
                  metric: calls, unit_price: "1.00"}]
        subscriptions:
          - {id: sub-nyc, customer: nyc, start: 2026-02-01, cadence: monthly, billing_day: 1,
             items: [{price: per-call, timing: in_arrears}]}
        """
    )
    # New York is UTC-5 until 8 March 2026, UTC-4 after: 1 March starts at 05:00 UTC and
    # 1 April at 04:00 UTC.
    ingest_csv(
        """
        event_id,customer,metric,timestamp,quantity
        feb-last,nyc,calls,2026-03-01T04:59:59Z,1
        mar-first,nyc,calls,2026-03-01T05:00:00Z,10
        mar-last,nyc,calls,2026-04-01T03:59:59Z,100
        apr-first,nyc,calls,2026-04-01T04:00:00Z,1000
        """
    )
    close("2026-05-01")
    usage = {
        i["billing_date"]: [(x["period_start"], x["quantity"]) for x in lines(i, kind="usage")]
        for i in invoices()
    }
    assert usage == {
        "2026-03-01": [("2026-02-01", "1")],
        "2026-04-01": [("2026-03-01", "110")],
        "2026-05-01": [("2026-04-01", "1000")],
    }


def test_draft_subscriptions_bill_nothing(store):
    import_yaml(
        """
        customers: [{id: trial, name: Trial Co, currency: USD}]
        prices: [{code: fee, product: Fee, currency: USD, model: flat, amount: "100.00"}]
        subscriptions:
          - {id: sub-trial, customer: trial, start: 2026-01-01, cadence: monthly,
             billing_day: 1, status: draft, items: [{price: fee, timing: in_advance}]}
        """
    )
    close("2026-03-01")
    assert invoices() == []


def test_usage_cannot_be_billed_in_advance_and_phases_need_items(store):
    base = """
        customers: [{id: c, name: C, currency: USD}]
        metrics: [{code: calls, name: Calls, aggregation: sum, field: quantity}]
        prices:
          - {code: fee, product: Fee, currency: USD, model: flat, amount: "1.00"}
          - {code: per-call, product: Calls, currency: USD, model: per_unit, metric: calls,
             unit_price: "1.00"}
        subscriptions:
          - {id: s, customer: c, start: 2026-01-01, cadence: monthly, billing_day: 1,
    """
    with pytest.raises(CatalogError, match="usage cannot be billed in advance"):
        import_yaml(base + "         items: [{price: per-call, timing: in_advance}]}\n")
    with pytest.raises(CatalogError, match="a phase needs at least one item"):
        import_yaml(
            base + "         items: [{price: fee, timing: in_advance}],\n"
            "         phases: [{start: 2026-03-01, items: []}]}\n"
        )


# --- billing subscriptions list ------------------------------------------------------------

LIFECYCLE = """
customers: [{id: acme, name: Acme, currency: USD}]
prices: [{code: fee, product: Fee, currency: USD, model: flat, amount: "100.00"}]
subscriptions:
  - {id: a-draft, customer: acme, start: 2026-01-01, cadence: monthly, billing_day: 1,
     status: draft, items: [{price: fee, timing: in_advance}]}
  - {id: b-upcoming, customer: acme, start: 2026-07-01, cadence: monthly, billing_day: 1,
     items: [{price: fee, timing: in_advance}]}
  - {id: c-active, customer: acme, start: 2026-01-01, end: 2026-06-30, cadence: monthly,
     billing_day: 1, items: [{price: fee, timing: in_advance}]}
  - {id: d-completed, customer: acme, start: 2025-01-01, end: 2025-12-31, cadence: annual,
     billing_day: 1, items: [{price: fee, timing: in_advance}]}
"""


def statuses(day: str) -> dict[str, str]:
    """Subscription id -> status, read from `billing subscriptions list --on DAY`."""
    shown = billing("subscriptions", "list", "--on", day)
    cells = [row.split("│") for row in shown.splitlines() if row.startswith("│")]
    return {c[1].strip(): c[8].strip() for c in cells}


def test_list_shows_each_schedules_lifecycle_on_a_day(store):
    import_yaml(LIFECYCLE)
    assert statuses("2026-03-15") == {
        "a-draft": "draft",
        "b-upcoming": "upcoming",  # starts 1 July
        "c-active": "active",
        "d-completed": "completed",  # its last day was 31 December 2025
    }
    # On its last day a schedule is still active; the day after, completed. On its
    # first day an upcoming one becomes active.
    assert statuses("2026-06-30")["c-active"] == "active"
    assert statuses("2026-07-01")["c-active"] == "completed"
    assert statuses("2026-07-01")["b-upcoming"] == "active"
    only = billing("subscriptions", "list", "--on", "2026-07-01", "--status", "completed")
    assert "c-active" in only and "d-completed" in only and "b-upcoming" not in only


def test_list_refuses_an_unknown_status(store):
    import_yaml(LIFECYCLE)
    result = CliRunner().invoke(app, ["subscriptions", "list", "--status", "paused"])
    assert result.exit_code != 0 and "paused" in result.stderr


# --- billing subscriptions preview ---------------------------------------------------------

SEQUENCE = """
customers: [{id: uk-co, name: UK Co Ltd, currency: GBP, timezone: Europe/London}]
metrics: [{code: calls, name: Calls, aggregation: sum, field: quantity}]
prices:
  - {code: platform, product: Platform fee, currency: GBP, model: flat, amount: "500.00"}
  - {code: per-call, product: Calls, currency: GBP, model: per_unit, metric: calls,
     unit_price: "0.10"}
subscriptions:
  - id: sub-uk
    customer: uk-co
    start: 2023-03-14
    cadence: monthly
    billing_day: 1
    minimum: "400.00"
    items:
      - {price: platform, timing: in_advance}
      - {price: per-call, timing: in_arrears}
"""

USAGE = """
event_id,customer,metric,timestamp,quantity
mar-1,uk-co,calls,2023-03-20T12:00:00Z,300
mar-2,uk-co,calls,2023-03-31T22:30:00Z,200
apr-1,uk-co,calls,2023-03-31T23:30:00Z,50
"""


def preview(subscription: str, through: str) -> dict:
    return json.loads(
        billing("subscriptions", "preview", subscription, "--through", through, "--format", "json")
    )


def snapshot(url: str) -> dict[str, list[tuple]]:
    """Every row of every table."""
    engine = get_engine(url)
    meta = sa.MetaData()
    meta.reflect(engine)
    with engine.connect() as connection:
        return {
            name: sorted(tuple(map(str, row)) for row in connection.execute(sa.select(table)))
            for name, table in sorted(meta.tables.items())
        }


def test_preview_shows_periods_billing_dates_and_prorated_amounts(store):
    import_yaml(SEQUENCE)
    ingest_csv(USAGE)
    got = preview("sub-uk", "2023-04-01")
    assert (got["status"], got["billing_day"], got["currency"]) == ("active", 1, "GBP")
    rows = [
        (x["kind"], x["period_start"], x["period_end"], x["days"], x["period_days"])
        + (x["due_date"], x["billing_date"], x["state"], x["quantity"], x["amount"])
        for x in got["lines"]
    ]
    assert rows == [
        # Sequence: 14-31 March is 18 of 31 days, 500 x 18/31 = 290.32, due on the start.
        ("fixed", "2023-03-14", "2023-03-31", 18, 31, "2023-03-14", "2023-03-14")
        + ("to bill", "1", "290.32"),
        # Usage is never prorated. London is on BST from 26 March 2023, so March ends at
        # 23:00 UTC on the 31st: 300 + 200 calls in March (the 23:30 UTC one is April's).
        ("usage", "2023-03-14", "2023-03-31", 18, 31, "2023-04-01", "2023-04-01")
        + ("to bill", "500", "50.00"),
        # Minimum 400 x 18/31 = 232.258 -> 232.26; charges 290.32 + 50.00 exceed it.
        ("minimum", "2023-03-14", "2023-03-31", 18, 31, "2023-04-01", "2023-04-01")
        + ("to bill", None, "0.00"),
        ("fixed", "2023-04-01", "2023-04-30", 30, 30, "2023-04-01", "2023-04-01")
        + ("to bill", "1", "500.00"),
    ]
    usage = got["lines"][1]
    assert (usage["window_start"], usage["window_end"]) == (
        "2023-03-14T00:00:00+00:00",
        "2023-03-31T23:00:00+00:00",
    )
    assert got["lines"][2]["commitment"] == "232.26"
    assert got["to_bill"] == "840.32"  # 290.32 + 50.00 + 0.00 + 500.00


def test_preview_writes_nothing_and_agrees_with_the_close(store):
    import_yaml(SEQUENCE)
    ingest_csv(USAGE)
    before = snapshot(store.url)
    shown = preview("sub-uk", "2023-04-01")
    billing("subscriptions", "preview", "sub-uk", "--through", "2023-04-01")  # the table too
    assert snapshot(store.url) == before
    close("2023-04-01")
    billed = sorted(
        (i["billing_date"], x["kind"], x["period_start"], x["amount"])
        for i in invoices()
        for x in i["lines"]
        if x["kind"] in ("fixed", "usage", "minimum")
    )
    previewed = sorted(
        (x["billing_date"], x["kind"], x["period_start"], x["amount"])
        for x in shown["lines"]
        if x["amount"] != "0.00"  # the close leaves zero lines off
    )
    assert billed == previewed


def test_preview_marks_what_is_billed_and_what_waits(store):
    import_yaml(SEQUENCE)
    ingest_csv(USAGE)
    close("2023-03-14", issue=True)
    got = preview("sub-uk", "2023-04-01")
    first = got["lines"][0]
    assert (first["state"], first["invoice"], first["amount"]) == (
        "billed",
        "INV-2023-000001",
        "290.32",
    )
    assert {x["state"] for x in got["lines"][1:]} == {"to bill"}
    # Through 31 March nothing else is due; April's fee is not shown yet.
    assert [x["state"] for x in preview("sub-uk", "2023-03-31")["lines"]] == ["billed"]


def test_preview_of_a_childs_charge_waiting_for_its_payers_first_billing_date(store):
    import_yaml(
        """
        customers:
          - {id: parent, name: Parent, currency: USD}
          - {id: kid, name: Kid, currency: USD, parent: parent}
        prices: [{code: fee, product: Fee, currency: USD, model: flat, amount: "100.00"}]
        subscriptions:
          - {id: sub-parent, customer: parent, start: 2026-06-01, cadence: monthly,
             billing_day: 1, items: [{price: fee, timing: in_advance}]}
          - {id: sub-kid, customer: kid, start: 2026-01-01, cadence: monthly,
             billing_day: 1, items: [{price: fee, timing: in_arrears}]}
        """
    )
    got = preview("sub-kid", "2026-02-01")
    # January's fee is due 1 February, but the parent's first billing date is 1 June.
    assert [(x["due_date"], x["billing_date"], x["state"]) for x in got["lines"]] == [
        ("2026-02-01", "2026-06-01", "waiting"),
    ]
    assert got["billed_customer"] == "parent" and got["to_bill"] == "0.00"


def test_preview_of_a_draft_shows_it_as_if_started(store):
    import_yaml(LIFECYCLE)
    got = preview("a-draft", "2026-02-01")
    assert got["status"] == "draft"
    assert any("bills nothing" in note for note in got["notes"])
    assert [(x["period_start"], x["amount"]) for x in got["lines"]] == [
        ("2026-01-01", "100.00"),
        ("2026-02-01", "100.00"),
    ]


def test_preview_of_a_pool_rates_the_block_so_far(store):
    import_yaml(
        """
        customers:
          - {id: hq, name: HQ, currency: USD}
          - {id: a, name: A, currency: USD, parent: hq}
          - {id: b, name: B, currency: USD, parent: hq}
        metrics: [{code: units, name: Units, aggregation: sum, field: quantity}]
        prices:
          - {code: tiered, product: Units, currency: USD, model: graduated, metric: units,
             tiers: [{up_to: 1000, unit_price: "1.00"}, {up_to: null, unit_price: "0.90"}]}
        subscriptions:
          - {id: pool, customer: hq, start: 2026-01-01, cadence: monthly, billing_day: 1,
             items: [{price: tiered, timing: in_arrears, pool: breakdown}]}
        """
    )
    ingest_csv(
        """
        event_id,customer,metric,timestamp,quantity
        a-1,a,units,2026-01-03T10:00:00Z,900
        b-1,b,units,2026-01-09T12:00:00Z,500
        """
    )
    got = preview("pool", "2026-02-01")
    # m3ter: block 1400 = 1000 x 1.00 + 400 x 0.90 = 1360.00, split 900:500 ->
    # 874.285... and 485.714...; floored 874.28 + 485.71 = 1359.99, the cent to A.
    assert sorted((x["serviced_customer"], x["quantity"], x["amount"]) for x in got["lines"]) == [
        ("a", "900", "874.29"),
        ("b", "500", "485.71"),
        ("hq", "0", "0.00"),
    ]


def test_preview_of_an_unknown_subscription_is_refused(store):
    import_yaml(LIFECYCLE)
    result = CliRunner().invoke(
        app, ["subscriptions", "preview", "nope", "--through", "2026-01-01"]
    )
    assert result.exit_code == 1 and "no subscription 'nope'" in result.stderr


def test_child_pool_shares_on_different_dates_split_one_block(store):
    import_yaml(
        """
        customers:
          - {id: hq, name: HQ, currency: USD}
          - {id: a, name: A, currency: USD, parent: hq}
          - {id: b, name: B, currency: USD, parent: hq, billing_day: 20}
        metrics: [{code: units, name: Units, aggregation: sum, field: quantity}]
        prices:
          - {code: tiered, product: Units, currency: USD, model: graduated, metric: units,
             tiers: [{up_to: 1000, unit_price: "1.00"}, {up_to: null, unit_price: "0.90"}]}
        subscriptions:
          - {id: pool, customer: hq, start: 2026-01-01, cadence: monthly, billing_day: 1,
             items: [{price: tiered, timing: in_arrears, pool: child}]}
        """
    )
    ingest_csv(
        """
        event_id,customer,metric,timestamp,quantity
        a-1,a,units,2026-01-03T10:00:00Z,900
        b-1,b,units,2026-01-09T12:00:00Z,500
        """
    )
    # January's pool item is billed 1 February. A's share lands then; B's share is due
    # then too but waits for B's own billing day, the 20th.
    close("2026-02-01", issue=True)
    # m3ter: block 1400 units = 1000 x 1.00 + 400 x 0.90 = 1360.00, split 900:500.
    assert one(billed_customer="a")["total"] == "874.29"
    assert [i for i in invoices() if i["billed_customer"] == "b"] == []
    close("2026-02-20")
    b = one(billed_customer="b")
    assert (b["billing_date"], b["total"]) == ("2026-02-20", "485.71")  # 1360.00 - 874.29
