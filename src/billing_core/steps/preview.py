"""The invoices a close would build for one customer, computed and thrown away (Kill Bill's
dry run, Lago's upcoming invoice).

The close's own steps run for the customer's family inside one transaction that is rolled
back: the preview is exactly what a close would build, and nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.invoices.contexts import contexts
from billing_core.steps.close import STEPS
from billing_core.store.models import Charge, Customer, Invoice, InvoiceCharge
from billing_core.store.reference import Scope


class PreviewError(ValueError):
    """A preview that cannot be made (unknown customer)."""


@dataclass
class Preview:
    """What a close through `through` would leave for one customer."""

    customer_id: str
    customer_name: str
    through: date
    # (invoice row, document context): drafts billed to the customer, or, when it bills
    # to another customer, the drafts that carry its lines.
    invoices: list[tuple[Any, dict]] = field(default_factory=list)
    billed_elsewhere: bool = False
    warnings: list[str] = field(default_factory=list)


def preview(
    session: Session, customer_id: str, through: date, store_name: str = "billing"
) -> Preview:
    """Run the close's steps that build the drafts (recalculation, rating, consolidation
    and credits) for the customer's family in this session and read the drafts they leave.
    The caller rolls the session back."""
    c = Customer.__table__.c
    customer = session.execute(
        sa.select(c.id, c.name, c.family_id).where(c.id == customer_id)
    ).first()
    if customer is None:
        raise PreviewError(f"no customer {customer_id!r}")
    scope = Scope.of([customer.family_id])
    result = Preview(customer.id, customer.name, through)
    for step in STEPS:
        if step.builds:
            result.warnings += step.run(session, through, scope).warnings
    v = Invoice.__table__.c
    drafts = v.status == "draft", v.billing_date <= through, v.family_id == customer.family_id
    found = list(
        session.execute(
            sa.select(Invoice.__table__)
            .where(*drafts, v.billed_customer_id == customer.id)
            .order_by(v.billing_date, v.id)
        )
    )
    if not found:
        # Its charges ride on those invoices even where they leave no line (no usage).
        ch = Charge.__table__.c
        link = InvoiceCharge.__table__.c
        carrying = (
            sa.select(link.invoice_id)
            .join_from(InvoiceCharge.__table__, Charge.__table__, ch.id == link.charge_id)
            .where(ch.serviced_customer_id == customer.id)
        )
        found = list(
            session.execute(
                sa.select(Invoice.__table__)
                .where(*drafts, v.id.in_(carrying))
                .order_by(v.billing_date, v.billed_customer_id, v.id)
            )
        )
        result.billed_elsewhere = bool(found)
    data = contexts(session, found, store_name)
    result.invoices = [(invoice, data[invoice.id]) for invoice in found]
    return result
