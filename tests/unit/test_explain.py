"""A line's explanation multiplies out (SPEC §7.1): every price model's steps add up to its
amount, and the tiers, packages, a pool's share and a part period reproduce the rounded
amount on the invoice."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_core.domain import pricing
from billing_core.domain.explain import explain, reproduces
from billing_core.domain.money import round_money
from billing_core.domain.rating import fixed_amount, part_factor, pool_shares
from billing_core.invoices.explanations import steps, summary

API_TIERS = {
    "model": "graduated",
    "tiers": [
        {"up_to": "100000", "unit_price": "0.002"},
        {"up_to": "1000000", "unit_price": "0.0015"},
        {"up_to": None, "unit_price": "0.001"},
    ],
}
TERMS = {
    "flat": {"model": "flat", "amount": "900.00"},
    "per_unit": {"model": "per_unit", "unit_price": "0.0025"},
    "graduated": {
        "model": "graduated",
        "tiers": [
            {"up_to": "100", "unit_price": "1.00", "flat_fee": "5"},
            {"up_to": "1000", "unit_price": "0.75"},
            {"up_to": None, "unit_price": "0.333"},
        ],
    },
    "volume": {
        "model": "volume",
        "tiers": [
            {"up_to": "100", "unit_price": "1.00", "flat_fee": "5"},
            {"up_to": None, "unit_price": "0.475"},
        ],
    },
    "package": {"model": "package", "package_size": "100", "package_price": "40.00"},
}
quantities = st.decimals(min_value=0, max_value=10**7, places=3, allow_nan=False)


def test_every_registered_model_is_explained():
    assert set(TERMS) == set(pricing.MODELS)


@pytest.mark.parametrize("name", sorted(TERMS))
@given(quantity=quantities)
def test_the_parts_add_up_to_the_models_amount(name, quantity):
    terms = TERMS[name]
    parts = pricing.explain(terms, quantity)
    assert sum((p.amount for p in parts), Decimal(0)) == pricing.amount(terms, quantity)
    for part in parts:
        assert part.amount == part.quantity * part.unit_price + part.flat_fee


@pytest.mark.parametrize("name", sorted(set(TERMS) - {"flat"}))
@given(quantity=quantities)
def test_a_usage_line_reproduces_its_rounded_amount(name, quantity):
    terms = TERMS[name]
    amount = round_money(pricing.amount(terms, quantity), "USD")
    found = explain(terms, "USD", quantity, amount)
    assert reproduces(found, "USD")
    assert round_money(found.computed, "USD") == amount


def test_tiers_reached_each_with_its_units_and_price():
    found = explain(
        API_TIERS, "USD", Decimal(233999), Decimal("400.9985").quantize(Decimal("0.01"))
    )
    assert [(p.tier, p.quantity, p.unit_price) for p in found.parts] == [
        (1, Decimal(100000), Decimal("0.002")),
        (2, Decimal(133999), Decimal("0.0015")),
    ]
    text = steps(found, "USD")
    assert text[0] == "Tier 1 (up to 100,000): 100,000 × $0.002 = $200.00"
    assert text[1] == "Tier 2 (over 100,000 up to 1,000,000): 133,999 × $0.0015 = $200.9985"
    assert text[2] == "Sum of tiers = $400.9985, rounded: $401.00"
    assert text[3] == "Average unit price (amount ÷ quantity): $0.001714"
    assert summary(found, "USD") == "Tiered: see the usage breakdown"


def test_a_volume_price_puts_every_unit_in_one_tier():
    found = explain(TERMS["volume"], "USD", Decimal(150), Decimal("71.25"))
    (part,) = found.parts
    assert (part.tier, part.whole, part.quantity, part.unit_price) == (
        2,
        True,
        Decimal(150),
        Decimal("0.475"),
    )
    assert steps(found, "USD") == [
        "Tier 2 (over 100; every unit at this tier's price): 150 × $0.475 = $71.25",
        "Average unit price (amount ÷ quantity): $0.475000",
    ]
    assert reproduces(found, "USD")
    # An amount the steps do not give is told apart.
    assert not reproduces(explain(TERMS["volume"], "USD", Decimal(150), Decimal("76.25")), "USD")


def test_packages_read_as_packs_of_their_size():
    found = explain(TERMS["package"], "EUR", Decimal(587), Decimal("240.00"))
    assert reproduces(found, "EUR")
    assert summary(found, "EUR") == "6 × pack of 100 at €40.00"
    assert steps(found, "EUR") == [
        "6 × pack of 100 at €40.00 = €240.00",
        "Average unit price (amount ÷ quantity): €0.408859",
    ]


def test_a_pools_share_is_its_part_of_the_pools_amount():
    usage = {"a": Decimal(63576), "b": Decimal(233999), "c": Decimal(421526)}
    block, amount, shares = pool_shares(API_TIERS, "USD", usage)
    for member, quantity in usage.items():
        found = explain(API_TIERS, "USD", quantity, shares[member], pool=(block, amount))
        assert found.priced_quantity == Decimal(719101)
        assert found.pool.total_amount == Decimal("1128.65")
        assert found.pool.exact_share == amount * quantity / block
        assert reproduces(found, "USD")
        assert found.averaged
    found = explain(API_TIERS, "USD", usage["a"], shares["a"], pool=(block, amount))
    assert steps(found, "USD") == [
        "Pool total 719,101 (every member's usage)",
        "Tier 1 (up to 100,000): 100,000 × $0.002 = $200.00",
        "Tier 2 (over 100,000 up to 1,000,000): 619,101 × $0.0015 = $928.6515",
        "Sum of tiers = $1,128.6515, rounded: $1,128.65",
        "Share: $1,128.65 × 63,576 / 719,101 ≈ $99.784387, shares split to add up to the "
        "pool amount: $99.78",
        "Average unit price (amount ÷ quantity): $0.001569",
    ]
    assert summary(found, "USD") == "Pool share: 63,576 of 719,101"


@given(
    start=st.integers(min_value=0, max_value=30),
    length=st.integers(min_value=1, max_value=31),
    amount=st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False),
)
def test_a_part_period_is_days_of_days_of_the_whole_fee(start, length, amount):
    full_start, full_end = date(2026, 1, 1), date(2026, 2, 1)
    begin = date(2026, 1, 1 + start)
    end = min(date.fromordinal(begin.toordinal() + length), full_end)
    terms = {"model": "flat", "amount": f"{amount:f}"}
    price = type("P", (), {"terms": terms, "currency": "USD"})()
    billed = fixed_amount(price, part_factor(begin, end, full_start, full_end))
    found = explain(terms, "USD", Decimal(1), billed, period=(begin, end, full_start, full_end))
    assert reproduces(found, "USD")
    if (end - begin).days == 31:
        assert found.proration is None
    else:
        assert (found.proration.days, found.proration.of_days) == ((end - begin).days, 31)


def test_the_brightside_example_reads_18_of_31_days():
    period = (date(2026, 1, 14), date(2026, 2, 1), date(2026, 1, 1), date(2026, 2, 1))
    found = explain(TERMS["flat"], "USD", Decimal(1), Decimal("522.58"), period=period)
    assert steps(found, "USD") == [
        "Prorated: 18 of 31 days × $900.00 ≈ $522.580645, rounded: $522.58"
    ]
    assert summary(found, "USD") == "Prorated: 18 of 31 days of $900.00"


def charge_record(**fields):
    """A charge as the documents read it (`invoices.breakdown.charges_of`)."""
    from billing_core.invoices.breakdown import ChargeRecord

    base = dict.fromkeys(ChargeRecord._fields)
    base.update(
        invoice_id=1,
        kind="usage",
        currency="USD",
        period_start=date(2026, 1, 1),
        period_end=date(2026, 2, 1),
        full_start=date(2026, 1, 1),
        full_end=date(2026, 2, 1),
    )
    return ChargeRecord(**{**base, **fields})


def test_charges_alike_are_explained_and_worded_once_for_a_batch():
    """The documents of a batch share the explanation of charges alike (same terms,
    kind, currency, quantity, amount, part period, pool) and its words; charges that
    differ in any of those get their own, the words those made one by one would be."""
    from billing_core.invoices.breakdown import Explainer
    from billing_core.invoices.explanations import Formatter

    terms = TERMS["graduated"]
    pools = {("s", "p", date(2026, 1, 1), date(2026, 2, 1)): (Decimal(300), Decimal(270))}
    explainer = Explainer(pools)
    fmt = Formatter("en_US")
    one = charge_record(id=1, pricing=terms, quantity=Decimal(150), amount=Decimal("142.50"))
    alike = charge_record(id=2, pricing=terms, quantity=Decimal(150), amount=Decimal("142.50"))
    other = charge_record(id=3, pricing=terms, quantity=Decimal(151), amount=Decimal("143.25"))
    pooled = charge_record(
        id=4,
        pricing=terms,
        quantity=Decimal(150),
        amount=Decimal("135.00"),
        pool="breakdown",
        subscription_id="s",
        price_code="p",
    )
    found = explainer.of(one)
    assert explainer.of(alike) is found
    assert explainer.of(other) is not found and explainer.of(pooled).pool is not None
    assert explainer.steps(found, "USD", fmt) is explainer.steps(explainer.of(alike), "USD", fmt)
    for charge in (one, other, pooled):
        alone = explain(
            terms,
            "USD",
            charge.quantity,
            charge.amount,
            pool=pools[("s", "p", date(2026, 1, 1), date(2026, 2, 1))] if charge.pool else None,
        )
        assert explainer.steps(explainer.of(charge), "USD", fmt) == steps(alone, "USD", fmt)
        assert explainer.summary(explainer.of(charge), "USD", fmt) == summary(alone, "USD", fmt)
    # Terms equal in value but not one object (rows read one by one) are explained apart.
    assert explainer.of(one._replace(pricing=dict(terms))) is not found
    late = charge_record(kind="adjustment", pricing=terms, quantity=Decimal(1))
    assert explainer.of(late) is None
