"""The pure diff of two pictures of the invoices (`domain.close_diff`): how lines are
matched, what counts as changed, the totals per currency."""

from __future__ import annotations

from decimal import Decimal

from billing_core.domain.close_diff import diff_invoices, signed, status_text, value_text


def line(kind="usage", amount="10.00", quantity="10", serviced="a", product="Units", **fields):
    return {
        "serviced_customer": serviced,
        "subscription": "sub",
        "price": "p",
        "product": product,
        "kind": kind,
        "description": fields.get("description"),
        "period_start": "2026-01-01",
        "period_end": "2026-01-31",
        "grant": None,
        "quantity": Decimal(quantity) if quantity is not None else None,
        "unit_price": None,
        "amount": Decimal(amount),
    }


def invoice(*lines: dict, currency="USD", status="draft", number=None) -> dict:
    total = sum((x["amount"] for x in lines), Decimal(0))
    return {
        "status": status,
        "number": number,
        "currency": currency,
        "subtotal": total,
        "discount_total": Decimal(0),
        "tax_total": Decimal(0),
        "credit_total": Decimal(0),
        "total": total,
        "lines": list(lines),
    }


def test_added_removed_changed_and_unchanged_with_totals_per_currency():
    before = {
        ("hq", "2026-02-01"): invoice(line(), line(serviced="b", amount="5.00")),
        ("gone", "2026-02-01"): invoice(line(amount="7.00")),
        ("same", "2026-02-01"): invoice(line(amount="1.00")),
    }
    after = {
        ("hq", "2026-02-01"): invoice(line(amount="12.00", quantity="12"), line(serviced="c")),
        ("new", "2026-02-01"): invoice(line(amount="300", quantity="1"), currency="JPY"),
        ("same", "2026-02-01"): invoice(line(amount="1.00")),
    }
    diff = diff_invoices(before, after)
    assert diff["counts"] == {"added": 1, "changed": 1, "removed": 1, "unchanged": 1}
    assert [(i["billed_customer"], i["change"]) for i in diff["invoices"]] == [
        ("gone", "removed"),
        ("hq", "changed"),
        ("new", "added"),
    ]
    hq = diff["invoices"][1]
    assert (hq["old_total"], hq["new_total"], hq["difference"]) == ("15.00", "22.00", "7.00")
    assert [(x["change"], x["serviced_customer"]) for x in hq["lines"]] == [
        ("changed", "a"),
        ("added", "c"),
        ("removed", "b"),
    ]
    assert [value_text(x, "amount") for x in hq["lines"]] == ["10.00 → 12.00", "10.00", "5.00"]
    assert value_text(hq["lines"][0], "quantity") == "10 → 12"
    assert diff["totals"] == [
        {"currency": "JPY", "old": "0", "new": "300", "difference": "300"},
        {"currency": "USD", "old": "22.00", "new": "22.00", "difference": "0.00"},
    ]


def test_lines_with_one_name_pair_in_order_and_tax_lines_by_what_they_tax():
    usage_tax = line(kind="tax", amount="1.90", quantity=None, description="19% on Units")
    discount_tax = line(kind="tax", amount="-0.19", quantity=None, description="19% on Off")
    old = invoice(line(amount="1.00"), line(amount="2.00"), usage_tax, discount_tax)
    before = {("hq", "d"): old}
    after = {
        ("hq", "d"): invoice(
            line(amount="1.00"),
            line(amount="3.00"),
            {**usage_tax, "amount": Decimal("2.09")},
            discount_tax,
        )
    }
    changes = diff_invoices(before, after)["invoices"][0]["lines"]
    assert [(x["kind"], x["old_amount"], x["new_amount"]) for x in changes] == [
        ("usage", "2.00", "3.00"),
        ("tax", "1.90", "2.09"),
    ]


def test_issuing_is_a_change_of_status_and_number_only():
    before = {("hq", "d"): invoice(line())}
    after = {("hq", "d"): invoice(line(), status="issued", number="INV-2026-000001")}
    change = diff_invoices(before, after)["invoices"][0]
    assert change["lines"] == [] and change["difference"] == "0.00"
    assert status_text(change) == "draft → issued INV-2026-000001"
    assert signed("0.00") == "0.00" and signed("3.10") == "+3.10" and signed("-2") == "-2"


def test_the_artifact_keeps_text_from_the_store_literal():
    import re

    from flows.close_diff import markdown
    from flows.runtime import md

    crafted = "[pay here](https://evil.example) | *urgent*"
    before = {(crafted, "2026-02-01"): invoice(line(serviced=crafted, product=crafted))}
    after = {(crafted, "2026-02-01"): invoice(line(serviced=crafted, amount="11.00"))}
    for old, new in ((before, after), ({}, after)):
        result = {"through": "2026-02-01", "issue": False, "dry_run": True}
        text = markdown(result | diff_invoices(old, new))
        assert "would change (dry run: nothing was written)" in text
        assert md(crafted) in text and crafted not in text
        assert not re.search(r"(?<!\\)\]\(", text)  # no link
        # Cells as the tables have them (4, 7 and 8 columns): no cell break from the store.
        assert all(row.count("|") - row.count("\\|") in (0, 5, 8, 9) for row in text.splitlines())
