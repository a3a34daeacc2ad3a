"""Amounts on documents: the fast path writes exactly what Babel writes."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from billing_core.invoices.formatting import _babel_money, money, quantity

# Load the locale data now, not inside the first generated example (Hypothesis warns when
# a test's first run changes the global random state, as Babel's first load does).
quantity(Decimal(1))

CURRENCIES = st.sampled_from(["USD", "EUR", "GBP", "JPY", "KWD", "CHF", "SEK", "BHD", "CLF"])
AMOUNTS = st.decimals(
    min_value=Decimal("-1e12"), max_value=Decimal("1e12"), allow_nan=False, places=None
).filter(lambda d: d.is_finite())


@given(AMOUNTS, CURRENCIES, st.booleans())
@settings(max_examples=500, deadline=None)
def test_money_is_what_babel_writes(amount, currency, exact):
    normal = amount.normalize() if amount else Decimal(0)
    assert money(amount, currency, exact) == _babel_money(normal, currency, exact)


def test_money_examples():
    assert money(Decimal("1234.5"), "USD") == "$1,234.50"
    assert money(Decimal("-0.00"), "USD") == "$0.00"
    assert money(Decimal("-12.5"), "EUR") == "-€12.50"
    assert money(Decimal("1000"), "JPY") == "¥1,000"
    assert money(Decimal("2.5"), "JPY") == "¥2"  # Babel rounds half to even
    assert money(Decimal("0.0004"), "USD", exact=True) == "$0.0004"
    assert money(Decimal("1.5"), "KWD") == "KWD\u00a01.500"
    assert money(None, "USD") == ""


@given(AMOUNTS)
@settings(max_examples=300, deadline=None)
def test_quantity_is_what_babel_writes(value):
    from billing_core.invoices.formatting import _babel_quantity, quantity

    normal = value.normalize() if value else Decimal(0)
    assert quantity(value) == _babel_quantity(normal)
