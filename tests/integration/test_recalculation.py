"""Schedule recalculation after a catalog change (SPEC §3): a new parent, a flipped roll-up
flag or a changed subscription rebuilds the drafts of the child, its old parent and its new
parent, with their credit consumption rolled back; issued invoices never change."""

from __future__ import annotations

import textwrap
from decimal import Decimal

import pytest
from typer.testing import CliRunner

from billing_core.cli.app import app
from tests.helpers import close, import_yaml, invoices, lines, one

FAMILIES = """
customers:
  - {id: east, name: East Holdings, currency: USD}
  - {id: west, name: West Holdings, currency: USD}
  - {id: shop, name: Corner Shop, currency: USD, parent: east}
prices:
  - {code: base, product: Base, currency: USD, model: flat, amount: "1000.00"}
  - {code: shop-fee, product: Shop fee, currency: USD, model: flat, amount: "300.00"}
  - {code: shop-plus, product: Shop plus, currency: USD, model: flat, amount: "600.00"}
subscriptions:
  - {id: sub-east, customer: east, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: base, timing: in_advance}]}
  - {id: sub-west, customer: west, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: base, timing: in_advance}]}
  - {id: sub-shop, customer: shop, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: shop-fee, timing: in_arrears}]}
credits:
  - {id: east-promo, customer: east, amount: "5000.00", currency: USD, effective: 2026-01-01}
"""


def reimport(tmp_path, text: str) -> str:
    """`billing import` of a catalog change, as an operator runs it; returns its output."""
    path = tmp_path / "change.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    result = CliRunner().invoke(app, ["import", str(path)])
    assert result.exit_code == 0, result.stderr + str(result.exception)
    return result.stdout


def issued_and_march_drafts(store):
    """January and February issued, March drafted: the state every test starts from."""
    import_yaml(FAMILIES)
    close("2026-02-01", issue=True)
    close("2026-03-01")
    return invoices("issued")


def balance(store, grant: str) -> Decimal:
    spent = store.scalar(
        "SELECT COALESCE(SUM(amount), 0) FROM credit_ledger WHERE grant_id = :g", g=grant
    )
    granted = store.scalar("SELECT amount FROM credit_grants WHERE id = :g", g=grant)
    return Decimal(str(granted)) + Decimal(str(spent))


def summary(billed: str, day: str) -> tuple:
    invoice = one(billed_customer=billed, billing_date=day)
    return (
        invoice["status"],
        sorted(
            (x["serviced_customer"], x["price"] or x["kind"], x["amount"]) for x in lines(invoice)
        )
        + [("total", invoice["total"])],
    )


def test_starting_point_bills_the_child_on_its_parents_invoices(store):
    issued_and_march_drafts(store)
    # Shop's January fee (in arrears) is due 1 February, on East's invoice, beside East's
    # own February fee (in advance): 1000 + 300, all paid from East's grant.
    assert summary("east", "2026-02-01") == (
        "issued",
        [
            ("east", "base", "1000.00"),
            ("east", "credit", "-1300.00"),
            ("shop", "shop-fee", "300.00"),
            ("total", "0.00"),
        ],
    )
    # Grant: 5000 - 1000 (1 Jan) - 1300 (1 Feb) - 1300 (1 Mar draft) = 1400.
    assert balance(store, "east-promo") == Decimal("1400.00")


def test_a_new_parent_rebuilds_the_old_and_the_new_parents_drafts(store, tmp_path):
    issued = issued_and_march_drafts(store)
    output = reimport(
        tmp_path,
        """
        customers:
          - {id: shop, name: Corner Shop, currency: USD, parent: west}
        """,
    )
    # Both families' 1 March drafts changed: each discarded and rebuilt.
    assert "2 families: 2 discarded, 2 rebuilt" in output
    # East keeps only its own fee, paid by its grant; Shop's February fee moved to West.
    assert summary("east", "2026-03-01") == (
        "draft",
        [("east", "base", "1000.00"), ("east", "credit", "-1000.00"), ("total", "0.00")],
    )
    assert summary("west", "2026-03-01") == (
        "draft",
        [("shop", "shop-fee", "300.00"), ("west", "base", "1000.00"), ("total", "1300.00")],
    )
    # The discarded draft's 1300 came back and 1000 was taken again: 1400 + 1300 - 1000.
    assert balance(store, "east-promo") == Decimal("1700.00")
    rolled_back = store.scalar(
        "SELECT SUM(amount) FROM credit_ledger WHERE kind = 'rollback' AND grant_id = 'east-promo'"
    )
    assert Decimal(str(rolled_back)) == Decimal("1300.00")
    # Shop's January fee stays on East's issued February invoice.
    assert invoices("issued") == issued


def test_a_child_that_starts_paying_for_itself_gets_its_own_draft(store, tmp_path):
    issued = issued_and_march_drafts(store)
    reimport(
        tmp_path,
        """
        customers:
          - {id: shop, name: Corner Shop, currency: USD, parent: east, bill_to: self}
        """,
    )
    assert summary("shop", "2026-03-01") == (
        "draft",
        [("shop", "shop-fee", "300.00"), ("total", "300.00")],
    )
    assert summary("east", "2026-03-01") == (
        "draft",
        [("east", "base", "1000.00"), ("east", "credit", "-1000.00"), ("total", "0.00")],
    )
    assert invoices("issued") == issued


def test_flipping_a_subscriptions_rollup_flag_moves_its_charges(store, tmp_path):
    issued = issued_and_march_drafts(store)
    reimport(
        tmp_path,
        """
        subscriptions:
          - {id: sub-shop, customer: shop, start: 2026-01-01, cadence: monthly, billing_day: 1,
             rollup: false, items: [{price: shop-fee, timing: in_arrears}]}
        """,
    )
    assert summary("shop", "2026-03-01")[1][-1] == ("total", "300.00")
    assert balance(store, "east-promo") == Decimal("1700.00")  # as in the re-parenting
    # And back: the flag set to roll up again returns the charge to East's draft.
    reimport(
        tmp_path,
        """
        subscriptions:
          - {id: sub-shop, customer: shop, start: 2026-01-01, cadence: monthly, billing_day: 1,
             rollup: true, items: [{price: shop-fee, timing: in_arrears}]}
        """,
    )
    assert [i for i in invoices("draft") if i["billed_customer"] == "shop"] == []
    assert summary("east", "2026-03-01")[1][-1] == ("total", "0.00")
    assert balance(store, "east-promo") == Decimal("1400.00")
    assert invoices("issued") == issued


def test_a_phase_added_mid_period_rebuilds_the_draft_prorated(store, tmp_path):
    issued = issued_and_march_drafts(store)
    reimport(
        tmp_path,
        """
        subscriptions:
          - id: sub-shop
            customer: shop
            start: 2026-01-01
            cadence: monthly
            billing_day: 1
            items: [{price: shop-fee, timing: in_arrears}]
            phases:
              - {start: 2026-02-15, items: [{price: shop-plus, timing: in_arrears}]}
        """,
    )
    march = one(billed_customer="east", billing_date="2026-03-01")
    # February (28 days) split on the 15th: 300 x 14/28 = 150.00 for 1-14 February and
    # 600 x 14/28 = 300.00 for 15-28 February, both due 1 March.
    assert sorted(
        (x["price"], x["period_start"], x["period_end"], x["amount"])
        for x in lines(march, serviced_customer="shop")
    ) == [
        ("shop-fee", "2026-02-01", "2026-02-14", "150.00"),
        ("shop-plus", "2026-02-15", "2026-02-28", "300.00"),
    ]
    # January is on an issued invoice: the change does not reach it.
    assert invoices("issued") == issued


def test_a_changed_price_reaches_drafts_but_never_issued_invoices(store, tmp_path):
    issued = issued_and_march_drafts(store)
    reimport(
        tmp_path,
        """
        prices:
          - {code: shop-fee, product: Shop fee, currency: USD, model: flat, amount: "400.00"}
        """,
    )
    march = one(billed_customer="east", billing_date="2026-03-01")
    assert [x["amount"] for x in lines(march, price="shop-fee")] == ["400.00"]
    assert invoices("issued") == issued


def test_a_backdated_schedule_added_after_issuing_bills_past_periods_on_the_next_draft(
    store, tmp_path
):
    issued = issued_and_march_drafts(store)
    reimport(
        tmp_path,
        """
        prices:
          - {code: audit, product: Audit, currency: USD, model: flat, amount: "200.00"}
        subscriptions:
          - {id: sub-audit, customer: east, start: 2026-01-01, cadence: monthly,
             billing_day: 1, items: [{price: audit, timing: in_arrears}]}
        """,
    )
    # January (due 1 February, an issued date) and February (due 1 March) both land on
    # the open 1 March draft; nothing reopens the issued invoice.
    march = one(billed_customer="east", billing_date="2026-03-01")
    assert sorted((x["period_start"], x["amount"]) for x in lines(march, price="audit")) == [
        ("2026-01-01", "200.00"),
        ("2026-02-01", "200.00"),
    ]
    assert invoices("issued") == issued


def test_an_unchanged_reimport_rebuilds_nothing(store, tmp_path):
    issued_and_march_drafts(store)
    drafts = invoices("draft")
    output = reimport(tmp_path, FAMILIES)
    assert "rebuilt" not in output and "discarded" not in output
    assert invoices("draft") == drafts


CALENDAR = """
customers:
  - {id: payer, name: Payer, currency: USD, billing_day: 15}
  - {id: unit, name: Unit, currency: USD, parent: payer}
prices:
  - {code: fee, product: Fee, currency: USD, model: flat, amount: "100.00"}
subscriptions:
  - {id: sub-unit, customer: unit, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: fee, timing: TIMING}]}
"""


def billed_periods() -> dict[str, list[str]]:
    return {
        i["billing_date"]: sorted(x["period_start"] for x in lines(i, kind="fixed"))
        for i in invoices()
    }


@pytest.fixture(params=[900, 1, 0], ids=["keys", "beyond", "looked-up"])
def chunk(request, monkeypatch):
    """The store's chunk size: the later rows a close finds are matched by reading what is
    beyond its date (few rows) or by looking their keys up (many); both must agree."""
    import billing_core.store.rows

    monkeypatch.setattr(billing_core.store.rows, "CHUNK", request.param)


def test_a_timing_change_moves_already_planned_periods_earlier(store, tmp_path, chunk):
    import_yaml(CALENDAR.replace("TIMING", "in_arrears"))
    close("2026-03-01")
    # In arrears: January due 1 Feb, on the payer's 15 February. February's period is
    # planned (due 1 March) and waits for 15 March.
    assert billed_periods() == {"2026-02-15": ["2026-01-01"]}
    output = reimport(tmp_path, CALENDAR.replace("TIMING", "in_advance"))
    # In advance: January due 1 Jan -> 15 Jan, February due 1 Feb -> 15 Feb. February's
    # planned slot is the same slot, now due earlier.
    assert "recalculated drafts through 2026-02-15" in output
    assert billed_periods() == {"2026-01-15": ["2026-01-01"], "2026-02-15": ["2026-02-01"]}


def test_a_close_through_an_earlier_date_after_a_change_updates_charges_in_place(store, chunk):
    import_yaml(CALENDAR.replace("TIMING", "in_arrears"))
    close("2026-04-15")
    assert billed_periods() == {
        "2026-02-15": ["2026-01-01"],
        "2026-03-15": ["2026-02-01"],
        "2026-04-15": ["2026-03-01"],
    }
    import_yaml(CALENDAR.replace("TIMING", "in_advance"))  # no rebuild: the store only
    close("2026-03-15")
    # March's charge, rated for 15 April, now bills on 15 March; the 15 April draft is
    # left as it was until a close reaches it, which then finds nothing left for it.
    got = billed_periods()
    assert {d: got[d] for d in ("2026-01-15", "2026-02-15", "2026-03-15")} == {
        "2026-01-15": ["2026-01-01"],
        "2026-02-15": ["2026-02-01"],
        "2026-03-15": ["2026-03-01"],
    }
    close("2026-04-15")
    assert billed_periods() == {
        "2026-01-15": ["2026-01-01"],
        "2026-02-15": ["2026-02-01"],
        "2026-03-15": ["2026-03-01"],
        "2026-04-15": ["2026-04-01"],
    }
