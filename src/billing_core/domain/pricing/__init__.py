"""Price models and the registry that maps a stored model name to its class.

A model is one module here (its terms' fields, their validation, their stored form and
the amount) and one line in MODELS; the catalog and the store (`prices.terms`, one JSON
value) take any model's terms without knowing them.
"""

from __future__ import annotations

from decimal import Decimal

from billing_core.domain.pricing.base import Part, PriceModel, Terms
from billing_core.domain.pricing.flat import Flat
from billing_core.domain.pricing.graduated import Graduated
from billing_core.domain.pricing.package import Package
from billing_core.domain.pricing.per_unit import PerUnit
from billing_core.domain.pricing.volume import Volume

# The registry: a model's module above, and one line here.
MODELS: dict[str, PriceModel] = {
    m.name: m
    for m in (
        Flat(),
        PerUnit(),
        Graduated(),
        Volume(),
        Package(),
    )
}


class UnknownModel(ValueError):
    pass


def model(name: str) -> PriceModel:
    """The price model stored under `name`; an unknown name is an error."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModel(
            f"unknown price model {name!r} (known: {', '.join(sorted(MODELS))})"
        ) from None


def amount(terms: Terms, quantity: Decimal) -> Decimal:
    """Exact amount of `quantity` under the stored terms (which name their model)."""
    return model(terms["model"]).amount(terms, quantity)


def explain(terms: Terms, quantity: Decimal) -> tuple[Part, ...]:
    """How the stored terms price `quantity`, step by step (the parts add up to `amount`)."""
    return model(terms["model"]).explain(terms, quantity)


def unit_price(terms: Terms) -> Decimal | None:
    """The stored terms' price of one unit, if their model has one."""
    return model(terms["model"]).unit_price(terms)


__all__ = [
    "MODELS",
    "Part",
    "PriceModel",
    "Terms",
    "UnknownModel",
    "amount",
    "explain",
    "model",
    "unit_price",
]
