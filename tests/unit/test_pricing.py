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
