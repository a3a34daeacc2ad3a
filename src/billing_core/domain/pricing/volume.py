"""volume: every unit at the price of the tier the total falls in, plus its flat fee."""

from decimal import Decimal

from billing_core.domain.pricing.base import Part, Terms
from billing_core.domain.pricing.tiers import ZERO, Tiered, bounds


class Volume(Tiered):
    name = "volume"

    def amount(self, terms: Terms, quantity: Decimal) -> Decimal:
        # No usage reaches no tier: nothing is charged, not even a flat fee.
        if quantity <= 0:
            return ZERO
        for up_to, unit_price, flat_fee in bounds(terms):
            if up_to is None or quantity <= up_to:
                return quantity * unit_price + flat_fee
        raise AssertionError("validated tiers end with an open tier")

    def explain(self, terms: Terms, quantity: Decimal) -> tuple[Part, ...]:
        """The one tier the whole quantity falls in, every unit at its price."""
        if quantity <= 0:
            return ()
        below = ZERO
        for number, (up_to, unit_price, flat_fee) in enumerate(bounds(terms), start=1):
            if up_to is None or quantity <= up_to:
                amount = quantity * unit_price + flat_fee
                return (
                    Part(quantity, unit_price, amount, flat_fee, number, below, up_to, whole=True),
                )
            below = up_to
        raise AssertionError("validated tiers end with an open tier")
