"""Roll-up consolidation: charges into one draft invoice per billed customer and billing
date (its lines are built by `billing_core.domain.lines`); a draft that comes out the same is
kept, one that differs is rebuilt.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain.charge import GROUPING_FIELDS, LINE_FIELDS, pick
from billing_core.domain.lines import build_lines, content_hash, totals
from billing_core.domain.model import CustomerInfo
from billing_core.invoices.lifecycle import discard_draft
from billing_core.report import StepReport, add_money
from billing_core.store.models import Charge, Invoice, InvoiceCharge, InvoiceLine, charges_joined
from billing_core.store.reference import ALL, Scope, load_customers, tax_rates
from billing_core.store.rows import delete_in, dicts, insert_ids, insert_rows

# The columns of a charge the roll-up reads.
READ_COLUMNS = ("id", *pick(*LINE_FIELDS, *GROUPING_FIELDS))


# What a consolidation did to each draft it looked at, as its report counts them.
OUTCOMES = ("created", "changed", "unchanged", "removed")


class ConsolidationError(RuntimeError):
    """Charges that cannot share one invoice (the import should have refused them)."""


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
    charges = _charges(session, through, scope)
    report.read = len(charges)
    groups: dict[tuple[str, date], list[dict]] = defaultdict(list)
    for charge in charges:
        groups[(charge["billed_customer_id"], charge["billing_date"])].append(charge)
    v = Invoice.__table__.c
    invoices = {
        (r.billed_customer_id, r.billing_date): r
        for r in session.execute(
            sa.select(Invoice.__table__)
            .where(v.billing_date <= through)
            .where(scope.where(v.family_id))
        )
    }
    work = _Drafts(
        session, now, issuer_id, load_customers(session, scope), tax_rates(session), report
    )
    for key in sorted(groups):
        work.place(key, groups[key], invoices.get(key))
    _insert_new(session, work.new, work.assign)
    _assign_charges(session, work.assign)
    for key, existing in invoices.items():
        if key not in groups and existing.status == "draft":
            work.discard(existing, "no charges left")
    report.written = len(work.new)
    report.deleted = work.discarded
    report.details.update(
        drafts_kept=work.kept, drafts_built=len(work.new), drafts_discarded=work.discarded
    )
    work.tally.report(report)
    return report


def _charges(session: Session, through: date, scope: Scope) -> list[dict]:
    """The charges billed on or before `through` that are on no invoice or on a draft."""
    ch = Charge.__table__
    v = Invoice.__table__.c
    # Only what the lines, the grouping and the links need: not the price terms (a JSON
    # document per charge), the windows (two instants to convert per charge) or the dates
    # the rating used.
    columns = [ch.c[name] for name in READ_COLUMNS]
    return dicts(
        session,
        sa.select(*columns, InvoiceCharge.__table__.c.invoice_id)
        .select_from(charges_joined())
        .where(sa.or_(v.id.is_(None), v.status == "draft"))
        .where(ch.c.billing_date <= through)
        .where(scope.where(ch.c.family_id))
        .order_by(ch.c.charge_key),
    )


@dataclass
class _Tally:
    """Drafts created, changed (rebuilt), unchanged and removed, and their totals per
    currency before credits (the credit step comes next); a changed draft's previous
    total too. Counted from the rows in hand: no query."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    money: dict[str, dict[str, Decimal]] = field(default_factory=dict)

    def add(self, outcome: str, currency: str, total: Decimal) -> None:
        if outcome in self.counts:  # "changed_from": a changed draft's previous total
            self.counts[outcome] += 1
        add_money(self.money.setdefault(outcome, {}), currency, total)

    def report(self, report: StepReport) -> None:
        report.details.update({f"invoices_{k}": v for k, v in self.counts.items()})
        for outcome, amounts in self.money.items():
            report.money(outcome, amounts)


def _before_credits(invoice: Any) -> Decimal:
    return invoice.total - invoice.credit_total


@dataclass
class _Drafts:
    """What a consolidation decides, one billed customer and billing date at a time,
    before it writes the new drafts."""

    session: Session
    now: datetime
    issuer_id: str
    customers: dict[str, CustomerInfo]
    rates: dict[str, Decimal]
    report: StepReport
    kept: int = 0
    discarded: int = 0
    tally: _Tally = field(default_factory=_Tally)
    # invoice row, its lines, its charges
    new: list[tuple[dict, list[dict], list[dict]]] = field(default_factory=list)
    # (charge, invoice to set, invoice it had)
    assign: list[tuple[int, int, int | None]] = field(default_factory=list)

    def discard(self, existing: Any, reason: str, outcome: str = "removed") -> None:
        discard_draft(self.session, existing, reason, self.now)
        self.discarded += 1
        self.tally.add(outcome, existing.currency, _before_credits(existing))

    def place(self, key: tuple[str, date], group: list[dict], existing: Any) -> None:
        """One billed customer's charges on one billing date: its draft kept, discarded,
        or (re)built."""
        billed_id, billing_date = key
        if existing is not None and existing.status != "draft":
            self.report.warnings.append(
                f"{len(group)} charge(s) for {billed_id} on {billing_date} wait: that "
                f"invoice is {existing.status} (the next close places them on a later date)"
            )
            return
        billed = self.customers[billed_id]
        currencies = sorted({c["currency"] for c in group})
        if len(currencies) > 1:
            # No currency conversion: the import refuses such roll-ups, so this is a store
            # edited behind the product's back. Stop rather than add up unlike amounts.
            raise ConsolidationError(
                f"charges for {billed_id} on {billing_date} are in {', '.join(currencies)}: "
                "a roll-up must stay in one currency"
            )
        currency = currencies[0]
        lines = build_lines(group, billed, self.customers, self.rates, currency)
        if not lines:
            if existing is not None:
                self.discard(existing, "no charges left")
            return
        fingerprint = content_hash(lines, currency)
        if existing is not None and existing.content_hash == fingerprint:
            self.kept += 1
            self.tally.add("unchanged", currency, _before_credits(existing))
            self.assign.extend(
                (c["id"], existing.id, c["invoice_id"])
                for c in group
                if c["invoice_id"] != existing.id
            )
            return
        if existing is not None:
            self.discard(existing, "rebuilt by a close", "changed_from")
        row = {
            "issuer_id": self.issuer_id,
            "number": None,
            "status": "draft",
            "billed_customer_id": billed_id,
            "family_id": billed.family_id,
            "billing_date": billing_date,
            "currency": currency,
            "content_hash": fingerprint,
            "created_at": self.now,
            **totals(lines),
        }
        self.new.append((row, lines, group))
        self.tally.add("created" if existing is None else "changed", currency, row["total"])


def _insert_new(
    session: Session,
    new: list[tuple[dict, list[dict], list[dict]]],
    assign: list[tuple[int, int, int | None]],
) -> None:
    """Write the new drafts and their lines; each of their charges is added to `assign`."""
    # New drafts in one statement, their lines in one more, then every charge pointed at
    # its invoice: a handful of round trips whatever the number of invoices.
    if not new:
        return
    ids = _insert_invoices(session, [row for row, _, _ in new])
    rows: list[dict] = []
    for invoice_id, (_, lines, group) in zip(ids, new, strict=True):
        for line in lines:  # the lines are this function's own: no copies
            line["invoice_id"] = invoice_id
        rows += lines
        assign.extend((c["id"], invoice_id, c["invoice_id"]) for c in group)
    insert_rows(session, InvoiceLine, rows)


def _insert_invoices(session: Session, rows: list[dict]) -> list[int]:
    """Insert invoice rows; their ids, in order."""
    return insert_ids(session, Invoice, rows)


def _assign_charges(session: Session, assign: list[tuple[int, int, int | None]]) -> None:
    """Put each charge on its invoice: its old link (to a draft) goes, the new one is
    copied in. No charge row is rewritten; a charge that had no invoice has no link to
    delete (on a first close, none has)."""
    if not assign:
        return
    link = InvoiceCharge.__table__
    delete_in(session, link.c.charge_id, [c for c, _, old in assign if old is not None])
    insert_rows(session, InvoiceCharge, [{"charge_id": c, "invoice_id": i} for c, i, _ in assign])
