"""A charge's fields are defined once: the store's columns and every constructor follow."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest

from billing_core.domain.charge import COMPARED, FIELDS, LINE_FIELDS, Charge, pick
from billing_core.domain.model import PriceInfo
from billing_core.store.models import Charge as ChargeTable

NOW = datetime(2026, 2, 1, tzinfo=UTC)
SLOT = SimpleNamespace(
    id=7,
    slot_key="s|item|p|c|2026-01-01",
    subscription_id="s",
    serviced_customer_id="c",
    billed_customer_id="c",
    family_id="c",
    pool=None,
    pool_owner_id=None,
    period_start=date(2026, 1, 1),
    period_end=date(2026, 2, 1),
    full_start=date(2026, 1, 1),
    full_end=date(2026, 2, 1),
    due_date=date(2026, 2, 1),
    billing_date=date(2026, 2, 1),
)
PRICE = PriceInfo("p", "Platform", None, "USD", "flat", None, {"model": "flat", "amount": "9"})


def test_the_fields_are_the_stored_columns_in_order():
    assert tuple(c.name for c in ChargeTable.__table__.c if c.name != "id") == FIELDS
    assert set(COMPARED) == set(FIELDS) - {"charge_key", "rated_at"}


def test_every_constructor_gives_every_field():
    item = Charge.item(SLOT, "fixed", PRICE, Decimal(1), Decimal(9), Decimal(9), NOW)
    minimum = Charge.minimum(SLOT, "USD", Decimal(20), Decimal(20), Decimal(9), Decimal(11), NOW)
    discount = Charge.discount(
        "k", {"type": "fixed", "amount": "1"}, "Discount 1", Decimal(1), "c", [item], NOW
    )
    original = {**item, "id": 3}
    adjustment = Charge.adjustment(original, 1, date(2026, 3, 1), Decimal(2), Decimal(4), NOW)
    for row in (item, minimum, discount, adjustment):
        assert set(row) == set(FIELDS)
    assert adjustment["unit_price"] == Decimal(2)
    assert minimum["quantity"] == 1 and minimum["amount"] == Decimal(11)


def test_picked_fields_keep_the_charge_order_and_refuse_unknown_names():
    assert pick("amount", "kind") == ("kind", "amount")
    assert LINE_FIELDS[0] == "kind"
    with pytest.raises(ValueError, match="not fields of a charge: nope"):
        pick("kind", "nope")
