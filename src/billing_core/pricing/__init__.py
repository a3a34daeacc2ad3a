"""Price models and the registry that maps a stored model name to its class."""

from __future__ import annotations

from decimal import Decimal

from .base import PriceModel, Terms
from .flat import Flat
from .graduated import Graduated
from .package import Package
from .per_unit import PerUnit
from .volume import Volume

MODELS: dict[str, PriceModel] = {
    m.name: m for m in (Flat(), PerUnit(), Graduated(), Volume(), Package())
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


__all__ = ["MODELS", "PriceModel", "Terms", "UnknownModel", "amount", "model"]
