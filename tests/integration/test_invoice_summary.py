"""A roll-up invoice with more than one serviced customer opens with a summary by customer
(SPEC §7.1): a row per serviced customer in section order, with its subtotal, tax,
credits and total, adding up to the invoice's totals."""

from __future__ import annotations

import html
import re
from decimal import Decimal
from pathlib import Path

from billing_core.invoices.contexts import contexts
from billing_core.invoices.documents import write_document
from billing_core.invoices.lifecycle import list_invoices
from billing_core.store.engine import unit_of_work
from tests.helpers import close, import_yaml, one

# Three serviced customers on the parent's invoice (its own first, then by name), one more
# customer on its own; a discount on one child, tax on all, a credit on another.
CATALOG = """
tax_rates: [{jurisdiction: US-NY, rate: "0.10"}]
customers:
  - {id: zeta, name: Zeta Holdings, currency: USD, jurisdiction: US-NY}
  - {id: zeta-west, name: West Branch, currency: USD, parent: zeta}
  - {id: zeta-east, name: East Branch, currency: USD, parent: zeta}
  - {id: solo, name: Solo Inc, currency: USD, jurisdiction: US-NY}
prices:
  - {code: hq, product: Head office, currency: USD, model: flat, amount: "1000.00"}
  - {code: branch, product: Branch plan, currency: USD, model: flat, amount: "300.00"}
subscriptions:
  - {id: s-zeta, customer: zeta, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: hq, timing: in_arrears}]}
  - {id: s-west, customer: zeta-west, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: branch, timing: in_arrears}],
     discounts: [{type: fixed, amount: "50.00"}]}
  - {id: s-east, customer: zeta-east, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: branch, timing: in_arrears}]}
  - {id: s-solo, customer: solo, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: hq, timing: in_arrears}]}
credits:
  - {id: east-welcome, customer: zeta-east, amount: "40.00", currency: USD,
     effective: 2026-01-01}
"""


def context_of(invoice_id: int) -> dict:
    with unit_of_work() as session:
        (invoice,) = [i for i in list_invoices(session) if i.id == invoice_id]
        return contexts(session, [invoice])[invoice_id]


def amount(text: str) -> Decimal:
    return Decimal(text.replace("$", "").replace(",", ""))


def test_the_summary_adds_up_to_the_invoice_in_section_order(store, tmp_path):
    import_yaml(CATALOG)
    close("2026-02-01")
    exported = one(billed_customer="zeta")
    data = context_of(exported["id"])
    summary = data["summary"]
    assert summary["columns"] == ["Subtotal", "Discounts", "Tax", "Credits", "Total"]
    assert [r["customer_id"] for r in summary["rows"]] == [
        s["customer_id"] for s in data["sections"]
    ]
    assert [r["name"] for r in summary["rows"]] == ["Zeta Holdings", "East Branch", "West Branch"]
    rows = {r["customer_id"]: [amount(a) for a in r["amounts"]] for r in summary["rows"]}
    # Each customer's: subtotal, discounts, tax (10% per line), credits, total.
    assert rows == {
        "zeta": [1000, 0, 100, 0, 1100],
        "zeta-east": [300, 0, 30, -40, 290],
        "zeta-west": [300, -50, 25, 0, 275],
    }
    for values in rows.values():
        assert sum(values[:-1]) == values[-1]
    # The columns add up to the invoice's totals, shown under the rows.
    keys = ["subtotal", "discount_total", "tax_total", "credit_total", "total"]
    invoice_totals = [Decimal(exported[k]) for k in keys]
    assert [sum(column) for column in zip(*rows.values(), strict=True)] == invoice_totals
    assert [amount(a) for a in summary["totals"]] == invoice_totals == [1600, -50, 155, -40, 1665]
    # Each row's total is its section's.
    assert [r["amounts"][-1] for r in summary["rows"]] == [s["total"] for s in data["sections"]]

    # On the document: after "Billed to", before the lines.
    path = tmp_path / "zeta.html"
    with unit_of_work() as session:
        write_document(session, exported["id"], path, "billing")
    text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", Path(path).read_text())))
    start = text.index("Summary by customer")
    assert text.index("Billed to") < start < text.index("Service period")
    assert (
        "Subtotal Discounts Tax Credits Total "
        "Zeta Holdings zeta $1,000.00 $0.00 $100.00 $0.00 $1,100.00 "
        "East Branch zeta-east $300.00 $0.00 $30.00 -$40.00 $290.00 "
        "West Branch zeta-west $300.00 -$50.00 $25.00 $0.00 $275.00 "
        "Invoice total (USD) $1,600.00 -$50.00 $155.00 -$40.00 $1,665.00"
    ) in text


def test_an_invoice_with_one_serviced_customer_has_no_summary(store, tmp_path):
    import_yaml(CATALOG)
    close("2026-02-01")
    solo = one(billed_customer="solo")
    assert context_of(solo["id"])["summary"] is None
    path = tmp_path / "solo.html"
    with unit_of_work() as session:
        write_document(session, solo["id"], path, "billing")
    assert "Summary by customer" not in path.read_text()


def test_without_discounts_the_summary_has_no_discount_column(store):
    import_yaml(CATALOG.replace('discounts: [{type: fixed, amount: "50.00"}]', "discounts: []"))
    close("2026-02-01")
    summary = context_of(one(billed_customer="zeta")["id"])["summary"]
    assert summary["columns"] == ["Subtotal", "Tax", "Credits", "Total"]
