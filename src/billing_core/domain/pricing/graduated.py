"""graduated: each tier's units at that tier's price, plus each reached tier's flat fee."""

from decimal import Decimal

from billing_core.domain.pricing.base import Part, Terms
from billing_core.domain.pricing.tiers import ZERO, Tiered, bounds


class Graduated(Tiered):
    name = "graduated"

    def amount(self, terms: Terms, quantity: Decimal) -> Decimal:
        # The same walk as `explain`, without building its parts (rating's hot path).
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

    def explain(self, terms: Terms, quantity: Decimal) -> tuple[Part, ...]:
        """Each tier reached: its units at its price, plus its flat fee."""
        parts, below = [], ZERO
        for number, (up_to, unit_price, flat_fee) in enumerate(bounds(terms), start=1):
            if quantity <= below:
                break
            top = quantity if up_to is None else min(quantity, up_to)
            units = top - below
            parts.append(
                Part(
                    units, unit_price, units * unit_price + flat_fee, flat_fee, number, below, up_to
                )
            )
            if up_to is None:
                break
            below = up_to
        return tuple(parts)
