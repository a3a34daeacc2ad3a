"""Tax: a rate per jurisdiction, one tax line per taxed line, each rounded once."""

from __future__ import annotations

from decimal import Decimal

from billing_core.domain.money import round_money

TAXED_KINDS = ("fixed", "usage", "minimum", "adjustment", "discount")


def jurisdiction_for(line: dict, billed, customers: dict) -> str | None:
    """The billed customer's jurisdiction, or the serviced customer's with
    `tax_basis: serviced` (each rolled-up line taxed where it is consumed)."""
    if billed.tax_basis == "serviced":
        serviced = customers.get(line["serviced_customer_id"])
        return serviced.jurisdiction if serviced else None
    return billed.jurisdiction


def tax_line(
    line: dict, jurisdiction: str | None, rates: dict[str, Decimal], currency: str
) -> dict | None:
    """The tax on one line (discounts taxed as negative amounts), or None without a rate."""
    if line["kind"] not in TAXED_KINDS or jurisdiction is None:
        return None
    rate = rates.get(jurisdiction)
    if not rate:
        return None
    amount = round_money(line["amount"] * rate, currency)
    if amount == 0:
        return None
    percent = f"{(rate * 100).normalize():f}%"
    return {
        "serviced_customer_id": line["serviced_customer_id"],
        "subscription_id": line["subscription_id"],
        "price_code": line["price_code"],
        "product": f"Tax {jurisdiction} {percent}",
        "bundle": line["bundle"],
        "kind": "tax",
        "description": f"{percent} on {line['product']}",
        "period_start": line["period_start"],
        "period_end": line["period_end"],
        "quantity": None,
        "unit_price": None,
        "amount": amount,
        "charge_id": None,
        "grant_id": None,
        "tax_rate": rate,
        "jurisdiction": jurisdiction,
        "taxed_position": line["position"],
    }
