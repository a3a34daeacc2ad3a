"""Credit lines on a document (SPEC §7.1): the grant's name (else its id) and the balance
left after the invoice, frozen with an issued invoice; a draft shows the ledger's now."""

from __future__ import annotations

import html
import json
import re
from datetime import date
from pathlib import Path
from types import SimpleNamespace

from billing_core.invoices.contexts import contexts
from billing_core.invoices.documents import write_document
from billing_core.invoices.ledger import balances_after
from billing_core.invoices.lifecycle import issue, list_invoices, transition
from billing_core.store.engine import unit_of_work
from tests.helpers import close, import_yaml, invoices, lines, one

# 200.00 a month in advance against a grant of 300.00: January takes 200.00 (100.00
# left), February the last 100.00 (0.00 left), March nothing.
CATALOG = """
customers:
  - {id: brightside, name: Brightside Ltd, currency: USD}
prices:
  - {code: fee, product: Platform, currency: USD, model: flat, amount: "200.00"}
subscriptions:
  - {id: sub-brightside, customer: brightside, start: 2026-01-01, cadence: monthly,
     billing_day: 1, items: [{price: fee, timing: in_advance}]}
credits:
  - {id: brightside-prepaid, name: Prepaid credit, customer: brightside,
     subscription: sub-brightside, amount: "300.00", currency: USD, effective: 2026-01-01}
"""


def text_of(invoice_id: int, path: Path) -> str:
    """A document written now for the invoice, as text."""
    with unit_of_work() as session:
        write_document(session, invoice_id, path, "billing")
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", path.read_text())))


def credit_rows(invoice_id: int) -> list[dict]:
    with unit_of_work() as session:
        (invoice,) = [i for i in list_invoices(session) if i.id == invoice_id]
        data = contexts(session, [invoice])[invoice_id]
    return [credit for section in data["sections"] for credit in section["credits"]]


def test_each_invoice_shows_the_balance_left_after_it_frozen_at_issue(store, tmp_path):
    import_yaml(CATALOG)
    close("2026-02-01")
    jan = one(billing_date="2026-01-01")
    feb = one(billing_date="2026-02-01")
    assert [x["amount"] for x in lines(jan, kind="credit")] == ["-200.00"]
    assert [x["amount"] for x in lines(feb, kind="credit")] == ["-100.00"]
    # The stored lines and the export are as before: the id, not the name.
    assert lines(jan, kind="credit")[0]["product"] == "Credit brightside-prepaid"

    # Drafts: the name, and each its own balance after it (the later one's use does not
    # lower the earlier one's).
    assert [c["label"] for c in credit_rows(jan["id"])] == [
        "Prepaid credit · balance left after this invoice $100.00"
    ]
    assert [c["label"] for c in credit_rows(feb["id"])] == [
        "Prepaid credit · balance left after this invoice $0.00"
    ]

    with unit_of_work() as session:
        issue(session, ids=[jan["id"]])
        session.commit()
    frozen = store.scalar("SELECT identity FROM invoices WHERE id = :i", i=jan["id"])
    frozen = json.loads(frozen) if isinstance(frozen, str) else frozen
    assert frozen["credits"] == {
        "brightside-prepaid": {"name": "Prepaid credit", "balance_after": "100.00"}
    }
    first = text_of(jan["id"], tmp_path / "jan-at-issue.html")
    assert "Prepaid credit · balance left after this invoice $100.00 -$200.00" in first
    assert "sub-brightside" not in first  # no internal subscription id on the document

    # The catalog changes (a top-up, a new name) and February is issued: January's
    # documents still show what January left; the drafts show the catalog's now.
    import_yaml(
        CATALOG.replace('amount: "300.00"', 'amount: "500.00"').replace(
            "name: Prepaid credit", "name: Prepaid balance"
        ),
        name="topped-up.yaml",
    )
    close("2026-03-01")
    mar = one(billing_date="2026-03-01")
    with unit_of_work() as session:
        issue(session, ids=[feb["id"]])
        session.commit()
    again = text_of(jan["id"], tmp_path / "jan-later.html")
    assert "Prepaid credit · balance left after this invoice $100.00 -$200.00" in again
    assert "Prepaid balance" not in again
    # The close after the top-up refreshed February's draft (200.00 now, 500 - 200 - 200 =
    # 100.00 left), issued after it; March (a draft) takes the last 100.00.
    assert [x["amount"] for x in lines(one(id=feb["id"]), kind="credit")] == ["-200.00"]
    assert "Prepaid balance · balance left after this invoice $100.00 -$200.00" in text_of(
        feb["id"], tmp_path / "feb.html"
    )
    assert [x["amount"] for x in lines(mar, kind="credit")] == ["-100.00"]
    assert [c["label"] for c in credit_rows(mar["id"])] == [
        "Prepaid balance · balance left after this invoice $0.00"
    ]


def test_a_grant_without_a_name_is_named_by_its_id(store, tmp_path):
    import_yaml(CATALOG.replace("name: Prepaid credit, ", ""))
    close("2026-01-01", issue=True)
    (jan,) = invoices()
    shown = text_of(jan["id"], tmp_path / "jan.html")
    assert "Credit brightside-prepaid · balance left after this invoice $100.00" in shown


def test_the_balance_after_counts_earlier_and_voided_invoices_only(store):
    """After an invoice: the grant's amount and the ledger of every invoice at or before
    it in the order credits are applied, a voided one's included (voiding gives nothing
    back), a canceled draft's not (its consumption went back)."""
    import_yaml(CATALOG.replace('amount: "300.00"', 'amount: "1000.00"'))
    close("2026-03-01")
    jan, feb, mar = (one(billing_date=f"2026-0{m}-01") for m in (1, 2, 3))
    with unit_of_work() as session:
        issue(session, ids=[jan["id"]])
        transition(session, jan["id"], "void")
        transition(session, mar["id"], "canceled")
        session.commit()
    with unit_of_work() as session:
        found = {i.id: i for i in list_invoices(session)}
        used = {i: {"brightside-prepaid"} for i in found}
        after = balances_after(session, found.values(), used)
        # An invoice billed before any use sees the whole grant.
        before = SimpleNamespace(id=0, billing_date=date(2025, 12, 1), billed_customer_id="a")
        assert balances_after(session, [before], {0: {"brightside-prepaid"}}) == {
            0: {"brightside-prepaid": 1000}
        }
    assert {i: a["brightside-prepaid"] for i, a in after.items()} == {
        jan["id"]: 800,  # voided: its 200.00 stays used
        feb["id"]: 600,
        mar["id"]: 600,  # canceled: gave its 200.00 back
    }
