"""How a charge's amount came about, in numbers a customer can check by hand (SPEC §7.1):
the price's steps (each tier reached, packages, units at a price), a pool's total and the
member's share of it, a part period as days of days, and the average unit price when the
price has no unit price of its own.

Pure: a charge's stored fields in, numbers out. The documents and `billing invoices
explain` word and format them; the tests check that they multiply out to the amount.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from fractions import Fraction
from typing import Any

from billing_core.domain import pricing
from billing_core.domain.charge import average_unit_price
from billing_core.domain.money import ZERO, round_money
from billing_core.domain.pricing import Part


@dataclass(frozen=True, slots=True)
class Pool:
    """A pool rated as one block: its total quantity and amount, and this member's share
    (its amount is `amount` × `quantity` / `total_quantity`, split to whole minor units so
    the shares add up to the block; `exact_share` is that product before the split)."""

    total_quantity: Decimal
    total_amount: Decimal
    exact_share: Decimal


@dataclass(frozen=True, slots=True)
class Proration:
    """A part period billed as `days` of the whole period's `of_days` of `full_amount`."""

    days: int
    of_days: int
    full_amount: Decimal

    @property
    def factor(self) -> Fraction:
        return Fraction(self.days, self.of_days)


@dataclass(frozen=True, slots=True)
class Explanation:
    """One charge's amount, step by step."""

    model: str
    quantity: Decimal  # the charge's own quantity
    priced_quantity: Decimal  # what the price applied to (a pool's total)
    parts: tuple[Part, ...]
    exact: Decimal  # the parts' sum, before proration and rounding
    amount: Decimal  # the charge's amount
    pool: Pool | None = None
    proration: Proration | None = None
    average: Decimal | None = None  # amount ÷ quantity, for a price without a unit price
    unit_price: Decimal | None = None  # the price's own unit price, when it has one

    @property
    def averaged(self) -> bool:
        """Whether the line's unit price is an average (no unit price of its own, or a
        pool's share)."""
        return self.model != "flat" and (self.unit_price is None or self.pool is not None)

    @property
    def computed(self) -> Decimal:
        """The amount the steps give, before rounding to minor units."""
        if self.pool is not None:
            return self.pool.exact_share
        if self.proration is not None:
            return self.proration.full_amount * self.proration.days / self.proration.of_days
        return self.exact


def explain(
    terms: dict,
    currency: str,
    quantity: Decimal,
    amount: Decimal,
    *,
    period: tuple[date, date, date, date] | None = None,
    pool: tuple[Decimal, Decimal] | None = None,
) -> Explanation:
    """How `amount` came of `quantity` under the price's `terms`.

    `period` is (start, end, full start, full end) of a flat fee's part period; `pool` the
    pool's (total quantity, total amount) when the charge is a member's share of one.
    """
    model = pricing.model(terms["model"])
    if not model.usage:
        parts = model.explain(terms, Decimal(1))
        exact = sum((p.amount for p in parts), ZERO)
        proration = None
        if period is not None:
            start, end, full_start, full_end = period
            days, of_days = (end - start).days, (full_end - full_start).days
            if days != of_days and of_days > 0:
                proration = Proration(days, of_days, exact)
        return Explanation(
            model.name, quantity, Decimal(1), parts, exact, amount, proration=proration
        )
    priced = pool[0] if pool is not None else quantity
    parts = model.explain(terms, priced)
    exact = sum((p.amount for p in parts), ZERO)
    shared = None
    if pool is not None:
        total_quantity, total_amount = pool
        share = total_amount * quantity / total_quantity if total_quantity else ZERO
        shared = Pool(total_quantity, total_amount, share)
    own = model.unit_price(terms)
    average = None
    if (own is None or shared is not None) and quantity:
        average = average_unit_price(amount, quantity)
    return Explanation(
        model.name, quantity, priced, parts, exact, amount, shared, None, average, own
    )


def reproduces(explanation: Explanation, currency: str) -> bool:
    """Whether the steps give the amount after rounding: to the minor unit, or for a
    pool's share within the one minor unit the split may move it to make the shares add
    up to the block."""
    rounded = round_money(explanation.computed, currency)
    if explanation.pool is None:
        return rounded == explanation.amount
    unit = round_money(Decimal(1), currency).as_tuple().exponent
    return abs(explanation.computed - explanation.amount) < Decimal(1).scaleb(unit)


def of_charge(charge: Any, pool: tuple[Decimal, Decimal] | None = None) -> Explanation | None:
    """The explanation of a stored fixed or usage charge (a mapping or row with the
    charge's fields); None for other kinds and for charges without stored terms."""
    fields = charge if isinstance(charge, dict) else charge._mapping
    terms = fields.get("pricing")
    if fields["kind"] not in ("fixed", "usage") or not terms or "model" not in terms:
        return None
    period = None
    if fields["kind"] == "fixed":
        period = (
            fields["period_start"],
            fields["period_end"],
            fields["full_start"],
            fields["full_end"],
        )
    return explain(
        terms,
        fields["currency"],
        fields["quantity"],
        fields["amount"],
        period=period,
        pool=pool if fields.get("pool") else None,
    )
