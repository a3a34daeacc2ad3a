"""How an invoice document writes numbers and dates in its locale (SPEC §7.1): amounts for
their currency and quantities with the locale's grouping and decimal signs (Babel), days
nobody can misread, service periods with their inclusive last day, tax rates.

Every formatter takes the locale as Babel names it ("de_DE"); `domain.terms.locale_of`
picks an invoice's. The words around the values stay English (docs/decisions.md).

Presentation only, and pure: values in, text out (no store, no template).

Speed: a document formats hundreds of values, and Babel's pattern machinery costs a few
microseconds a call. Amounts and quantities take a fast path (Python's `,f` format with
its separators swapped for the locale's) when probes at first use show it writes exactly
what Babel writes for that locale (the tests check it against Babel); everything else
goes through Babel and is cached.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from babel import Locale
from babel.dates import format_date, format_interval
from babel.numbers import (
    format_percent,
    get_currency_symbol,
    get_decimal_symbol,
    get_group_symbol,
)

from billing_core.domain.money import minor_units

ONE_DAY = timedelta(days=1)
EN_US = "en_US"
# en_US keeps the day-month-year it has always printed ("1 Feb 2026", unambiguous to
# every reader); other locales write the same fields their own way (Babel's yMMMd:
# "1. Feb. 2026", "2026年2月1日").
EN_US_DAY = "d MMM y"
DAY_SKELETON = "yMMMd"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@lru_cache(maxsize=64)
def _locale(locale: str) -> tuple[Locale, Any, Any, dict[int, str]]:
    """Babel's locale, its currency and decimal patterns, and the table turning the
    separators Python's `,f` format writes into the locale's (empty when they agree)."""
    parsed = Locale.parse(locale)
    signs = {",": get_group_symbol(parsed), ".": get_decimal_symbol(parsed)}
    table = str.maketrans({python: own for python, own in signs.items() if python != own})
    return parsed, parsed.currency_formats["standard"], parsed.decimal_formats[None], table


# What `money` and `quantity` wrote, by their arguments: a close's documents write the
# same amounts again and again (prices, zeros, the same tier of the same price for many
# customers: 296,000 amounts of 42,000 distinct values for 6,000 invoices). Keyed by the
# amount's text, not the Decimal: a Decimal's hash is a modular power (some 2,300
# instructions the first time for each Decimal object, and every amount read from the
# store is an object of its own: a sixteenth of a preview's CPU went to them); its text
# costs a fifth of that and names one value (1.5 and 1.50, written alike, take an entry
# each). Emptied when it grows past the bound.
_WRITTEN: dict[tuple, str] = {}
WRITTEN_BOUND = 100_000


def money(
    amount: Decimal | None, currency: str, locale: str, exact: bool = False, at_least: int = 0
) -> str:
    """An amount for its currency in a locale: symbol, grouping, the currency's minor
    units (Babel).

    `exact` keeps digits beyond the minor units (unit prices keep full precision);
    `at_least` shows that many decimals or more (an average unit price keeps a steady six).
    """
    if amount is None:
        return ""
    key = (str(amount), currency, locale, exact, at_least)
    try:
        return _WRITTEN[key]
    except KeyError:
        pass
    if len(_WRITTEN) >= WRITTEN_BOUND:
        _WRITTEN.clear()
    text = _WRITTEN[key] = _money(amount, currency, locale, exact, at_least)
    return text


def _money(amount: Decimal, currency: str, locale: str, exact: bool, at_least: int) -> str:
    layout = _money_layout(currency, locale)
    if layout is not None:
        negative, positive, suffix, places, table = layout
        # What Babel writes, without its per-call pattern machinery: the amount with
        # grouping and at least the minor units (every significant digit beyond them when
        # `exact`), in the locale's separators, between the prefix and suffix Babel gives
        # this currency (checked against Babel by the tests). Equal decimals are spelt one
        # way: no "-0", no trailing zeros beyond the minor units.
        if exact:
            text = f"{abs(amount.normalize()):,f}"
            decimals = len(text) - text.find(".") - 1 if "." in text else 0
            wanted = max(places, at_least)
            if decimals < wanted:
                text += ("" if decimals else ".") + "0" * (wanted - decimals)
        else:
            rounded = amount.quantize(_MINOR[places])
            if rounded != amount:
                # More digits than the minor units: Babel rounds them.
                return _babel_money(amount.normalize(), currency, False, locale)
            text = f"{abs(rounded):,f}"
        if table:
            text = text.translate(table)
        return (negative if amount < 0 else positive) + text + suffix
    return _babel_money(amount.normalize() if amount else Decimal(0), currency, exact, locale)


# The smallest unit of 0 to 8 decimal places (what an amount is quantized to).
_MINOR = [Decimal(1).scaleb(-places) for places in range(9)]


@lru_cache(maxsize=65536)
def _babel_money(amount: Decimal, currency: str, exact: bool, locale: str) -> str:
    parsed, pattern, _, _ = _locale(locale)
    text = pattern.apply(
        amount, parsed, currency=currency, currency_digits=True, decimal_quantization=not exact
    )
    symbol = get_currency_symbol(currency, parsed)
    if symbol.isalpha() and symbol.isupper():
        # A currency without a symbol shows its code: keep it apart from the digits
        # ("KWD 1.500", "1,500 KWD"), where the locale does not already.
        code = re.escape(symbol)
        text = re.sub(rf"{code}(?=[^\s\u200e\u200f])", symbol + "\u00a0", text, count=1)
        text = re.sub(rf"(?<=\d){code}", "\u00a0" + symbol, text, count=1)
    return text


# Amounts the layout is checked on: with and without grouping, negative, and a million
# (where India's lakh grouping parts from the thousands Python writes).
MONEY_PROBES = (Decimal(0), Decimal(12), Decimal(1234), Decimal(-1234), Decimal(-1234567))


@lru_cache(maxsize=1024)
def _money_layout(currency: str, locale: str) -> tuple[str, str, str, int, dict[int, str]] | None:
    """(negative prefix, prefix, suffix, minor units, separator table) of a currency's
    amounts as Babel writes them in a locale, read off a probe and checked on others;
    None when they do not take that shape."""
    places = minor_units(currency)
    table = _locale(locale)[3]

    def digits(value: Decimal) -> str:
        return f"{abs(value):,.{places}f}".translate(table)

    probe = Decimal(1234567)
    number = digits(probe)
    positive = _babel_money(probe, currency, False, locale)
    negative = _babel_money(-probe, currency, False, locale)
    if positive.count(number) != 1 or negative.count(number) != 1:
        return None
    before, after = positive.split(number)
    negative_before, negative_after = negative.split(number)
    if negative_after != after:
        return None
    for value in MONEY_PROBES:
        written = (negative_before if value < 0 else before) + digits(value) + after
        if _babel_money(value, currency, False, locale) != written:
            return None
    return negative_before, before, after, places, table


def day(value: date | None, locale: str) -> str:
    """A date nobody can misread: the month by name (1 Feb 2026; 1. Feb. 2026)."""
    if value is None:
        return ""
    if locale == EN_US:
        return f"{value.day} {MONTHS[value.month - 1]} {value.year}"  # Babel's EN_US_DAY
    return _babel_day(value, locale)


@lru_cache(maxsize=8192)
def _babel_day(value: date, locale: str) -> str:
    parsed = _locale(locale)[0]
    pattern = EN_US_DAY if locale == EN_US else parsed.datetime_skeletons[DAY_SKELETON]
    return format_date(value, pattern, locale=parsed)


def quantity(value: Decimal | None, locale: str) -> str:
    """A quantity with grouping and every significant decimal: 1,234.5; 1.234,5."""
    if value is None:
        return ""
    key = (str(value), locale)
    try:
        return _WRITTEN[key]
    except KeyError:
        pass
    if len(_WRITTEN) >= WRITTEN_BOUND:
        _WRITTEN.clear()
    text = _WRITTEN[key] = _quantity(value, locale)
    return text


def _quantity(value: Decimal, locale: str) -> str:
    value = value.normalize() if value else Decimal(0)
    table = _plain_quantities(locale)
    if table is not None:
        # What Babel writes for this locale (checked by the tests).
        text = f"{value:,f}"
        return text.translate(table) if table else text
    return _babel_quantity(value, locale)


@lru_cache(maxsize=65536)
def _babel_quantity(value: Decimal, locale: str) -> str:
    parsed, _, pattern, _ = _locale(locale)
    return pattern.apply(value, parsed, decimal_quantization=False)


@lru_cache(maxsize=64)
def _plain_quantities(locale: str) -> dict[int, str] | None:
    """The separator table with which Python's `,f` format writes quantities as Babel
    does in a locale (empty: as they are); None when swapping separators is not enough."""
    table = _locale(locale)[3]
    probes = [Decimal("-1234567.125"), Decimal("1000"), Decimal("0.5"), Decimal(0)]
    if all(_babel_quantity(p, locale) == f"{p:,f}".translate(table) for p in probes):
        return table
    return None


def period(start: date | None, end: date | None, locale: str) -> str:
    """A half-open period shown with its inclusive last day: 1 Jan – 31 Jan 2026;
    1.–31. Jan. 2026."""
    if start is None or end is None:
        return ""
    last = end - ONE_DAY
    if start == last:
        return day(start, locale)
    if locale != EN_US:
        return _babel_period(start, last, locale)
    if start.year == last.year:
        return f"{start.day} {MONTHS[start.month - 1]} – {day(last, locale)}"
    return f"{day(start, locale)} – {day(last, locale)}"


@lru_cache(maxsize=8192)
def _babel_period(start: date, last: date, locale: str) -> str:
    return format_interval(start, last, DAY_SKELETON, locale=_locale(locale)[0])


@lru_cache(maxsize=1024)
def percent(rate: Decimal, locale: str) -> str:
    """A tax rate as the locale writes a percentage, with every significant decimal:
    19%, 8.875%; 19 %, 8,875 %. (Equal rates share a cache entry: 0.19 and 0.190 are
    written alike.)"""
    rate = rate.normalize() if rate else Decimal(0)
    return format_percent(rate, locale=_locale(locale)[0], decimal_quantization=False)
