"""Amounts, quantities, dates and tax rates on documents, in the invoice's locale (SPEC
§7.1): what de_DE, en_US and ja_JP readers see, and the fast paths write exactly what
Babel writes for every locale they take."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from babel.dates import format_date
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_core.invoices import formatting
from billing_core.invoices.formatting import (
    _babel_day,
    _babel_money,
    _babel_quantity,
    day,
    money,
    percent,
    period,
    quantity,
)

D = Decimal
NBSP = "\u00a0"

# Load the locale data now, not inside the first generated example (Hypothesis warns when
# a test's first run changes the global random state, as Babel's first load does).
quantity(D(1), "en_US")

CURRENCIES = st.sampled_from(["USD", "EUR", "GBP", "JPY", "KWD", "CHF", "SEK", "BHD", "CLF"])
# The locales the tests pin, others whose separators differ (narrow spaces, a decimal
# comma before the symbol), and some the fast path must leave to Babel (India's lakhs,
# Switzerland's apostrophes and ungrouped negatives, right-to-left marks).
LOCALES = st.sampled_from(
    [
        "en_US",
        "de_DE",
        "ja_JP",
        "fr_FR",
        "nl_NL",
        "sv_SE",
        "es_ES",
        "pt_BR",
        "en_IN",
        "de_CH",
        "ar_EG",
        "he_IL",
    ]
)
AMOUNTS = st.decimals(
    min_value=D("-1e12"), max_value=D("1e12"), allow_nan=False, places=None
).filter(lambda d: d.is_finite())


@given(AMOUNTS, CURRENCIES, LOCALES, st.booleans())
@settings(max_examples=800, deadline=None)
def test_money_is_what_babel_writes(amount, currency, locale, exact):
    normal = amount.normalize() if amount else D(0)
    assert money(amount, currency, locale, exact) == _babel_money(normal, currency, exact, locale)


def as_written_before(amount, currency, locale, exact=False, at_least=0):
    """`money` as it was before its fast path stopped taking the amount's tuple apart
    (the reference: every string equal to it)."""
    amount = amount.normalize() if amount else D(0)
    layout = formatting._money_layout(currency, locale)
    if layout is not None:
        negative, positive, suffix, places, table = layout
        shown = max(-amount.as_tuple().exponent, 0, at_least if exact else 0)
        if exact or shown <= places:
            text = f"{abs(amount).quantize(D(1).scaleb(-max(shown, places))):,f}"
            if table:
                text = text.translate(table)
            return (negative if amount < 0 else positive) + text + suffix
    return _babel_money(amount, currency, exact, locale)


@given(AMOUNTS, CURRENCIES, LOCALES, st.booleans(), st.sampled_from([0, 2, 4, 6]))
@settings(max_examples=800, deadline=None)
def test_money_writes_what_it_wrote_before_its_fast_path_changed(
    amount, currency, locale, exact, at_least
):
    written = money(amount, currency, locale, exact, at_least)
    assert written == as_written_before(amount, currency, locale, exact, at_least)


@given(AMOUNTS, LOCALES)
@settings(max_examples=400, deadline=None)
def test_quantity_is_what_babel_writes(value, locale):
    normal = value.normalize() if value else D(0)
    assert quantity(value, locale) == _babel_quantity(normal, locale)


@given(AMOUNTS, CURRENCIES, LOCALES, st.booleans(), st.integers(min_value=-4, max_value=4))
@settings(max_examples=400, deadline=None)
def test_what_money_and_quantity_wrote_is_reused_only_for_the_same_value(
    amount, currency, locale, exact, shift
):
    """Written values are remembered by their arguments, equal Decimals sharing an entry:
    an amount spelt with more or fewer zeros (1.5, 1.50) is written as it would be first."""
    sign, digits, exponent = amount.as_tuple()
    spelt = D((sign, digits + (0,) * abs(shift), exponent - abs(shift)))  # trailing zeros
    assert spelt == amount
    for value in (amount, spelt, -amount, amount.copy_negate().copy_abs()):
        formatting._WRITTEN.clear()
        fresh = (money(value, currency, locale, exact), quantity(value, locale))
        for other in (amount, spelt):
            if other == value:
                assert (money(other, currency, locale, exact), quantity(other, locale)) == fresh
    formatting._WRITTEN.clear()
    assert money(D("-0.00"), "USD", "en_US") == money(D("0"), "USD", "en_US") == "$0.00"
    assert money(D("0"), "USD", "en_US") == "$0.00"


def test_the_fast_paths_serve_the_locales_invoices_use():
    for locale in ("en_US", "de_DE", "ja_JP", "fr_FR"):
        assert formatting._plain_quantities(locale) is not None, locale
        for currency in ("USD", "EUR", "JPY"):
            assert formatting._money_layout(currency, locale) is not None, (currency, locale)
    # Where swapping separators is not enough, Babel writes every value.
    assert formatting._plain_quantities("en_IN") is None
    assert quantity(D("1234567.5"), "en_IN") == "12,34,567.5"


def test_money_en_us():
    assert money(D("1234.56"), "USD", "en_US") == "$1,234.56"
    assert money(D("1234.5"), "USD", "en_US") == "$1,234.50"
    assert money(D("-1234.56"), "USD", "en_US") == "-$1,234.56"
    assert money(D("-0.00"), "USD", "en_US") == money(D(0), "USD", "en_US") == "$0.00"
    assert money(D("-12.5"), "EUR", "en_US") == "-€12.50"
    assert money(D("1000"), "JPY", "en_US") == "¥1,000"
    assert money(D("2.5"), "JPY", "en_US") == "¥2"  # Babel rounds half to even
    assert money(D("0.001569"), "USD", "en_US", exact=True) == "$0.001569"
    assert money(D("0.0004"), "USD", "en_US", exact=True) == "$0.0004"
    assert money(D("1.5"), "KWD", "en_US") == f"KWD{NBSP}1.500"
    assert money(None, "USD", "en_US") == ""


def test_money_de_de():
    assert money(D("1234.56"), "EUR", "de_DE") == f"1.234,56{NBSP}€"
    assert money(D("-1234.56"), "EUR", "de_DE") == f"-1.234,56{NBSP}€"
    assert money(D("1234567.8"), "EUR", "de_DE") == f"1.234.567,80{NBSP}€"
    assert money(D("-0.00"), "EUR", "de_DE") == money(D(0), "EUR", "de_DE") == f"0,00{NBSP}€"
    assert money(D("0.001569"), "EUR", "de_DE", exact=True) == f"0,001569{NBSP}€"
    assert money(D("35"), "EUR", "de_DE", exact=True) == f"35,00{NBSP}€"
    assert money(D("1234.56"), "USD", "de_DE") == f"1.234,56{NBSP}$"
    assert money(D("1234.56"), "JPY", "de_DE") == f"1.235{NBSP}¥"
    # A code stands apart from the digits once, not twice.
    assert money(D("1.5"), "KWD", "de_DE") == f"1,500{NBSP}KWD"


def test_money_ja_jp():
    assert money(D("1234.56"), "JPY", "ja_JP") == "￥1,235"  # no minor units
    assert money(D("-1234"), "JPY", "ja_JP") == "-￥1,234"
    assert money(D(0), "JPY", "ja_JP") == "￥0"
    assert money(D("0.25"), "JPY", "ja_JP", exact=True) == "￥0.25"
    assert money(D("1234.56"), "USD", "ja_JP") == "$1,234.56"
    assert money(D("-12.5"), "EUR", "ja_JP") == "-€12.50"
    assert money(D("0.001569"), "USD", "ja_JP", exact=True) == "$0.001569"


def test_quantities_in_the_locales_separators():
    assert quantity(D("1234567.125"), "en_US") == "1,234,567.125"
    assert quantity(D("1234567.125"), "de_DE") == "1.234.567,125"
    assert quantity(D("1234567.125"), "ja_JP") == "1,234,567.125"
    assert quantity(D("-63576.50"), "de_DE") == "-63.576,5"
    assert quantity(D("0.000"), "de_DE") == quantity(D("-0"), "de_DE") == "0"
    assert quantity(D("1E+3"), "de_DE") == "1.000"
    assert quantity(None, "de_DE") == ""


def test_days_and_periods_with_the_month_by_name():
    first, leap = date(2026, 2, 1), date(2024, 2, 29)
    assert day(first, "en_US") == "1 Feb 2026"
    assert day(first, "de_DE") == "1. Feb. 2026"
    assert day(first, "ja_JP") == "2026年2月1日"
    assert day(None, "de_DE") == ""
    # en_US's own fast path is Babel's "d MMM y".
    for value in (first, leap, date(2025, 12, 31), date(1999, 9, 9)):
        assert day(value, "en_US") == format_date(value, "d MMM y", locale="en_US")
        assert day(value, "en_US") == _babel_day(value, "en_US")

    january, february = date(2026, 1, 1), date(2026, 2, 1)
    assert period(january, february, "en_US") == "1 Jan – 31 Jan 2026"
    assert period(january, february, "de_DE") == "1.–31. Jan. 2026"
    assert period(january, february, "ja_JP") == "2026年1月1日～31日"
    across = (date(2025, 12, 15), date(2026, 1, 15))
    assert period(*across, "en_US") == "15 Dec 2025 – 14 Jan 2026"
    assert period(*across, "de_DE") == "15. Dez. 2025\u2009–\u200914. Jan. 2026"
    assert period(*across, "ja_JP") == "2025年12月15日～2026年1月14日"
    one_day = (date(2026, 3, 14), date(2026, 3, 15))
    assert period(*one_day, "en_US") == "14 Mar 2026"
    assert period(*one_day, "de_DE") == "14. März 2026"
    assert period(None, february, "de_DE") == ""


@pytest.mark.parametrize(
    ("rate", "en_us", "de_de", "ja_jp"),
    [
        ("0.19", "19%", f"19{NBSP}%", "19%"),
        ("0.190", "19%", f"19{NBSP}%", "19%"),
        ("0.08875", "8.875%", f"8,875{NBSP}%", "8.875%"),
        ("0", "0%", f"0{NBSP}%", "0%"),
        ("-0.00", "0%", f"0{NBSP}%", "0%"),
        ("0.1", "10%", f"10{NBSP}%", "10%"),
    ],
)
def test_tax_rates_as_the_locale_writes_percentages(rate, en_us, de_de, ja_jp):
    assert percent(D(rate), "en_US") == en_us
    assert percent(D(rate), "de_DE") == de_de
    assert percent(D(rate), "ja_JP") == ja_jp
