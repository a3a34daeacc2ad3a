"""A document's source hash: the same for the same context, whatever its objects share."""

from __future__ import annotations

import copy
from datetime import date
from decimal import Decimal

from billing_core.steps.render import source_hash


def _context() -> dict:
    row = {"product": "Seats", "amount": "$35.00", "how": ["1 × $35.00 = $35.00"]}
    return {
        "lang": "en-US",
        "sections": [
            {"rows": [row, row], "sums": {"subtotal": Decimal("70.00"), "total": Decimal("70")}}
        ],
        "breakdown": [],
    }


def test_the_same_context_hashes_alike_shared_or_not_and_any_change_shows():
    shared = _context()
    alone = copy.deepcopy(shared)  # the two rows now objects of their own
    assert source_hash(shared, "t") == source_hash(alone, "t")
    assert source_hash(shared, "t") != source_hash(shared, "u")
    alone["sections"][0]["sums"]["total"] = Decimal("70.00")  # spelt otherwise
    assert source_hash(shared, "t") != source_hash(alone, "t")
    alone = copy.deepcopy(shared)
    alone["sections"][0]["rows"][1]["how"] = ["1 × $35.00 = $35.01"]
    assert source_hash(shared, "t") != source_hash(alone, "t")


def test_a_context_with_a_value_marshal_does_not_take_is_hashed_as_json():
    data = _context()
    data["dated"] = date(2026, 2, 1)
    other = {**data, "dated": date(2026, 2, 2)}
    assert source_hash(data, "t") == source_hash(copy.deepcopy(data), "t")
    assert source_hash(data, "t") != source_hash(other, "t")
