"""package: ceil(quantity / package_size) × package_price."""

from decimal import ROUND_CEILING, Decimal

from billing_core.domain.money import parse_decimal
from billing_core.domain.pricing.base import (
    Part,
    PriceModel,
    Terms,
    dec,
    decimal_field,
    stored,
)

# The most units a package holds (what a 32-bit integer holds).
MOST_UNITS = 2_147_483_647


class Package(PriceModel):
    name = "package"
    fields = ("package_size", "package_price")

    def validate(self, terms: Terms) -> list[str]:
        problems: list[str] = []
        size = decimal_field(terms, "package_size", problems, positive=True)
        decimal_field(terms, "package_price", problems)
        if problems or size is None:
            return problems
        if size != size.to_integral_value():
            problems.append("package_size must be a whole number of units")
        elif size > MOST_UNITS:
            problems.append(f"package_size must be at most {MOST_UNITS}")
        return problems

    def normalize(self, terms: Terms) -> Terms:
        return {
            "package_size": str(int(parse_decimal(terms["package_size"], "package_size"))),
            "package_price": stored(parse_decimal(terms["package_price"], "package_price")),
        }

    def amount(self, terms: Terms, quantity: Decimal) -> Decimal:
        return self.packages(terms, quantity) * dec(terms["package_price"])

    def packages(self, terms: Terms, quantity: Decimal) -> Decimal:
        """How many packages `quantity` units take (a started package counts whole)."""
        return (quantity / dec(terms["package_size"])).to_integral_value(ROUND_CEILING)

    def explain(self, terms: Terms, quantity: Decimal) -> tuple[Part, ...]:
        packages, price = self.packages(terms, quantity), dec(terms["package_price"])
        size = dec(terms["package_size"])
        return (Part(packages, price, packages * price, package_size=size),)
