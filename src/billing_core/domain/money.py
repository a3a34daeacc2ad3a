"""Money: Decimal amounts, ISO 4217 minor units, rounding half up once per line."""

from __future__ import annotations

import functools
from datetime import date
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation

# ISO 4217 minor units for active currency codes whose exponent is not 2.
_MINOR_UNITS_NOT_2 = {
    # 0 decimals
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0,
    "PYG": 0, "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0,
    "XPF": 0,
    # 3 decimals
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
    # 4 decimals
    "CLF": 4, "UYW": 4,
}  # fmt: skip

# Active ISO 4217 codes with two minor units.
_TWO_DECIMALS = [
    "AED",
    "AFN",
    "ALL",
    "AMD",
    "ANG",
    "AOA",
    "ARS",
    "AUD",
    "AWG",
    "AZN",
    "BAM",
    "BBD",
    "BDT",
    "BGN",
    "BMD",
    "BND",
    "BOB",
    "BOV",
    "BRL",
    "BSD",
    "BTN",
    "BWP",
    "BYN",
    "BZD",
    "CAD",
    "CDF",
    "CHE",
    "CHF",
    "CHW",
    "CNY",
    "COP",
    "COU",
    "CRC",
    "CUP",
    "CVE",
    "CZK",
    "DKK",
    "DOP",
    "DZD",
    "EGP",
    "ERN",
    "ETB",
    "EUR",
    "FJD",
    "FKP",
    "GBP",
    "GEL",
    "GHS",
    "GIP",
    "GMD",
    "GTQ",
    "GYD",
    "HKD",
    "HNL",
    "HTG",
    "HUF",
    "IDR",
    "ILS",
    "INR",
    "IRR",
    "JMD",
    "KES",
    "KGS",
    "KHR",
    "KPW",
    "KYD",
    "KZT",
    "LAK",
    "LBP",
    "LKR",
    "LRD",
    "LSL",
    "MAD",
    "MDL",
    "MGA",
    "MKD",
    "MMK",
    "MNT",
    "MOP",
    "MRU",
    "MUR",
    "MVR",
    "MWK",
    "MXN",
    "MXV",
    "MYR",
    "MZN",
    "NAD",
    "NGN",
    "NIO",
    "NOK",
    "NPR",
    "NZD",
    "PAB",
    "PEN",
    "PGK",
    "PHP",
    "PKR",
    "PLN",
    "QAR",
    "RON",
    "RSD",
    "RUB",
    "SAR",
    "SBD",
    "SCR",
    "SDG",
    "SEK",
    "SGD",
    "SHP",
    "SLE",
    "SOS",
    "SRD",
    "SSP",
    "STN",
    "SVC",
    "SYP",
    "SZL",
    "THB",
    "TJS",
    "TMT",
    "TOP",
    "TRY",
    "TTD",
    "TWD",
    "TZS",
    "UAH",
    "USD",
    "USN",
    "UYU",
    "UZS",
    "VED",
    "VES",
    "WST",
    "XCD",
    "XCG",
    "YER",
    "ZAR",
    "ZMW",
    "ZWG",
]

MINOR_UNITS: dict[str, int] = {code: 2 for code in _TWO_DECIMALS} | _MINOR_UNITS_NOT_2

ZERO = Decimal(0)


class MoneyError(ValueError):
    """A currency or amount the product cannot accept."""


def minor_units(currency: str) -> int:
    """ISO 4217 minor units of a currency; unknown codes are refused."""
    try:
        return MINOR_UNITS[currency]
    except KeyError:
        raise MoneyError(f"unknown currency code {currency!r} (ISO 4217)") from None


@functools.cache
def exponent(currency: str) -> Decimal:
    """The quantum of one minor unit: Decimal('0.01') for USD."""
    return Decimal(1).scaleb(-minor_units(currency))


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round once, half up (ties away from zero), to the currency's minor units."""
    return amount.quantize(exponent(currency), rounding=ROUND_HALF_UP)


# What the store and the rating hold exactly: amounts, rates and quantities of a catalog
# are at most 10^15 in size with at most 12 decimal places (SPEC §10).
DECIMAL_LIMIT = Decimal(10) ** 15
DECIMAL_PLACES = 12
_PLACES = Decimal(1).scaleb(-DECIMAL_PLACES)
_WIDE = Context(prec=60)


def shown(value: object, width: int = 60) -> str:
    """A value as a message quotes it: text in quotes, numbers as written, long ones cut."""
    if isinstance(value, str):
        text = repr(value[: width + 1])
    elif isinstance(value, bool | Decimal | date):
        text = str(value)
    elif isinstance(value, int):
        text = str(Decimal(value))  # an int of thousands of digits has no str(); a Decimal has
    else:
        text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def parse_decimal(value: object, what: str) -> Decimal:
    """A Decimal from a catalog value: exact, finite, at most 10^15 in size and with at
    most 12 decimal places (trailing zeros beyond them are dropped). Floats are refused
    (they are inexact), and so are booleans."""
    if isinstance(value, bool | float):
        raise MoneyError(f"{what} must be a decimal string or integer, got {shown(value)}")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    else:
        try:
            result = Decimal(value.strip() if isinstance(value, str) else str(value))
        except (InvalidOperation, ValueError, TypeError):
            raise MoneyError(f"{what} is not a number: {shown(value)}") from None
    if not result.is_finite():
        raise MoneyError(f"{what} is not a finite number: {shown(value)}")
    if result.copy_abs() > DECIMAL_LIMIT:
        side = "at least -10^15" if result < 0 else "at most 10^15"
        raise MoneyError(f"{what} must be {side}, got {shown(value)}")
    sign, digits, exponent = result.as_tuple()
    if isinstance(exponent, int) and exponent < -DECIMAL_PLACES:
        zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
        if exponent + zeros < -DECIMAL_PLACES and any(digits):
            raise MoneyError(
                f"{what} must have at most {DECIMAL_PLACES} decimal places, got {shown(value)}"
            )
        result = result.quantize(_PLACES, context=_WIDE)
    return result


def money_str(amount: Decimal, currency: str) -> str:
    """A money amount as a plain decimal string with the currency's minor units."""
    return f"{round_money(amount, currency):f}"


def plain(value: Decimal | None) -> str | None:
    """A quantity or unit price without exponent notation or trailing zeros."""
    if value is None:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return f"{value.normalize():f}"


def split_largest_remainder(
    total: Decimal, weights: dict[str, Decimal], currency: str
) -> dict[str, Decimal]:
    """Split `total` by weight so the shares sum exactly to it.

    Floor each share to minor units, then give the remaining minor units one each to the
    largest remainders, ties to the key first in ascending string order.
    """
    keys = sorted(weights)
    weight_sum = sum((weights[k] for k in keys), ZERO)
    if not keys:
        return {}
    if weight_sum == 0:
        # No usage to weigh by: nothing to split (the block amount is then a fixed
        # fee on the pool and lands on the first member).
        return {k: (total if i == 0 else ZERO) for i, k in enumerate(keys)}
    quantum = exponent(currency)
    # Exact shares in whole integers over one common denominator (a Decimal division
    # rounds at its 28th digit, which can make equal remainders differ and break a tie
    # the wrong way): weights and total are scaled by powers of ten to integers.
    places = max(max(-weights[k].as_tuple().exponent, 0) for k in keys)
    total_places = max(-total.as_tuple().exponent - minor_units(currency), 0)
    scaled = {k: int(weights[k].scaleb(places)) for k in keys}
    units = int((total / quantum).scaleb(total_places))  # total, in 10^-total_places quanta
    denominator = sum(scaled.values()) * 10**total_places
    if denominator < 0:
        units, denominator = -units, -denominator
    whole, rest = {}, {}
    for k in keys:
        numerator = units * scaled[k]
        q = abs(numerator) // denominator  # truncated toward zero
        whole[k] = q if numerator >= 0 else -q
        rest[k] = abs(numerator) - q * denominator
    shares = {k: whole[k] * quantum for k in keys}
    left = int((total - sum(shares.values(), ZERO)) / quantum)
    sign = 1 if left >= 0 else -1
    order = sorted(keys, key=lambda k: (-rest[k], k))
    for k in order[: abs(left)]:
        shares[k] += sign * quantum
    return shares
