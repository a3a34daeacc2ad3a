"""Roll-up lines without a store: sections, order, summary merges, who pays."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from billing_core.domain.hierarchy import Hierarchy, Node
from billing_core.domain.lines import build_lines, totals
from billing_core.domain.model import CustomerInfo

D = Decimal


def customer(cid, name, parent=None, **kw) -> CustomerInfo:
    return CustomerInfo(
        cid,
        name,
        "USD",
        "UTC",
        parent,
        kw.get("bill_to", "parent" if parent else "self"),
        None,
        kw.get("jurisdiction"),
        kw.get("tax_basis", "billed"),
        kw.get("rollup_lines", "breakdown"),
        "hq",
    )


CUSTOMERS = {
    c.id: c
    for c in (
        customer("hq", "Zeta Holdings"),  # the billed customer sorts first despite its name
        customer("b", "Bravo Ltd", "hq"),
        customer("a", "Alpha Ltd", "hq"),
    )
}

_ids = iter(range(1, 10_000))


def charge(serviced, price, amount, kind="fixed", bundle=None, product=None, **kw) -> dict:
    return {
        "id": next(_ids),
        "serviced_customer_id": serviced,
        "subscription_id": kw.get("subscription", f"sub-{serviced}"),
        "price_code": price,
        "product": product or price.title() if price else product,
        "bundle": bundle,
        "kind": kind,
        "description": kw.get("description"),
        "period_start": kw.get("start", date(2026, 1, 1)),
        "period_end": kw.get("end", date(2026, 2, 1)),
        "quantity": D(kw.get("quantity", "1")),
        "unit_price": D(amount),
        "amount": D(amount),
        "pool": kw.get("pool"),
        "pool_owner_id": kw.get("pool_owner"),
    }


def layout(lines):
    return [(x["serviced_customer_id"], x["kind"], x["product"]) for x in lines]


def test_sections_billed_first_then_by_name_then_bundle_then_product():
    charges = [
        charge("b", "support", "10.00"),
        charge("a", "seats", "5.00"),
        charge("hq", "storage", "1.00"),
        charge("hq", "platform", "2.00", bundle="Core"),
        charge("hq", "api", "3.00", bundle="Core"),
        charge("hq", "analytics", "4.00", bundle="Add-ons"),
        charge(
            "hq", None, "-1.00", kind="discount", product="Discount 1.00", description="Discount"
        ),
        charge("hq", "api", "0.50", kind="adjustment", bundle="Core"),
        charge("hq", "api", "-0.30", kind="discount", product="10% discount on Api"),
    ]
    lines = build_lines(charges, CUSTOMERS["hq"], CUSTOMERS, {}, "USD")
    assert layout(lines) == [
        # bundles alphabetically, unbundled products after them, then per product its
        # charge, late adjustment and discount; a subscription-wide discount closes it
        ("hq", "fixed", "Analytics"),
        ("hq", "fixed", "Api"),
        ("hq", "adjustment", "Api"),
        ("hq", "discount", "10% discount on Api"),
        ("hq", "fixed", "Platform"),
        ("hq", "fixed", "Storage"),
        ("hq", "discount", "Discount 1.00"),
        ("a", "fixed", "Seats"),  # Alpha Ltd before Bravo Ltd
        ("b", "fixed", "Support"),
    ]
    assert [x["position"] for x in lines] == list(range(1, 10))


def test_zero_lines_are_left_off():
    charges = [
        charge("a", "seats", "0", kind="usage", quantity="0"),
        charge("a", "platform", "5.00"),
    ]
    lines = build_lines(charges, CUSTOMERS["hq"], CUSTOMERS, {}, "USD")
    assert layout(lines) == [("a", "fixed", "Platform")]


def test_rollup_lines_summary_merges_one_price_across_customers():
    billed = customer("hq", "Zeta Holdings", rollup_lines="summary")
    customers = {**CUSTOMERS, "hq": billed}
    charges = [
        charge("a", "seats", "30.00", kind="usage", quantity="3", subscription="sub-a"),
        charge("b", "seats", "50.00", kind="usage", quantity="5", subscription="sub-b"),
        charge("b", "seats", "20.00", kind="usage", quantity="2", start=date(2026, 2, 1)),
        charge("hq", "platform", "100.00"),
    ]
    lines = build_lines(charges, billed, customers, {}, "USD", with_parts=True)
    seats = [x for x in lines if x["price_code"] == "seats"]
    # January: a 3 + b 5 = 8 seats for 30.00 + 50.00 = 80.00 on the billed customer;
    # February is another period, so another line.
    assert [(x["serviced_customer_id"], x["quantity"], x["amount"]) for x in seats] == [
        ("hq", D(8), D("80.00")),
        ("hq", D(2), D("20.00")),
    ]
    assert seats[0]["subscription_id"] is None  # two subscriptions merged
    assert seats[0]["unit_price"] == D("10")  # 80.00 / 8
    # The parts still say whose the merged amounts are.
    assert seats[0]["_parts"] == [("a", "sub-a", D("30.00")), ("b", "sub-b", D("50.00"))]
    assert {x["serviced_customer_id"] for x in lines} == {"hq"}


def test_summary_keeps_tax_jurisdictions_apart_with_tax_basis_serviced():
    billed = customer(
        "hq", "Zeta Holdings", jurisdiction="US-NY", rollup_lines="summary", tax_basis="serviced"
    )
    customers = {
        "hq": billed,
        "a": customer("a", "Alpha Ltd", "hq", jurisdiction="US-CA"),
        "b": customer("b", "Bravo Ltd", "hq", jurisdiction="US-CA"),
        "c": customer("c", "Charlie Ltd", "hq", jurisdiction="DE"),
    }
    rates = {"US-CA": D("0.10"), "DE": D("0.20"), "US-NY": D("0.05")}
    charges = [charge(x, "seats", "10.00", kind="usage") for x in ("a", "b", "c")]
    lines = build_lines(charges, billed, customers, rates, "USD")
    usage = [x["amount"] for x in lines if x["kind"] == "usage"]
    tax = [(x["jurisdiction"], x["amount"]) for x in lines if x["kind"] == "tax"]
    # a and b (US-CA) merge into 20.00 taxed 10% = 2.00; c (DE) stays apart, 20% = 2.00.
    assert sorted(usage) == [D("10.00"), D("20.00")]
    assert sorted(tax) == [("DE", D("2.00")), ("US-CA", D("2.00"))]


def test_summary_pool_is_one_line_on_the_pool_owner():
    charges = [
        charge("a", "units", "874.29", kind="usage", quantity="900", pool="summary",
               pool_owner="hq", subscription="sub-hq"),
        charge("b", "units", "485.71", kind="usage", quantity="500", pool="summary",
               pool_owner="hq", subscription="sub-hq"),
    ]  # fmt: skip
    lines = build_lines(charges, CUSTOMERS["hq"], CUSTOMERS, {}, "USD")
    assert [(x["serviced_customer_id"], x["quantity"], x["amount"]) for x in lines] == [
        ("hq", D(1400), D("1360.00"))  # m3ter: 1000 x 1.00 + 400 x 0.90
    ]


def test_totals_sum_by_kind():
    lines = [
        {"kind": "fixed", "amount": D("100.00")},
        {"kind": "usage", "amount": D("50.00")},
        {"kind": "discount", "amount": D("-15.00")},
        {"kind": "tax", "amount": D("13.50")},
        {"kind": "credit", "amount": D("-20.00")},
    ]
    # 150.00 - 15.00 + 13.50 - 20.00 = 128.50
    assert totals(lines) == {
        "subtotal": D("150.00"),
        "discount_total": D("-15.00"),
        "tax_total": D("13.50"),
        "credit_total": D("-20.00"),
        "total": D("128.50"),
    }


def tree(*nodes):
    return Hierarchy(Node(*n, "USD") for n in nodes)


def test_billed_customer_through_any_depth():
    h = tree(
        ("root", None, "self"),
        ("region", "root", "parent"),
        ("country", "region", "parent"),
        ("office", "country", "parent"),
    )
    # office -> country -> region -> root: every customer on the way bills to its parent.
    assert h.billed_customer("office", rollup=True) == "root"
    assert h.billed_customer("office", rollup=False) == "office"
    assert h.default_rollup("office") is True
    assert h.billed_customer("root", rollup=True) == "root"  # no parent: bills itself


def test_a_self_paying_customer_stops_the_climb():
    h = tree(
        ("root", None, "self"),
        ("division", "root", "self"),
        ("team", "division", "parent"),
    )
    # team rolls up to division; division pays for itself, so the climb stops there.
    assert h.billed_customer("team", rollup=True) == "division"
    # A subscription of the self-paying division can still roll up explicitly.
    assert h.default_rollup("division") is False
    assert h.billed_customer("division", rollup=True) == "root"
