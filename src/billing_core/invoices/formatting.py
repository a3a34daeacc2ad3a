"""How an invoice document writes numbers and dates: amounts for their currency and
quantities with grouping (Babel, en_US), days nobody can misread, service periods with
their inclusive last day, tax rates.

Presentation only, and pure: values in, text out (no store, no template).
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from babel import Locale
from babel.numbers import get_currency_symbol

from billing_core.domain.money import minor_units

ONE_DAY = timedelta(days=1)
LOCALE = "en_US"


@lru_cache(maxsize=1)
def _locale() -> tuple[Locale, Any, Any]:
    locale = Locale.parse(LOCALE)
    return locale, locale.currency_formats["standard"], locale.decimal_formats[None]


def money(amount: Decimal | None, currency: str, exact: bool = False) -> str:
    """An amount for its currency: symbol, grouping, the currency's minor units (Babel).

    `exact` keeps digits beyond the minor units (unit prices keep full precision).
    """
    if amount is None:
        return ""
    # Equal decimals are spelt one way: no "-0", and no trailing zeros beyond the minor
    # units.
    amount = amount.normalize() if amount else Decimal(0)
    layout = _money_layout(currency)
    if layout is not None:
        negative, positive, suffix, places = layout
        shown = max(-amount.as_tuple().exponent, 0)
        if exact or shown <= places:
            # What Babel writes, without its per-call pattern machinery: the amount with
            # grouping and at least the minor units, between the prefix and suffix Babel
            # gives this currency (checked against Babel by the tests).
            text = f"{abs(amount).quantize(Decimal(1).scaleb(-max(shown, places))):,f}"
            return (negative if amount < 0 else positive) + text + suffix
    return _babel_money(amount, currency, exact)


@lru_cache(maxsize=65536)
def _babel_money(amount: Decimal, currency: str, exact: bool) -> str:
    locale, pattern, _ = _locale()
    text = pattern.apply(
        amount, locale, currency=currency, currency_digits=True, decimal_quantization=not exact
    )
    symbol = get_currency_symbol(currency, locale)
    if symbol.isalpha() and symbol.isupper():
        # A currency without a symbol shows its code: keep it apart from the digits.
        text = text.replace(symbol, symbol + "\u00a0", 1)
    return text


@lru_cache(maxsize=512)
def _money_layout(currency: str) -> tuple[str, str, str, int] | None:
    """(negative prefix, prefix, suffix, minor units) of a currency's amounts as Babel
    writes them, read off two probes; None when they do not take that shape."""
    places = minor_units(currency)
    number = f"{Decimal(1234):,.{places}f}"
    positive, negative = (
        _babel_money(Decimal(1234), currency, False),
        _babel_money(Decimal(-1234), currency, False),
    )
    if positive.count(number) != 1 or negative.count(number) != 1:
        return None
    before, after = positive.split(number)
    negative_before, negative_after = negative.split(number)
    if negative_after != after:
        return None
    return negative_before, before, after, places


def day(value: date | None) -> str:
    """A date nobody can misread, whatever their convention: 1 Feb 2026."""
    if value is None:
        return ""
    return f"{value.day} {value:%b %Y}"


def quantity(value: Decimal | None) -> str:
    """A quantity with grouping and every significant decimal: 1,234.5."""
    if value is None:
        return ""
    value = value.normalize() if value else Decimal(0)
    if _plain_quantities():
        return f"{value:,f}"  # what Babel writes for this locale (checked by the tests)
    return _babel_quantity(value)


@lru_cache(maxsize=65536)
def _babel_quantity(value: Decimal) -> str:
    locale, _, pattern = _locale()
    return pattern.apply(value, locale, decimal_quantization=False)


@lru_cache(maxsize=1)
def _plain_quantities() -> bool:
    """Whether the locale writes quantities as Python's `,f` format does."""
    probes = [Decimal("-1234567.125"), Decimal("1000"), Decimal("0.5"), Decimal(0)]
    return all(_babel_quantity(p) == f"{p:,f}" for p in probes)


def period(start: date | None, end: date | None) -> str:
    """A half-open period shown with its inclusive last day: 1 Jan – 31 Jan 2026."""
    if start is None or end is None:
        return ""
    last = end - ONE_DAY
    if start == last:
        return day(start)
    if start.year == last.year:
        return f"{start.day} {start:%b} – {day(last)}"
    return f"{day(start)} – {day(last)}"


def percent(rate: Decimal) -> str:
    return f"{(rate * 100).normalize():f}%"
