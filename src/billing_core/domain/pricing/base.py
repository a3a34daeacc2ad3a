"""What every price model provides: validation of its terms and the exact amount."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar

from billing_core.domain.money import MoneyError, parse_decimal

Terms = dict[str, Any]


class PriceModel:
    """A pricing model: `validate` its catalog terms, then `amount` for a quantity.

    `amount` is exact (unrounded); the caller rounds each line once.
    """

    name: ClassVar[str]
    usage: ClassVar[bool] = True
    fields: ClassVar[tuple[str, ...]] = ()

    def validate(self, terms: Terms) -> list[str]:
        """Problems with the terms, each a short phrase naming the field."""
        raise NotImplementedError

    def amount(self, terms: Terms, quantity: Decimal) -> Decimal:
        """The exact amount for `quantity` units (for flat: one whole period)."""
        raise NotImplementedError

    def normalize(self, terms: Terms) -> Terms:
        """The stored form of validated terms: decimals as strings, nothing else."""
        return {f: _str(terms.get(f)) for f in self.fields if terms.get(f) is not None}


def _str(value: Any) -> Any:
    if isinstance(value, Decimal):
        return f"{value:f}"
    return value


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


def dec(value: Any) -> Decimal:
    """A stored decimal string (or number) as Decimal."""
    return value if isinstance(value, Decimal) else Decimal(str(value))
