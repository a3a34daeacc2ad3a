"""An explanation of a charge in words and formatted numbers, as the usage breakdown page
and `billing invoices explain` print it (SPEC §7.1): every step multiplies out, so a
customer can check a line with a calculator.

The numbers come from `domain.explain`; this module only words and formats them.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from billing_core.domain.charge import average_unit_price
from billing_core.domain.explain import Explanation
from billing_core.domain.pricing import Part
from billing_core.invoices.formatting import money, quantity

EXACT_PLACES = 6
SIX = Decimal(1).scaleb(-EXACT_PLACES)

# How a metric counts its events, as a sentence starts: "Sum of quantity".
AGGREGATIONS = {
    "sum": "Sum of {field}",
    "max": "Highest {field}",
    "latest": "Latest {field}",
    "count": "Count of events",
    "unique_count": "Count of distinct {field}",
}


def counted(rule: list | tuple | None) -> str | None:
    """What a metric's aggregation counts ("Sum of quantity"), or None when unknown."""
    if not rule:
        return None
    aggregation, field = rule[0], rule[1] if len(rule) > 1 else None
    text = AGGREGATIONS.get(aggregation)
    if text is None:
        return aggregation.replace("_", " ").capitalize()
    return text.format(field=field or "quantity")


def steps(explanation: Explanation, currency: str, fmt: Formatter | None = None) -> list[str]:
    """The explanation as lines of text, each one step that multiplies out."""
    fmt = fmt or Formatter()
    m = fmt.money
    out: list[str] = []
    pool, proration = explanation.pool, explanation.proration
    if pool is not None:
        out.append(f"Pool total {fmt.quantity(pool.total_quantity)} (every member's usage)")
    if explanation.model != "flat":
        out.extend(_part(part, currency, fmt) for part in explanation.parts)
    if len(explanation.parts) > 1:
        out.append(f"Sum of tiers {fmt.equals(explanation.exact, currency)}")
    if out and proration is None:
        # The price's amount, rounded once (for a pool, the whole pool's amount).
        rounded = pool.total_amount if pool is not None else explanation.amount
        out[-1] += _rounded(explanation.exact, rounded, currency, fmt)
    if pool is not None:
        out.append(
            f"Share: {m(pool.total_amount, currency)} × "
            f"{fmt.quantity(explanation.quantity)} / {fmt.quantity(pool.total_quantity)}"
            f" {fmt.equals(pool.exact_share, currency)}"
            + _rounded(pool.exact_share, explanation.amount, currency, fmt, share=True)
        )
    if proration is not None:
        exact = explanation.computed
        out.append(
            f"Prorated: {proration.days} of {proration.of_days} days × "
            f"{m(proration.full_amount, currency)} {fmt.equals(exact, currency)}"
            + _rounded(exact, explanation.amount, currency, fmt)
        )
    if explanation.average is not None:
        out.append(
            f"Average unit price (amount ÷ quantity): {average(explanation.average, currency, fmt)}"
        )
    return out


def summary(explanation: Explanation, currency: str, fmt: Formatter | None = None) -> str | None:
    """One short line for the invoice's first page, or None when the line says it all."""
    fmt = fmt or Formatter()
    if explanation.proration is not None:
        p = explanation.proration
        return f"Prorated: {p.days} of {p.of_days} days of {fmt.money(p.full_amount, currency)}"
    if explanation.pool is not None:
        return (
            f"Pool share: {fmt.quantity(explanation.quantity)} of "
            f"{fmt.quantity(explanation.pool.total_quantity)}"
        )
    if len(explanation.parts) == 1 and explanation.parts[0].package_size is not None:
        return _package(explanation.parts[0], currency, fmt)
    if any(p.tier is not None for p in explanation.parts):
        return "Tiered: see the usage breakdown"
    return None


def average(value: Decimal, currency: str, fmt: Formatter | None = None) -> str:
    """An average unit price to a steady six decimal places: "$0.001570"."""
    fmt = fmt or Formatter()
    return fmt.money(value.quantize(SIX), currency, True, EXACT_PLACES)


def line_average(line: Any, currency: str, fmt: Formatter | None = None) -> str:
    """A line's own average unit price, its amount ÷ its quantity (what the breakdown says
    of it too); the stored unit price for a line without quantity."""
    value = average_unit_price(line.amount, line.quantity) if line.quantity else None
    return average(value if value is not None else line.unit_price, currency, fmt)


class Formatter:
    """The number formats an explanation uses, in a document's locale."""

    def __init__(self, locale: str = "en_US") -> None:
        self.locale = locale

    def money(self, value: Decimal, currency: str, exact: bool = False, at_least: int = 0) -> str:
        return money(value, currency, self.locale, exact=exact, at_least=at_least)

    def quantity(self, value: Decimal) -> str:
        return quantity(value, self.locale)

    def equals(self, value: Decimal, currency: str) -> str:
        """ "= " and an exact amount; beyond six decimal places, "≈ " and six places."""
        if _within_six(value):
            return "= " + self.money(value, currency, True)
        return "≈ " + self.money(value.quantize(SIX), currency, True)


def _within_six(value: Decimal) -> bool:
    """Whether a value has no nonzero digit beyond six decimal places: whether it is its
    own quantization to six places (a Decimal's `as_tuple`, the other way to tell, makes a
    named tuple of its digits). A value too long to quantize within the context's
    precision tells by its exponent."""
    try:
        return value == value.quantize(SIX)
    except InvalidOperation:
        return value.as_tuple().exponent >= -EXACT_PLACES


def _part(part: Part, currency: str, fmt: Formatter) -> str:
    m, q = fmt.money, fmt.quantity
    if part.package_size is not None:
        return f"{_package(part, currency, fmt)} {fmt.equals(part.amount, currency)}"
    product = f"{q(part.quantity)} × {m(part.unit_price, currency, True)}"
    if part.flat_fee:
        product += f" + flat fee {m(part.flat_fee, currency, True)}"
    product += f" {fmt.equals(part.amount, currency)}"
    if part.tier is None:
        return product
    if part.up_to is None:
        bounds = f"over {q(part.above)}" if part.above else "all units"
    elif part.above:
        bounds = f"over {q(part.above)} up to {q(part.up_to)}"
    else:
        bounds = f"up to {q(part.up_to)}"
    every = "; every unit at this tier's price" if part.whole else ""
    return f"Tier {part.tier} ({bounds}{every}): {product}"


def _package(part: Part, currency: str, fmt: Formatter) -> str:
    size = fmt.quantity(part.package_size)
    return (
        f"{fmt.quantity(part.quantity)} × pack of {size} at {fmt.money(part.unit_price, currency)}"
    )


def _rounded(
    exact: Decimal, amount: Decimal, currency: str, fmt: Formatter, share: bool = False
) -> str:
    if exact == amount:
        return ""
    how = "shares split to add up to the pool amount" if share else "rounded"
    return f", {how}: {fmt.money(amount, currency)}"
