"""graduated: each tier's units at that tier's price, plus each reached tier's flat fee."""

from decimal import Decimal

from billing_core.domain.pricing.base import Terms
from billing_core.domain.pricing.tiers import ZERO, Tiered, bounds


class Graduated(Tiered):
    name = "graduated"

    def amount(self, terms: Terms, quantity: Decimal) -> Decimal:
        total, below = ZERO, ZERO
        for up_to, unit_price, flat_fee in bounds(terms):
            if quantity <= below:
                break
            top = quantity if up_to is None else min(quantity, up_to)
            total += (top - below) * unit_price + flat_fee
            if up_to is None:
                break
            below = up_to
        return total
