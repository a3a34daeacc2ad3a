"""What every price model provides: validation of its terms, their stored form and the
exact amount.

A price's terms are stored as one JSON value (`prices.terms`): the model's own fields,
each decimal as its exact string. The model is the only place that knows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

from billing_core.domain.money import MoneyError, parse_decimal

Terms = dict[str, Any]
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Part:
    """One step of how a price applied to a quantity: `quantity` × `unit_price`, plus a
    tier's `flat_fee`, is `amount` (exact). A tier's part says which tier (`tier`, from 1)
    and its bounds (`above`, `up_to`; None when open); a package's part counts packages of
    `package_size`."""

    quantity: Decimal
    unit_price: Decimal
    amount: Decimal
    flat_fee: Decimal = ZERO
    tier: int | None = None
    above: Decimal | None = None
    up_to: Decimal | None = None
    package_size: Decimal | None = None
    whole: bool = False  # a volume tier: every unit at the one tier's price


class PriceModel:
    """A pricing model: `validate` its catalog terms, `normalize` them for the store, then
    `amount` for a quantity.

    `amount` is exact (unrounded); the caller rounds each line once.
    """

    name: ClassVar[str]
    usage: ClassVar[bool] = True
    # The catalog keys of the model's terms (what `normalize` stores).
    fields: ClassVar[tuple[str, ...]] = ()

    def validate(self, terms: Terms) -> list[str]:
        """Problems with the terms, each a short phrase naming the field."""
        raise NotImplementedError

    def amount(self, terms: Terms, quantity: Decimal) -> Decimal:
        """The exact amount for `quantity` units (for flat: one whole period)."""
        raise NotImplementedError

    def unit_price(self, terms: Terms) -> Decimal | None:
        """The price of one unit when the model has one (else a line shows an average)."""
        return None

    def explain(self, terms: Terms, quantity: Decimal) -> tuple[Part, ...]:
        """How the price applies to `quantity`, step by step: the parts' amounts add up
        to `amount(terms, quantity)` exactly (checked for every model by the tests)."""
        own = self.unit_price(terms)
        if own is not None:
            return (Part(quantity, own, quantity * own),)
        raise NotImplementedError

    def normalize(self, terms: Terms) -> Terms:
        """The stored form of validated terms: each decimal as its exact string (as the
        catalog reads it: at most 12 decimal places), nothing else."""
        return {
            f: stored(parse_decimal(terms[f], f)) for f in self.fields if terms.get(f) is not None
        }

    def located(self, problem: str) -> tuple[str | None, str]:
        """A problem of `validate` as the field it is about and the reason."""
        for name in self.fields:
            if problem.startswith(name + " "):
                return name, problem.removeprefix(name + " ")
        return None, problem


def decimal_field(
    terms: Terms, name: str, problems: list[str], *, positive: bool = False
) -> Decimal | None:
    """Read a required non-negative (or positive) decimal field, noting any problem."""
    value = terms.get(name)
    if value is None:
        problems.append(f"{name} is required")
        return None
    try:
        number = parse_decimal(value, name)
    except MoneyError as err:
        problems.append(str(err))
        return None
    if number < 0 or (positive and number == 0):
        problems.append(f"{name} must be {'positive' if positive else 'zero or more'}")
        return None
    return number


def stored(value: Decimal) -> str:
    """A decimal as a price's terms keep it: its exact digits, and a zero without a sign
    (a catalog's "-0" would otherwise print as -0.00 on an invoice)."""
    return f"{value.copy_abs() if value.is_zero() else value:f}"


def dec(value: Any) -> Decimal:
    """A stored decimal string (or number) as Decimal."""
    return value if isinstance(value, Decimal) else Decimal(str(value))
