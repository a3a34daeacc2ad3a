"""What a close changes in the invoices, as an operator reads it: invoices added, removed
and changed, per billed customer and billing date, with old and new totals and the lines
that differ, and the totals per currency.

Pure: it compares two pictures of the invoices (`before`, `after`), each keyed by
(billed customer, billing date) — one invoice per billed customer and billing date, as
the store holds them — and says nothing about how the pictures were taken (a dry run's
rolled-back transaction, or the drafts a real close replaced).

An invoice picture is a dict with `status`, `number`, `currency`, the totals (`subtotal`,
`discount_total`, `tax_total`, `credit_total`, `total`, Decimals) and `lines`; a line has
`serviced_customer`, `subscription`, `price`, `product`, `kind`, `description`,
`period_start`, `period_end` (inclusive, ISO text), `grant`, and `quantity`,
`unit_price`, `amount` (Decimals, or None).
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from billing_core.domain.money import money_str, plain

ZERO = Decimal(0)
TOTALS = ("subtotal", "discount_total", "tax_total", "credit_total", "total")
# What names a line across two versions of an invoice; what may change in it.
LINE_KEY = (
    "serviced_customer",
    "kind",
    "subscription",
    "price",
    "product",
    "period_start",
    "period_end",
    "grant",
)
LINE_VALUES = ("quantity", "unit_price", "amount")

Key = tuple[str, str]  # (billed customer, billing date as ISO text)

# An invoice's lines are listed for this many invoices of a real close's diff (the
# artifact's line tables); an added invoice's beyond them are counted, not listed.
LISTED_LINE_TABLES = 50


def _line_key(line: dict) -> tuple:
    key = tuple(line[name] for name in LINE_KEY)
    # A tax line names the line it taxes in its description ("19% on Platform"): two tax
    # lines on one price and period (its usage and its discount) are told apart by it.
    return key + ((line["description"],) if line["kind"] == "tax" else ())


def _line_change(change: str, old: dict | None, new: dict | None, currency: str) -> dict:
    line = new if new is not None else old
    assert line is not None

    def value(side: dict | None, name: str) -> str | None:
        if side is None or side[name] is None:
            return None
        return money_str(side[name], currency) if name == "amount" else plain(side[name])

    out: dict[str, Any] = {"change": change}
    out.update({name: line[name] for name in LINE_KEY if name != "grant"})
    if line["grant"]:
        out["grant"] = line["grant"]
    for name in LINE_VALUES:
        out[f"old_{name}"] = value(old, name)
        out[f"new_{name}"] = value(new, name)
    return out


def diff_lines(old: list[dict], new: list[dict], currency: str) -> list[dict]:
    """The lines added, removed and changed from `old` to `new`: lines are matched by what
    names them (`LINE_KEY`), several with the same name in their order on the invoice; a
    matched line whose quantity, unit price or amount differs is changed. In the new
    invoice's order, the removed lines after."""
    olds: dict[tuple, list[int]] = defaultdict(list)
    for index, line in enumerate(old):
        olds[_line_key(line)].append(index)
    out: list[dict] = []
    for line in new:
        mates = olds.get(_line_key(line))
        if not mates:
            out.append(_line_change("added", None, line, currency))
            continue
        before = old[mates.pop(0)]
        if any(before[name] != line[name] for name in LINE_VALUES):
            out.append(_line_change("changed", before, line, currency))
    for index in sorted(i for left in olds.values() for i in left):
        out.append(_line_change("removed", old[index], None, currency))
    return out


def _same(old: dict, new: dict) -> bool:
    return all(
        old[name] == new[name] for name in ("status", "number", "currency", *TOTALS)
    ) and not diff_lines(old["lines"], new["lines"], new["currency"])


def _invoice_change(key: Key, change: str, old: dict | None, new: dict | None) -> dict:
    either = new if new is not None else old
    assert either is not None
    currency = either["currency"]
    old_total = old["total"] if old is not None else None
    new_total = new["total"] if new is not None else None
    # An added invoice whose lines were not read (`lines` None): its lines are all added,
    # counted, not listed.
    unlisted = new["line_count"] if new is not None and new["lines"] is None else 0
    lines = diff_lines(
        old["lines"] if old is not None else [],
        new["lines"] if new is not None and new["lines"] is not None else [],
        currency,
    )
    return {
        "change": change,
        "billed_customer": key[0],
        "billing_date": key[1],
        "currency": currency,
        "old_currency": old["currency"] if old is not None else None,
        "old_status": old["status"] if old is not None else None,
        "new_status": new["status"] if new is not None else None,
        "old_number": old["number"] if old is not None else None,
        "new_number": new["number"] if new is not None else None,
        "old_total": money_str(old_total, old["currency"]) if old is not None else None,
        "new_total": money_str(new_total, currency) if new is not None else None,
        # In the invoice's currency; none when the billed customer's currency changed.
        "difference": (
            money_str((new_total or ZERO) - (old_total or ZERO), currency)
            if old is None or old["currency"] == currency
            else None
        ),
        "lines": lines,
        **({"unlisted_lines": unlisted} if unlisted else {}),
    }


def diff_invoices(before: dict[Key, dict], after: dict[Key, dict]) -> dict:
    """The change from `before` to `after`: every invoice added, removed or changed (by
    billed customer, then billing date), the counts, and per currency the old and new
    totals of those invoices and their difference (an unchanged invoice adds the same to
    both sides, so it is left out)."""
    invoices: list[dict] = []
    counts = {"added": 0, "changed": 0, "removed": 0, "unchanged": 0}
    sums: dict[str, list[Decimal]] = defaultdict(lambda: [ZERO, ZERO])
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key), after.get(key)
        if old is not None and new is not None and _same(old, new):
            counts["unchanged"] += 1
            continue
        change = "added" if old is None else "removed" if new is None else "changed"
        counts[change] += 1
        invoices.append(_invoice_change(key, change, old, new))
        if old is not None:
            sums[old["currency"]][0] += old["total"]
        if new is not None:
            sums[new["currency"]][1] += new["total"]
    totals = [
        {
            "currency": currency,
            "old": money_str(old_sum, currency),
            "new": money_str(new_sum, currency),
            "difference": money_str(new_sum - old_sum, currency),
        }
        for currency, (old_sum, new_sum) in sorted(sums.items())
    ]
    return {"counts": counts, "invoices": invoices, "totals": totals}


# --- the diff as text (the terminal and the artifact say it the same way) ------------------


def signed(difference: str | None) -> str:
    """A difference with its sign (+12.00, -3.50, 0.00); none: empty."""
    if difference is None:
        return ""
    if difference.startswith("-") or not difference.strip("0."):
        return difference
    return "+" + difference


def status_text(invoice: dict) -> str:
    """An invoice change's status: `draft` (as it is, was or will be), or
    `draft → issued INV-2026-000001`."""

    def one(status: str | None, number: str | None) -> str | None:
        return None if status is None else f"{status} {number}" if number else status

    old = one(invoice["old_status"], invoice["old_number"])
    new = one(invoice["new_status"], invoice["new_number"])
    if old is None or new is None or old == new:
        return new or old or ""
    return f"{old} → {new}"


def value_text(line: dict, name: str) -> str:
    """A line change's `quantity` or `amount`: its value, or `old → new` when changed."""
    old, new = line[f"old_{name}"], line[f"new_{name}"]
    if line["change"] == "added":
        return new or ""
    if line["change"] == "removed":
        return old or ""
    return (new or "") if old == new else f"{old or '—'} → {new or '—'}"


def period_text(line: dict) -> str:
    """A line change's service period, first to last day."""
    return f"{line['period_start']} – {line['period_end']}" if line["period_start"] else ""
