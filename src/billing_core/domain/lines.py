"""The lines of one invoice from its charges: grouped by serviced customer (the billed
customer first, then by name), then bundle, then product, with one tax line per taxed
line; their totals and their fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import date
from decimal import Decimal

from billing_core.domain.charge import average_unit_price
from billing_core.domain.model import CustomerInfo
from billing_core.domain.money import ZERO
from billing_core.domain.tax import jurisdiction_for, tax_line

# Within a product: its charges, then late-usage adjustments, then discounts on it. Lines
# not tied to one product (subscription-wide discounts, minimum true-ups) close the section.
KIND_RANK = {"fixed": 0, "usage": 0, "adjustment": 1, "discount": 2, "minimum": 3}
PRODUCT_KINDS = ("fixed", "usage", "adjustment")
SUBTOTAL_KINDS = ("fixed", "usage", "minimum", "adjustment")


def _line(charge: dict) -> dict:
    return {
        "serviced_customer_id": charge["serviced_customer_id"],
        "subscription_id": charge["subscription_id"],
        "price_code": charge["price_code"],
        "product": charge["product"],
        "bundle": charge["bundle"],
        "kind": charge["kind"],
        "description": charge["description"],
        "period_start": charge["period_start"],
        "period_end": charge["period_end"],
        "quantity": charge["quantity"],
        "unit_price": charge["unit_price"],
        "amount": charge["amount"],
        "charge_id": charge["id"],
        "grant_id": None,
        "tax_rate": None,
        "jurisdiction": None,
        "taxed_position": None,
        # Who the amount belongs to: (serviced customer, subscription, amount). Merged
        # lines keep every part, so credits can still tell whose lines they offset.
        "_parts": [(charge["serviced_customer_id"], charge["subscription_id"], charge["amount"])],
    }


def _merge(lines: list[dict], serviced: str) -> dict:
    """Several lines of one kind, price and period as one (quantities and amounts added)."""
    first = dict(lines[0])
    quantity = sum((x["quantity"] or ZERO for x in lines), ZERO)
    amount = sum((x["amount"] for x in lines), ZERO)
    first.update(
        serviced_customer_id=serviced,
        quantity=quantity,
        amount=amount,
        charge_id=None,
        _parts=[part for x in lines for part in x["_parts"]],
        subscription_id=first["subscription_id"]
        if len({x["subscription_id"] for x in lines}) == 1
        else None,
    )
    if len(lines) > 1 and quantity:
        first["unit_price"] = (
            lines[0]["unit_price"]
            if first["kind"] == "fixed" and len({x["unit_price"] for x in lines}) == 1
            else average_unit_price(amount, quantity)
        )
    return first


def section_order(customer_ids: Iterable[str], billed: str, names: dict[str, str]) -> list[str]:
    """The order of an invoice's sections: the billed customer's own first, then the
    others by name (then id)."""
    return sorted(set(customer_ids), key=lambda c: (c != billed, names.get(c, c).casefold(), c))


def build_lines(
    charges: list[dict],
    billed: CustomerInfo,
    customers: dict[str, CustomerInfo],
    rates: dict[str, Decimal],
    currency: str,
    with_parts: bool = False,
) -> list[dict]:
    """The lines of one invoice, positioned, with their tax lines (credits come later).

    With `with_parts`, each line keeps `_parts`: the (serviced customer, subscription,
    amount) it is made of, which merged lines no longer show.
    """
    visible = [c for c in charges if not (c["quantity"] == 0 and c["amount"] == 0)]
    lines = _pooled(visible, [_line(c) for c in visible])
    if billed.rollup_lines == "summary":
        lines = _summarized(lines, billed, customers)
    out = _positioned(lines, billed, customers, rates, currency, with_parts)
    for line in out:
        line.pop("_jurisdiction", None)
        if not with_parts:
            line.pop("_parts", None)
    return out


def _pooled(visible: list[dict], lines: list[dict]) -> list[dict]:
    """A summary pool is one line for the block; its serviced customer is the pool owner."""
    merged: list[dict] = []
    pools: dict[tuple, list[dict]] = defaultdict(list)
    for charge, line in zip(visible, lines, strict=True):
        if charge["pool"] == "summary" and charge["kind"] == "usage":
            pools[
                (
                    charge["subscription_id"],
                    charge["price_code"],
                    charge["period_start"],
                    charge["pool_owner_id"],
                )
            ].append(line)
        else:
            merged.append(line)
    for (_, _, _, owner), group in pools.items():
        merged.append(_merge(group, owner))
    return merged


def _summarized(
    lines: list[dict], billed: CustomerInfo, customers: dict[str, CustomerInfo]
) -> list[dict]:
    """rollup_lines: summary merges the same kind, price and period across customers."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for line in lines:
        where = (
            jurisdiction_for(line, billed, customers) if billed.tax_basis == "serviced" else None
        )
        groups[
            (
                line["kind"],
                line["price_code"],
                line["product"],
                line["period_start"],
                line["period_end"],
                where,
            )
        ].append(line)
    out = []
    for group in groups.values():
        if len(group) == 1 and group[0]["serviced_customer_id"] == billed.id:
            out.append(group[0])
        else:
            merged_line = _merge(group, billed.id)
            if billed.tax_basis == "serviced":
                merged_line["_jurisdiction"] = jurisdiction_for(group[0], billed, customers)
            out.append(merged_line)
    return out


def _order(
    lines: list[dict], billed: CustomerInfo, customers: dict[str, CustomerInfo]
) -> tuple[Callable[[str], tuple], Callable[[dict], tuple]]:
    """How an invoice's sections (by serviced customer) and the lines within each sort."""

    def section_key(customer_id: str) -> tuple:
        info = customers.get(customer_id)
        name = info.name if info else customer_id
        return (customer_id != billed.id, name.casefold(), customer_id)

    # A discount on one price sits under that price's product.
    products = {
        (line["serviced_customer_id"], line["price_code"]): (line["bundle"], line["product"])
        for line in lines
        if line["kind"] in PRODUCT_KINDS and line["price_code"]
    }

    def line_key(line: dict) -> tuple:
        kind = line["kind"]
        anchor = products.get((line["serviced_customer_id"], line["price_code"]))
        if kind in PRODUCT_KINDS or (kind == "discount" and anchor is not None):
            group, rank = 0, 0
            bundle, product = anchor if kind == "discount" else (line["bundle"], line["product"])
        else:
            group, rank = 1, KIND_RANK.get(kind, 9)
            bundle, product = line["bundle"], line["product"]
        return (
            group,
            rank,
            bundle is None,
            bundle or "",
            product or "",
            KIND_RANK.get(kind, 9),
            line["period_start"] or date.min,
            line["price_code"] or "",
            line["subscription_id"] or "",
            line["description"] or "",
        )

    return section_key, line_key


def _positioned(
    lines: list[dict],
    billed: CustomerInfo,
    customers: dict[str, CustomerInfo],
    rates: dict[str, Decimal],
    currency: str,
    with_parts: bool,
) -> list[dict]:
    """The lines section by section, each followed by its tax lines, numbered in order."""
    section_key, line_key = _order(lines, billed, customers)
    sections: dict[str, list[dict]] = defaultdict(list)
    for line in lines:
        sections[line["serviced_customer_id"]].append(line)
    out: list[dict] = []
    position = 0
    for customer_id in sorted(sections, key=section_key):
        section = sorted(sections[customer_id], key=line_key)
        for line in section:
            position += 1
            line["position"] = position
            out.append(line)
        for line in section:
            where = line.pop("_jurisdiction", None) or jurisdiction_for(line, billed, customers)
            tax = tax_line(line, where, rates, currency)
            if tax is not None:
                position += 1
                tax["position"] = position
                if with_parts:
                    tax["_parts"] = _tax_parts(line["_parts"], tax["amount"], tax["tax_rate"])
                out.append(tax)
    return out


def _tax_parts(parts: list[tuple], tax: Decimal, rate: Decimal) -> list[tuple]:
    """A tax line's amount shared over the parts of the line it taxes: each part's exact
    tax, the rounding difference on the largest part, so the shares sum to the line."""
    if len(parts) == 1:
        return [(parts[0][0], parts[0][1], tax)]
    shares = [(c, s, a * rate) for c, s, a in parts]
    rest = tax - sum((x[2] for x in shares), ZERO)
    largest = max(range(len(parts)), key=lambda i: (abs(parts[i][2]), -i))
    return [(c, s, a + rest if i == largest else a) for i, (c, s, a) in enumerate(shares)]


def totals(lines: list[dict]) -> dict[str, Decimal]:
    """subtotal, discount, tax and credit totals of lines, and the total."""
    subtotal = sum((x["amount"] for x in lines if x["kind"] in SUBTOTAL_KINDS), ZERO)
    discount = sum((x["amount"] for x in lines if x["kind"] == "discount"), ZERO)
    tax = sum((x["amount"] for x in lines if x["kind"] == "tax"), ZERO)
    credit = sum((x["amount"] for x in lines if x["kind"] == "credit"), ZERO)
    return {
        "subtotal": subtotal,
        "discount_total": discount,
        "tax_total": tax,
        "credit_total": credit,
        "total": subtotal + discount + tax + credit,
    }


_encode = json.JSONEncoder(default=str, separators=(",", ":"), check_circular=False).encode


def content_hash(lines: list[dict], currency: str) -> str:
    """Fingerprint of an invoice's lines (charge ids excluded: re-rating may renumber).

    The lines' fields are written in name order, their values as JSON (decimals and dates
    as text), so equal lines give equal fingerprints in any process.
    """
    names = {k for line in lines for k in line}
    keys = sorted(names - {"charge_id"})
    if len(keys) > 1 and all(len(line) == len(names) for line in lines):
        values = operator.itemgetter(*keys)  # every line has every key: read them at once
        rows: list = [values(line) for line in lines]
    else:
        rows = [[line.get(k) for k in keys] for line in lines]
    return hashlib.sha256(_encode([currency, keys, rows]).encode()).hexdigest()
