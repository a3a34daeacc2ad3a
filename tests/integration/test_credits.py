"""Credits on each store: scope and order on a roll-up invoice, effective and expiry dates,
the ledger, rollback on rebuild and cancel, none on void, and `billing credits list`."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from typer.testing import CliRunner

from billing_core.cli.app import app
from billing_core.invoices.ledger import credit_overview, ledger
from billing_core.invoices.lifecycle import transition
from billing_core.steps import close as steps
from billing_core.store.engine import unit_of_work
from tests.helpers import close, import_yaml, ingest_csv, invoices, lines, one

FAMILY = """
customers:
  - {id: hq, name: HQ, currency: USD}
  - {id: branch, name: Branch, currency: USD, parent: hq}
prices:
  - {code: hq-fee, product: HQ fee, currency: USD, model: flat, amount: "100.00"}
  - {code: seats, product: Seats, currency: USD, model: flat, amount: "200.00"}
  - {code: addon, product: Add-on, currency: USD, model: flat, amount: "50.00"}
subscriptions:
  - {id: s-hq, customer: hq, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: hq-fee, timing: in_arrears}]}
  - {id: s-seats, customer: branch, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: seats, timing: in_arrears}]}
  - {id: s-addon, customer: branch, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: addon, timing: in_arrears}]}
credits:
  # The billed customer's two grants: same priority, so the one expiring first goes first.
  - {id: hq-later, customer: hq, amount: "1000.00", currency: USD, effective: 2026-01-01,
     priority: 1}
  - {id: hq-sooner, customer: hq, amount: "40.00", currency: USD, effective: 2026-01-01,
     expires: 2026-12-31, priority: 1}
  - {id: branch-own, customer: branch, amount: "30.00", currency: USD, effective: 2026-01-01,
     priority: 50}
  - {id: addon-only, customer: branch, subscription: s-addon, amount: "500.00", currency: USD,
     effective: 2026-01-01, priority: 200}
"""


def balances() -> dict[str, Decimal]:
    with unit_of_work() as session:
        return {g["id"]: g["balance"] for g in credit_overview(session)}


def test_narrowest_scope_first_then_order_within_the_scope(store):
    import_yaml(FAMILY)
    close("2026-02-01")
    invoice = one(billed_customer="hq", billing_date="2026-02-01")
    credits = [
        (x["serviced_customer"], x["grant"], x["amount"]) for x in lines(invoice, kind="credit")
    ]
    # Charges 100.00 + 200.00 + 50.00 = 350.00, no tax.
    # 1. addon-only (subscription scope, despite priority 200): s-addon's 50.00.
    # 2. branch-own: the branch's remaining 200.00 -> its whole 30.00.
    # 3. the billed customer's grants on what is left, 350.00 - 80.00 = 270.00:
    #    hq-sooner (expires first) 40.00, then hq-later 230.00. Total 0.00, never below.
    assert sorted(credits) == [
        ("branch", "addon-only", "-50.00"),
        ("branch", "branch-own", "-30.00"),
        ("hq", "hq-later", "-230.00"),
        ("hq", "hq-sooner", "-40.00"),
    ]
    assert (invoice["credit_total"], invoice["total"]) == ("-350.00", "0.00")
    assert balances() == {
        "addon-only": Decimal("450.00"),
        "branch-own": Decimal("0.00"),
        "hq-later": Decimal("770.00"),
        "hq-sooner": Decimal("0.00"),
    }
    with unit_of_work() as session:
        entries = ledger(session)
    assert {(e["grant"], e["kind"], e["amount"], e["invoice_id"]) for e in entries} == {
        ("addon-only", "consumption", Decimal("-50.00"), invoice["id"]),
        ("branch-own", "consumption", Decimal("-30.00"), invoice["id"]),
        ("hq-later", "consumption", Decimal("-230.00"), invoice["id"]),
        ("hq-sooner", "consumption", Decimal("-40.00"), invoice["id"]),
    }


def test_a_grant_is_usable_from_effective_through_expires(store):
    import_yaml(
        """
    customers:
      - {id: solo, name: Solo, currency: USD}
    prices:
      - {code: fee, product: Fee, currency: USD, model: flat, amount: "100.00"}
    subscriptions:
      - {id: s, customer: solo, start: 2026-01-01, cadence: monthly, billing_day: 1,
         items: [{price: fee, timing: in_advance}]}
    credits:
      - {id: january-only, customer: solo, amount: "500.00", currency: USD,
         effective: 2026-01-01, expires: 2026-01-31}
      - {id: from-march, customer: solo, amount: "500.00", currency: USD,
         effective: 2026-03-01}
    """
    )
    close("2026-03-01")
    used = {i["billing_date"]: [x["grant"] for x in lines(i, kind="credit")] for i in invoices()}
    assert used == {
        "2026-01-01": ["january-only"],  # effective on its first day
        "2026-02-01": [],  # january-only expired on 31 Jan; from-march not yet effective
        "2026-03-01": ["from-march"],  # effective on its first day
    }
    assert balances() == {"january-only": Decimal("400.00"), "from-march": Decimal("400.00")}


METERED = """
customers:
  - {id: solo, name: Solo, currency: USD}
metrics:
  - {code: units, name: Units, aggregation: sum, field: quantity}
prices:
  - {code: units, product: Units, currency: USD, model: per_unit, metric: units, unit_price: "2.00"}
subscriptions:
  - {id: s, customer: solo, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: units, timing: in_arrears}]}
credits:
  - {id: prepaid, customer: solo, amount: "100.00", currency: USD, effective: 2026-01-01}
"""


def test_rebuilding_a_draft_rolls_its_credits_back_first(store):
    import_yaml(METERED)
    ingest_csv(
        "event_id,customer,metric,timestamp,quantity\ne1,solo,units,2026-01-10T00:00:00Z,20\n"
    )
    close("2026-02-01")
    assert one()["credit_total"] == "-40.00"  # 20 x 2.00
    close("2026-02-01")  # the same lines: the draft and its credits are left alone
    with unit_of_work() as session:
        assert len(ledger(session)) == 1
    ingest_csv(
        "event_id,customer,metric,timestamp,quantity\ne2,solo,units,2026-01-20T00:00:00Z,10\n",
        name="more.csv",
    )
    close("2026-02-01")
    invoice = one()
    assert (invoice["subtotal"], invoice["credit_total"], invoice["total"]) == (
        "60.00",  # 30 x 2.00
        "-60.00",
        "0.00",
    )
    with unit_of_work() as session:
        entries = [(e["kind"], e["amount"], e["balance"]) for e in ledger(session)]
    # The discarded draft's 40.00 comes back before the new draft takes 60.00.
    assert entries == [
        ("consumption", Decimal("-40.00"), Decimal("60.00")),
        ("rollback", Decimal("40.00"), Decimal("100.00")),
        ("consumption", Decimal("-60.00"), Decimal("40.00")),
    ]
    assert balances() == {"prepaid": Decimal("40.00")}


def test_cancel_gives_credits_back_void_does_not(store):
    import_yaml(METERED)
    ingest_csv(
        "event_id,customer,metric,timestamp,quantity\n"
        "e1,solo,units,2026-01-10T00:00:00Z,20\n"
        "e2,solo,units,2026-02-10T00:00:00Z,15\n"
    )
    close("2026-02-01", issue=True)  # January's 40.00 taken, issued
    close("2026-03-01")  # February's draft: 30.00 taken
    assert balances() == {"prepaid": Decimal("30.00")}  # 100.00 - 40.00 - 30.00
    issued = one(status="issued")
    draft = one(status="draft")
    with unit_of_work() as session:
        transition(session, issued["id"], "void")
        session.commit()
    assert balances() == {"prepaid": Decimal("30.00")}  # voiding gives nothing back
    with unit_of_work() as session:
        transition(session, draft["id"], "canceled")
        session.commit()
    assert balances() == {"prepaid": Decimal("60.00")}  # the canceled draft's 30.00 back
    with unit_of_work() as session:
        kinds = [(e["kind"], e["amount"], e["invoice_id"]) for e in ledger(session)]
    assert kinds == [
        ("consumption", Decimal("-40.00"), issued["id"]),
        ("consumption", Decimal("-30.00"), draft["id"]),
        ("rollback", Decimal("30.00"), draft["id"]),
    ]
    steps.apply_credits(date(2026, 3, 1))
    assert balances() == {"prepaid": Decimal("60.00")}  # a canceled draft takes nothing again


def test_credits_list_shows_grants_consumption_and_balance(store):
    import_yaml(FAMILY)
    close("2026-02-01", issue=True)
    runner = CliRunner()
    done = runner.invoke(app, ["credits", "list"])
    assert done.exit_code == 0, done.output
    rows = {line.split("│")[1].strip(): line for line in done.output.splitlines() if "│" in line}
    # granted, consumed and left, as computed in the scope test above
    assert "1000.00" in rows["hq-later"] and "230.00" in rows["hq-later"]
    assert "770.00" in rows["hq-later"]
    assert "sub" not in rows["hq-later"] and "s-addon" in rows["addon-only"]
    assert "2026-12-31" in rows["hq-sooner"] and "never" in rows["hq-later"]
    done = runner.invoke(app, ["credits", "list", "--customer", "branch", "--ledger"])
    assert done.exit_code == 0, done.output
    assert "hq-later" not in done.output
    assert "Credit ledger" in done.output
    number = one(billed_customer="hq")["number"]
    ledger_rows = [x for x in done.output.splitlines() if number in x]
    assert len(ledger_rows) == 2  # addon-only's and branch-own's consumption
    assert any("-50.00" in x and "450.00" in x for x in ledger_rows)
