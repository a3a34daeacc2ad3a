"""flat: a fixed amount per period, prorated for partial periods."""

from decimal import Decimal

from billing_core.domain.pricing.base import Part, PriceModel, Terms, dec, decimal_field


class Flat(PriceModel):
    name = "flat"
    usage = False
    fields = ("amount",)

    def validate(self, terms: Terms) -> list[str]:
        problems: list[str] = []
        decimal_field(terms, "amount", problems)
        return problems

    def amount(self, terms: Terms, quantity: Decimal) -> Decimal:
        return dec(terms["amount"]) * quantity

    def explain(self, terms: Terms, quantity: Decimal) -> tuple[Part, ...]:
        return (Part(quantity, dec(terms["amount"]), self.amount(terms, quantity)),)
