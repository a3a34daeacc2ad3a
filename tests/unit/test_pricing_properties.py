"""Property-based tests of pricing arithmetic: the pooled largest-remainder split (shares
sum exactly to the block, each within one minor unit of its proportional value, leftover
units to the largest remainders, ties to the lower customer id) and tier tables
(graduated amounts never decrease as usage grows; volume amounts are never negative)."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from hypothesis import example, given, settings
from hypothesis import strategies as st

from billing_core.domain.money import exponent, split_largest_remainder
from billing_core.domain.pricing import amount
from billing_core.domain.pricing.tiers import validate_tiers

CURRENCIES = st.sampled_from(["USD", "JPY", "KWD", "CLF"])  # 2, 0, 3 and 4 minor units
CUSTOMER_IDS = st.text(alphabet="abcxyzABC019-_", min_size=1, max_size=6)
# Usage quantities: non-negative, at most six decimal places (as stored).
QUANTITIES = st.integers(0, 10**12).map(lambda n: Decimal(n).scaleb(-6))


def minor(n: int, currency: str) -> Decimal:
    return Decimal(n) * exponent(currency)


def exact_shares(total: Decimal, weights: dict[str, Decimal]) -> dict[str, Fraction]:
    weight_sum = sum(Fraction(w) for w in weights.values())
    return {k: Fraction(total) * Fraction(w) / weight_sum for k, w in weights.items()}


@given(
    currency=CURRENCIES,
    units=st.integers(-(10**10), 10**10),
    weights=st.dictionaries(CUSTOMER_IDS, QUANTITIES, min_size=1, max_size=12),
)
@settings(max_examples=300, deadline=None)
def test_split_sums_exactly_and_each_share_is_within_one_minor_unit(currency, units, weights):
    total = minor(units, currency)
    shares = split_largest_remainder(total, weights, currency)
    quantum = exponent(currency)
    assert set(shares) == set(weights)
    assert sum(shares.values(), Decimal(0)) == total
    assert all(s == s.quantize(quantum) for s in shares.values())  # whole minor units
    if sum(weights.values()) == 0:
        # Nothing to weigh by: the whole block on the first customer id.
        first = min(weights)
        assert shares == {k: (total if k == first else Decimal(0)) for k in weights}
        return
    exact = exact_shares(total, weights)
    for k, share in shares.items():
        assert abs(Fraction(share) - exact[k]) < Fraction(quantum)
        if weights[k] == 0:
            assert share == 0


@st.composite
def tied_splits(draw):
    """Few distinct weights over many customers, so equal remainders are common."""
    currency = draw(CURRENCIES)
    palette = draw(st.lists(st.integers(1, 50).map(Decimal), min_size=1, max_size=3))
    ids = draw(st.lists(CUSTOMER_IDS, min_size=2, max_size=12, unique=True))
    weights = {k: draw(st.sampled_from(palette)) for k in ids}
    total = minor(draw(st.integers(0, 10**6)), currency)
    return currency, total, weights


@given(tied_splits())
@example(
    # Equal remainders (2/3 of a cent) that a 28-digit Decimal division made unequal.
    (
        "USD",
        Decimal("10000.00"),
        {"0": Decimal(1), "1": Decimal(1), "9": Decimal(49), "A": Decimal(49)}
        | {"00": Decimal(49), "000": Decimal(49)}
        | {"0000": Decimal(14), "00000": Decimal(14), "000000": Decimal(14)},
    )
)
@settings(max_examples=300, deadline=None)
def test_leftover_units_go_to_the_largest_remainders_ties_to_the_lower_id(case):
    currency, total, weights = case
    shares = split_largest_remainder(total, weights, currency)
    quantum = Fraction(exponent(currency))
    exact = exact_shares(total, weights)
    # The remainder each customer's floored share leaves, and who got a leftover unit.
    remainder = {k: exact[k] - (exact[k] // quantum) * quantum for k in weights}
    got_unit = {k: Fraction(shares[k]) > exact[k] for k in weights}
    for a in weights:
        for b in weights:
            if got_unit[a] and not got_unit[b]:
                assert remainder[a] >= remainder[b]
                if remainder[a] == remainder[b]:
                    assert a < b, f"tie went to {a!r} before {b!r}"
    # Customers of equal weight: shares never grow with the id, and differ by one unit.
    ordered = sorted(weights)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if weights[a] == weights[b]:
                assert Fraction(shares[a]) - Fraction(shares[b]) in (0, quantum)


def test_equal_weights_tie_example():
    # 1.00 over three equal customers: 0.34, 0.33, 0.33, the extra cent to "a".
    shares = split_largest_remainder(
        Decimal("1.00"), {"c": Decimal(1), "a": Decimal(1), "b": Decimal(1)}, "USD"
    )
    assert shares == {"a": Decimal("0.34"), "b": Decimal("0.33"), "c": Decimal("0.33")}


PRICES = st.integers(0, 10**9).map(lambda n: Decimal(n).scaleb(-6))  # 0 to 1000, 6 places
FEES = st.none() | st.integers(0, 10**5).map(lambda n: Decimal(n).scaleb(-2))


@st.composite
def tier_tables(draw, model: str):
    count = draw(st.integers(1, 5))
    bounds = sorted(
        draw(st.lists(st.integers(1, 10**7), min_size=count - 1, max_size=count - 1, unique=True))
    )
    tiers = []
    for up_to in [*(Decimal(b).scaleb(-3) for b in bounds), None]:
        tier = {"up_to": up_to, "unit_price": draw(PRICES)}
        fee = draw(FEES)
        if fee is not None:
            tier["flat_fee"] = fee
        tiers.append(tier)
    terms = {"model": model, "tiers": tiers}
    assert validate_tiers(terms) == []
    return terms


# Up to twice the highest generated bound, so usage crosses every tier.
USAGE = st.integers(0, 2 * 10**10).map(lambda n: Decimal(n).scaleb(-6))


@given(terms=tier_tables("graduated"), a=USAGE, b=USAGE)
@settings(max_examples=300, deadline=None)
def test_graduated_amounts_never_decrease_as_usage_grows(terms, a, b):
    low, high = sorted((a, b))
    assert amount(terms, Decimal(0)) == 0
    assert 0 <= amount(terms, low) <= amount(terms, high)


@given(terms=tier_tables("graduated"), usage=USAGE)
@settings(max_examples=200, deadline=None)
def test_graduated_is_the_sum_of_each_tiers_units(terms, usage):
    # An independent reading of the spec: each tier's units at its price, plus the flat
    # fee of every tier the usage reaches.
    expected, below = Decimal(0), Decimal(0)
    for tier in terms["tiers"]:
        top = usage if tier["up_to"] is None else min(usage, tier["up_to"])
        if top > below:
            expected += (top - below) * tier["unit_price"] + tier.get("flat_fee", 0)
        if tier["up_to"] is None or usage <= tier["up_to"]:
            break
        below = tier["up_to"]
    assert amount(terms, usage) == expected


@given(terms=tier_tables("volume"), usage=USAGE)
@settings(max_examples=300, deadline=None)
def test_volume_amounts_are_never_negative(terms, usage):
    value = amount(terms, usage)
    assert value >= 0
    if usage == 0:
        assert value == 0  # zero usage reaches no tier, not even its flat fee
