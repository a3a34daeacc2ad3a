"""Roll-up consolidation: charges into one draft invoice per billed customer and billing
date, lines grouped by serviced customer (the billed customer first, then by name), then
bundle, then product, with one tax line per taxed line.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections import defaultdict
from datetime import UTC, date, datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain.charge import GROUPING_FIELDS, LINE_FIELDS, pick
from billing_core.domain.model import CustomerInfo
from billing_core.domain.money import ZERO
from billing_core.domain.tax import jurisdiction_for, tax_line
from billing_core.invoices.lifecycle import discard_draft
from billing_core.report import StepReport
from billing_core.store import postgres
from billing_core.store.models import Charge, Invoice, InvoiceCharge, InvoiceLine, charges_joined
from billing_core.store.reference import ALL, Scope, load_customers, tax_rates
from billing_core.store.rows import delete_in, dicts, insert_rows

# Within a product: its charges, then late-usage adjustments, then discounts on it. Lines
# not tied to one product (subscription-wide discounts, minimum true-ups) close the section.
KIND_RANK = {"fixed": 0, "usage": 0, "adjustment": 1, "discount": 2, "minimum": 3}
PRODUCT_KINDS = ("fixed", "usage", "adjustment")
SUBTOTAL_KINDS = ("fixed", "usage", "minimum", "adjustment")
# The columns of a charge the roll-up reads.
READ_COLUMNS = ("id", *pick(*LINE_FIELDS, *GROUPING_FIELDS))


class ConsolidationError(RuntimeError):
    """Charges that cannot share one invoice (the import should have refused them)."""


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
        from billing_core.steps.rate import average_unit_price

        first["unit_price"] = (
            lines[0]["unit_price"]
            if first["kind"] == "fixed" and len({x["unit_price"] for x in lines}) == 1
            else average_unit_price(amount, quantity)
        )
    return first


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
    lines = [_line(c) for c in visible]

    # A summary pool is one line for the block; its serviced customer is the pool owner.
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
    lines = merged

    # rollup_lines: summary merges the same kind, price and period across customers.
    if billed.rollup_lines == "summary":
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for line in lines:
            where = (
                jurisdiction_for(line, billed, customers)
                if billed.tax_basis == "serviced"
                else None
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
        lines = []
        for group in groups.values():
            if len(group) == 1 and group[0]["serviced_customer_id"] == billed.id:
                lines.append(group[0])
            else:
                merged_line = _merge(group, billed.id)
                if billed.tax_basis == "serviced":
                    merged_line["_jurisdiction"] = jurisdiction_for(group[0], billed, customers)
                lines.append(merged_line)

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
    for line in out:
        line.pop("_jurisdiction", None)
        if not with_parts:
            line.pop("_parts", None)
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


def consolidate(
    session: Session,
    through: date,
    scope: Scope = ALL,
    now: datetime | None = None,
    issuer_id: str = "default",
) -> StepReport:
    """Build or rebuild the drafts billed on or before `through` from their charges.

    A draft whose lines come out the same is left alone (with its credits); one that
    differs is discarded (its credit consumption rolled back) and built anew.
    """
    now = now or datetime.now(UTC)
    report = StepReport("consolidate roll-ups")
    ch = Charge.__table__
    v = Invoice.__table__.c
    # Only what the lines, the grouping and the links need: not the price terms (a JSON
    # document per charge), the windows (two instants to convert per charge) or the dates
    # the rating used.
    columns = [ch.c[name] for name in READ_COLUMNS]
    charges = dicts(
        session,
        sa.select(*columns, InvoiceCharge.__table__.c.invoice_id)
        .select_from(charges_joined())
        .where(sa.or_(v.id.is_(None), v.status == "draft"))
        .where(ch.c.billing_date <= through)
        .where(scope.where(ch.c.family_id))
        .order_by(ch.c.charge_key),
    )
    report.read = len(charges)
    groups: dict[tuple[str, date], list[dict]] = defaultdict(list)
    for charge in charges:
        groups[(charge["billed_customer_id"], charge["billing_date"])].append(charge)
    invoices = {
        (r.billed_customer_id, r.billing_date): r
        for r in session.execute(
            sa.select(Invoice.__table__)
            .where(v.billing_date <= through)
            .where(scope.where(v.family_id))
        )
    }
    customers = load_customers(session, scope)
    rates = tax_rates(session)
    kept = discarded = 0
    new: list[tuple[dict, list[dict], list[dict]]] = []  # invoice row, its lines, charges
    assign: list[tuple[int, int, int | None]] = []  # (charge, invoice to set, invoice it had)
    for key in sorted(groups):
        billed_id, billing_date = key
        group = groups[key]
        existing = invoices.get(key)
        if existing is not None and existing.status != "draft":
            report.warnings.append(
                f"{len(group)} charge(s) for {billed_id} on {billing_date} wait: that "
                f"invoice is {existing.status} (the next close places them on a later date)"
            )
            continue
        billed = customers[billed_id]
        currencies = sorted({c["currency"] for c in group})
        if len(currencies) > 1:
            # No currency conversion: the import refuses such roll-ups, so this is a store
            # edited behind the product's back. Stop rather than add up unlike amounts.
            raise ConsolidationError(
                f"charges for {billed_id} on {billing_date} are in {', '.join(currencies)}: "
                "a roll-up must stay in one currency"
            )
        currency = currencies[0]
        lines = build_lines(group, billed, customers, rates, currency)
        if not lines:
            if existing is not None:
                discard_draft(session, existing, "no charges left", now)
                discarded += 1
            continue
        fingerprint = content_hash(lines, currency)
        if existing is not None and existing.content_hash == fingerprint:
            kept += 1
            assign.extend(
                (c["id"], existing.id, c["invoice_id"])
                for c in group
                if c["invoice_id"] != existing.id
            )
            continue
        if existing is not None:
            discard_draft(session, existing, "rebuilt by a close", now)
            discarded += 1
        new.append(
            (
                {
                    "issuer_id": issuer_id,
                    "number": None,
                    "status": "draft",
                    "billed_customer_id": billed_id,
                    "family_id": billed.family_id,
                    "billing_date": billing_date,
                    "currency": currency,
                    "content_hash": fingerprint,
                    "created_at": now,
                    **totals(lines),
                },
                lines,
                group,
            )
        )
    # New drafts in one statement, their lines in one more, then every charge pointed at
    # its invoice: a handful of round trips whatever the number of invoices.
    if new:
        ids = _insert_invoices(session, [row for row, _, _ in new])
        rows: list[dict] = []
        for invoice_id, (_, lines, group) in zip(ids, new, strict=True):
            for line in lines:  # the lines are this function's own: no copies
                line["invoice_id"] = invoice_id
            rows += lines
            assign.extend((c["id"], invoice_id, c["invoice_id"]) for c in group)
        insert_rows(session, InvoiceLine, rows)
    _assign_charges(session, assign)
    for key, existing in invoices.items():
        if key not in groups and existing.status == "draft":
            discard_draft(session, existing, "no charges left", now)
            discarded += 1
    report.written = len(new)
    report.deleted = discarded
    report.details.update(drafts_kept=kept, drafts_built=len(new), drafts_discarded=discarded)
    return report


def _insert_invoices(session: Session, rows: list[dict]) -> list[int]:
    """Insert invoice rows; their ids, in order."""
    return postgres.insert_ids(session, Invoice, rows)


def _assign_charges(session: Session, assign: list[tuple[int, int, int | None]]) -> None:
    """Put each charge on its invoice: its old link (to a draft) goes, the new one is
    copied in. No charge row is rewritten; a charge that had no invoice has no link to
    delete (on a first close, none has)."""
    if not assign:
        return
    link = InvoiceCharge.__table__
    delete_in(session, link.c.charge_id, [c for c, _, old in assign if old is not None])
    insert_rows(session, InvoiceCharge, [{"charge_id": c, "invoice_id": i} for c, i, _ in assign])
