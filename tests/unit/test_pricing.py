import json
from decimal import Decimal

import pytest

from billing_core.domain import pricing

M3TER_TIERS = {
    "model": "graduated",
    "tiers": [{"up_to": "1000", "unit_price": "1.00"}, {"up_to": None, "unit_price": "0.90"}],
}


def amount(terms, quantity):
    return pricing.amount(terms, Decimal(quantity))


def test_graduated_matches_m3ter_block_example():
    assert amount(M3TER_TIERS, 1400) == Decimal("1360.00")
    assert amount(M3TER_TIERS, 900) == Decimal("900.00")


def test_up_to_is_inclusive():
    terms = {
        "model": "graduated",
        "tiers": [{"up_to": "100", "unit_price": "1"}, {"up_to": None, "unit_price": "0.5"}],
    }
    assert amount(terms, 100) == Decimal(100)
    assert amount(terms, 101) == Decimal("100.5")


def test_graduated_flat_fee_per_tier_reached():
    terms = {
        "model": "graduated",
        "tiers": [
            {"up_to": "10", "unit_price": "1", "flat_fee": "5"},
            {"up_to": None, "unit_price": "0.5", "flat_fee": "20"},
        ],
    }
    assert amount(terms, 0) == 0
    assert amount(terms, 10) == Decimal(15)
    assert amount(terms, 12) == Decimal(36)


def test_volume_prices_all_units_at_the_reached_tier():
    terms = {
        "model": "volume",
        "tiers": [
            {"up_to": "100", "unit_price": "2", "flat_fee": "10"},
            {"up_to": None, "unit_price": "1", "flat_fee": "50"},
        ],
    }
    assert amount(terms, 100) == Decimal(210)
    assert amount(terms, 101) == Decimal(151)
    assert amount(terms, 0) == 0


def test_package_rounds_packages_up():
    terms = {"model": "package", "package_size": "100", "package_price": "5.00"}
    assert amount(terms, 0) == 0
    assert amount(terms, 1) == Decimal("5.00")
    assert amount(terms, 100) == Decimal("5.00")
    assert amount(terms, 101) == Decimal("10.00")


def test_per_unit_and_flat():
    assert amount({"model": "per_unit", "unit_price": "20.00"}, 3) == Decimal("60.00")
    assert amount({"model": "flat", "amount": "500.00"}, 1) == Decimal("500.00")


@pytest.mark.parametrize(
    "tiers",
    [
        [
            {"up_to": 1000, "unit_price": "1"},
            {"up_to": 500, "unit_price": "0.9"},
            {"up_to": None, "unit_price": "0.8"},
        ],
        [{"up_to": 1000, "unit_price": "1"}],
        [{"up_to": None, "unit_price": "1"}, {"up_to": None, "unit_price": "0.9"}],
        [{"up_to": 0, "unit_price": "1"}, {"up_to": None, "unit_price": "0.9"}],
        [{"up_to": 10, "unit_price": "-1"}, {"up_to": None, "unit_price": "0.9"}],
        [],
    ],
)
def test_bad_tiers_are_refused(tiers):
    problems = pricing.model("graduated").validate({"tiers": tiers})
    assert problems and all("tier" in p for p in problems)


def test_unknown_model_is_an_error():
    with pytest.raises(pricing.UnknownModel):
        pricing.model("stairstep")


# One catalog entry's terms per registered model: a new model adds its own here.
CATALOG_TERMS = {
    "flat": {"amount": Decimal("500.00")},
    "per_unit": {"unit_price": "0.00157"},
    "package": {"package_size": "1e2", "package_price": 5},
    "graduated": M3TER_TIERS,
    "volume": {
        "tiers": [
            {"up_to": 100, "unit_price": "2", "flat_fee": Decimal("10")},
            {"up_to": None, "unit_price": "1.50"},
        ]
    },
}


@pytest.mark.parametrize("name", sorted(pricing.MODELS))
def test_every_model_stores_its_terms_as_exact_strings_and_rates_them_the_same(name):
    """What the store keeps of a model's terms (`prices.terms`) is JSON of text only (no
    float ever), names only the model's own fields, and rates as the catalog's terms do."""
    model = pricing.model(name)
    terms = CATALOG_TERMS[name]
    assert model.validate(terms) == []
    stored = model.normalize(terms)
    assert set(stored) == set(model.fields)
    assert json.loads(json.dumps(stored)) == stored

    def texts(value):
        if isinstance(value, dict):
            return all(texts(v) for v in value.values())
        if isinstance(value, list):
            return all(texts(v) for v in value)
        return value is None or isinstance(value, str)

    assert texts(stored)
    for quantity in ("0", "1", "99.5", "100", "101", "1400"):
        exact = model.amount({"model": name, **stored}, Decimal(quantity))
        assert exact == model.amount(terms, Decimal(quantity))


def test_stored_decimals_keep_their_digits():
    assert pricing.model("flat").normalize({"amount": "-0.00"}) == {"amount": "0.00"}
    assert pricing.model("graduated").normalize(
        {"tiers": [{"up_to": "-0", "unit_price": "-0", "flat_fee": "-0.0"}, {"unit_price": "1"}]}
    )["tiers"][0] == {"up_to": "0", "unit_price": "0", "flat_fee": "0.0"}
    assert pricing.model("per_unit").normalize({"unit_price": "0.00157"}) == {
        "unit_price": "0.00157"
    }
    assert pricing.model("flat").normalize({"amount": " 2.50000000000000000 "}) == {
        "amount": "2.500000000000"
    }
    assert pricing.model("package").normalize({"package_size": "1e2", "package_price": 5}) == {
        "package_size": "100",
        "package_price": "5",
    }
