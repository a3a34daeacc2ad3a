"""An aggregation is one entry of the registry: a toy `min`, registered here only, is
accepted by the catalog, stored by the validator and computed by every aggregation pass
and by a close."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from billing_core.store import aggregations
from billing_core.store.aggregations import Aggregation
from billing_core.store.engine import unit_of_work
from billing_core.store.usage_totals import Window, aggregate
from tests.helpers import close, import_yaml, ingest_csv, one

CATALOG = """
customers:
  - {id: solo, name: Solo, currency: USD}
metrics:
  - {code: low, name: Lowest reading, aggregation: min}
  - {code: units, name: Units, aggregation: sum}
prices:
  - {code: low, product: Lowest reading, currency: USD, model: per_unit, metric: low,
     unit_price: "2.00"}
subscriptions:
  - {id: s, customer: solo, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: low, timing: in_arrears}]}
"""

USAGE = """event_id,customer,metric,timestamp,quantity
e1,solo,low,2026-01-03T00:00:00Z,7.5
e2,solo,low,2026-01-09T00:00:00Z,2.25
e3,solo,low,2026-01-20T00:00:00Z,4
e4,solo,units,2026-01-20T00:00:00Z,9
e5,solo,low,2026-02-02T00:00:00Z,1
"""
JAN = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
FEB = (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))


@pytest.fixture
def minimum():
    """`min`: the smallest value of the window's events, a column of the shared pass."""
    entry = aggregations.register(
        Aggregation(
            "min",
            combine=lambda value: Decimal(int(value)) / aggregations.SCALE,
            column=lambda value, inside, wide: (
                sa.func.min(value) if inside is None else sa.func.min(value).filter(inside)
            ),
        )
    )
    yield entry
    aggregations.unregister("min")


@pytest.mark.parametrize("every_customer", [False, True], ids=["joined", "grouped"])
def test_a_registered_aggregation_is_computed_by_the_passes(store, minimum, every_customer):
    import_yaml(CATALOG)
    ingest_csv(USAGE)
    made = [
        Window(0, "solo", "low", *JAN),
        Window(1, "solo", "low", *FEB),
        Window(2, "solo", "units", *JAN),
        Window(3, "solo", "low", JAN[0], FEB[1]),
    ]
    with unit_of_work() as session:
        values = aggregate(session, made, {"low": "min", "units": "sum"}, every_customer)
    assert values == {0: Decimal("2.25"), 1: Decimal(1), 2: Decimal(9), 3: Decimal(1)}


def test_a_close_bills_a_registered_aggregation(store, minimum):
    import_yaml(CATALOG)
    ingest_csv(USAGE)
    close("2026-02-01")
    assert one(billing_date="2026-02-01")["subtotal"] == "4.50"  # 2.25 x 2.00


def test_without_its_entry_the_catalog_refuses_the_aggregation(store):
    with pytest.raises(Exception, match="must be one of sum, count, max, unique_count, latest"):
        import_yaml(CATALOG)
