"""package: ceil(quantity / package_size) × package_price."""

from decimal import ROUND_CEILING, Decimal

from billing_core.domain.pricing.base import PriceModel, Terms, dec, decimal_field


class Package(PriceModel):
    name = "package"
    fields = ("package_size", "package_price")

    def validate(self, terms: Terms) -> list[str]:
        problems: list[str] = []
        decimal_field(terms, "package_size", problems, positive=True)
        decimal_field(terms, "package_price", problems)
        return problems

    def amount(self, terms: Terms, quantity: Decimal) -> Decimal:
        packages = (quantity / dec(terms["package_size"])).to_integral_value(ROUND_CEILING)
        return packages * dec(terms["package_price"])
