"""The summary that opens a roll-up invoice with more than one serviced customer (SPEC
§7.1): a row per serviced customer with its subtotal, (discounts,) tax, credits and total,
in section order, adding up to the invoice's totals."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from billing_core.domain.money import ZERO
from billing_core.invoices.formatting import money

# What a section's lines add to each column of a roll-up's summary.
SUMMED = {
    "fixed": "subtotal",
    "usage": "subtotal",
    "minimum": "subtotal",
    "adjustment": "subtotal",
    "discount": "discounts",
    "tax": "tax",
    "credit": "credits",
}
SUMMARY_COLUMNS = {
    "subtotal": "Subtotal",
    "discounts": "Discounts",
    "tax": "Tax",
    "credits": "Credits",
    "total": "Total",
}


def sums(section_lines: list[Any]) -> dict[str, Decimal]:
    """A section's subtotal, discounts, tax, credits and total, unformatted: summed as the
    invoice's totals are (SPEC §8), so the sections add up to them."""
    sums = dict.fromkeys(SUMMARY_COLUMNS, ZERO)
    for line in section_lines:
        sums[SUMMED[line.kind]] += line.amount
        sums["total"] += line.amount
    return sums


def summary(sections: list[dict], invoice: Any, currency: str, locale: str) -> dict | None:
    """What opens a roll-up with more than one serviced customer (SPEC §7.1): a row per
    serviced customer, in section order, with its subtotal, tax, credits and total, and
    the invoice's totals under them. Discounts get a column when the invoice has any, so
    that every row and the totals add up across."""
    if len(sections) < 2:
        return None
    totals = {
        "subtotal": invoice.subtotal,
        "discounts": invoice.discount_total,
        "tax": invoice.tax_total,
        "credits": invoice.credit_total,
        "total": invoice.total,
    }
    shown = [
        key
        for key in SUMMARY_COLUMNS
        if key != "discounts" or totals[key] or any(s["sums"][key] for s in sections)
    ]
    return {
        "columns": [SUMMARY_COLUMNS[key] for key in shown],
        "rows": [
            {
                "customer_id": s["customer_id"],
                "name": s["name"],
                "amounts": [money(s["sums"][key], currency, locale) for key in shown],
            }
            for s in sections
        ],
        "totals": [money(totals[key], currency, locale) for key in shown],
    }
