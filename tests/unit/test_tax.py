"""Tax per line: the rate of a jurisdiction, rounded once per line, half up."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from billing_core.domain.lines import build_lines
from billing_core.domain.model import CustomerInfo
from billing_core.domain.tax import jurisdiction_for, tax_line

D = Decimal


def customer(cid, parent=None, jurisdiction=None, tax_basis="billed", currency="USD"):
    return CustomerInfo(
        cid, cid.title(), currency, "UTC", parent, "parent" if parent else "self", None,
        jurisdiction, tax_basis, "breakdown", "hq",
    )  # fmt: skip


def line(amount, kind="fixed", serviced="hq", position=1):
    return {
        "serviced_customer_id": serviced,
        "subscription_id": "sub",
        "price_code": "p",
        "product": "Platform",
        "bundle": None,
        "kind": kind,
        "period_start": date(2026, 1, 1),
        "period_end": date(2026, 2, 1),
        "amount": D(amount),
        "position": position,
    }


def test_each_line_is_rounded_half_up_on_its_own():
    rates = {"X": D("0.10")}
    # 0.05 x 10% = 0.005 -> 0.01 (half up), on each line: two lines carry 0.02 of tax,
    # where one tax on their 0.10 sum would be 0.01.
    assert tax_line(line("0.05"), "X", rates, "USD")["amount"] == D("0.01")
    # 0.04 x 10% = 0.004 -> 0.00: a tax that rounds to nothing is left off.
    assert tax_line(line("0.04"), "X", rates, "USD") is None


def test_discounts_are_taxed_as_negative_amounts_rounded_away_from_zero():
    rates = {"X": D("0.0725")}
    # -157.50 x 7.25% = -11.41875 -> -11.42
    tax = tax_line(line("-157.50", kind="discount"), "X", rates, "USD")
    assert tax["amount"] == D("-11.42")
    assert tax["kind"] == "tax" and tax["taxed_position"] == 1
    # -0.10 x 5% = -0.005 -> -0.01 (ties away from zero)
    assert tax_line(line("-0.10", kind="discount"), "X", {"X": D("0.05")}, "USD")["amount"] == D(
        "-0.01"
    )


def test_rounding_follows_the_currency_minor_units():
    rates = {"JP": D("0.10")}
    # 12,345 JPY x 10% = 1,234.5 -> 1,235 (JPY has no minor units)
    assert tax_line(line("12345"), "JP", rates, "JPY")["amount"] == D("1235")
    # 10.005 KWD... 1.234 x 10% = 0.1234 -> 0.123 (KWD has three)
    assert tax_line(line("1.234"), "JP", rates, "KWD")["amount"] == D("0.123")


def test_no_jurisdiction_or_no_rate_means_no_tax():
    assert tax_line(line("100.00"), None, {"X": D("0.1")}, "USD") is None
    assert tax_line(line("100.00"), "Y", {"X": D("0.1")}, "USD") is None
    # credit lines and tax lines are never taxed
    assert tax_line(line("-5.00", kind="credit"), "X", {"X": D("0.1")}, "USD") is None


def test_basis_billed_or_serviced():
    customers = {
        "hq": customer("hq", jurisdiction="US-NY"),
        "eu": customer("eu", "hq", jurisdiction="DE"),
        "nowhere": customer("nowhere", "hq"),
    }
    billed = customers["hq"]
    assert jurisdiction_for(line("1", serviced="eu"), billed, customers) == "US-NY"
    by_destination = customer("hq", jurisdiction="US-NY", tax_basis="serviced")
    assert jurisdiction_for(line("1", serviced="eu"), by_destination, customers) == "DE"
    assert jurisdiction_for(line("1", serviced="nowhere"), by_destination, customers) is None


def test_invoice_lines_each_get_their_tax_line():
    customers = {
        "hq": customer("hq", jurisdiction="US-NY", tax_basis="serviced"),
        "eu": customer("eu", "hq", jurisdiction="DE"),
    }
    rates = {"US-NY": D("0.08875"), "DE": D("0.19")}
    charges = [
        {**line("5000.00"), "id": 1, "description": None, "quantity": D(1),
         "unit_price": D("5000.00"), "pool": None, "pool_owner_id": None},
        {**line("8500.00", serviced="eu"), "id": 2, "description": None, "quantity": D(1),
         "unit_price": D("8500.00"), "pool": None, "pool_owner_id": None},
        {**line("-850.00", kind="discount", serviced="eu"), "id": 3, "description": None,
         "quantity": D(1), "unit_price": D("-850.00"), "pool": None, "pool_owner_id": None},
    ]  # fmt: skip
    lines = build_lines(charges, customers["hq"], customers, rates, "USD")
    taxes = [(x["serviced_customer_id"], x["jurisdiction"], x["amount"]) for x in lines
             if x["kind"] == "tax"]  # fmt: skip
    # 5000.00 x 8.875% = 443.75 at the billed customer's own rate; the child's lines at
    # its own: 8500.00 x 19% = 1615.00 and -850.00 x 19% = -161.50.
    assert taxes == [
        ("hq", "US-NY", D("443.75")),
        ("eu", "DE", D("1615.00")),
        ("eu", "DE", D("-161.50")),
    ]
    # each tax line points at the line it taxes
    by_position = {x["position"]: x for x in lines}
    assert [by_position[x["taxed_position"]]["amount"] for x in lines if x["kind"] == "tax"] == [
        D("5000.00"), D("8500.00"), D("-850.00"),
    ]  # fmt: skip
