from decimal import Decimal

import pytest

from billing_core.domain.money import (
    MoneyError,
    minor_units,
    money_str,
    plain,
    round_money,
    split_largest_remainder,
)


@pytest.mark.parametrize(
    ("currency", "units"), [("USD", 2), ("JPY", 0), ("KWD", 3), ("EUR", 2), ("CLF", 4)]
)
def test_minor_units_come_from_the_iso_table(currency, units):
    assert minor_units(currency) == units


def test_unknown_currency_is_refused():
    with pytest.raises(MoneyError, match="unknown currency"):
        minor_units("XYZ")


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("0.125", "USD", "0.13"),  # half even would give 0.12
        ("0.135", "USD", "0.14"),
        ("2.5", "JPY", "3"),  # half even would give 2
        ("3.5", "JPY", "4"),
        ("0.0005", "KWD", "0.001"),
        ("-0.125", "USD", "-0.13"),  # ties away from zero on negatives too
    ],
)
def test_rounding_is_half_up_to_minor_units(amount, currency, expected):
    assert round_money(Decimal(amount), currency) == Decimal(expected)


def test_money_and_quantities_print_without_exponents():
    assert money_str(Decimal("1360"), "USD") == "1360.00"
    assert money_str(Decimal("1360"), "JPY") == "1360"
    assert plain(Decimal("9E+2")) == "900"
    assert plain(Decimal("0.50")) == "0.5"


def test_m3ter_block_split_matches_the_published_example():
    shares = split_largest_remainder(
        Decimal("1360.00"), {"account-a": Decimal(900), "account-b": Decimal(500)}, "USD"
    )
    assert shares == {"account-a": Decimal("874.29"), "account-b": Decimal("485.71")}


def test_split_ties_go_to_the_first_customer_id():
    shares = split_largest_remainder(
        Decimal("10.00"), {"b": Decimal(1), "a": Decimal(1), "c": Decimal(1)}, "USD"
    )
    assert shares == {"a": Decimal("3.34"), "b": Decimal("3.33"), "c": Decimal("3.33")}
    assert sum(shares.values()) == Decimal("10.00")
