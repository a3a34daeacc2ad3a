"""per_unit: quantity × unit_price (seats are per_unit on a max or latest metric)."""

from decimal import Decimal

from billing_core.domain.pricing.base import PriceModel, Terms, dec, decimal_field


class PerUnit(PriceModel):
    name = "per_unit"
    fields = ("unit_price",)

    def validate(self, terms: Terms) -> list[str]:
        problems: list[str] = []
        decimal_field(terms, "unit_price", problems)
        return problems

    def amount(self, terms: Terms, quantity: Decimal) -> Decimal:
        return quantity * dec(terms["unit_price"])

    def unit_price(self, terms: Terms) -> Decimal | None:
        return dec(terms["unit_price"])
