"""Schedule recalculation, the store part: bring `billing_periods` in line with the plan.

Slots already billed on an invoice that is no longer a draft are never touched; slots due
after the close date are left for a later close.
"""

from __future__ import annotations

import dataclasses
from datetime import date

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain.planning import Slot, plan
from billing_core.report import StepReport
from billing_core.store.diff import write_diff
from billing_core.store.models import BillingPeriod, Charge, Invoice, charges_joined
from billing_core.store.reference import ALL, Scope, frozen_dates, load_reference
from billing_core.store.rows import records

# What a recalculation compares with the stored slot of the same key: every field of a
# planned slot but its key (its identity).
COMPARED = tuple(f.name for f in dataclasses.fields(Slot) if f.name != "slot_key")


def frozen_charge_keys(session: Session, scope: Scope = ALL) -> set[str]:
    """Keys of charges on invoices that are no longer drafts."""
    ch = Charge.__table__.c
    v = Invoice.__table__.c
    return set(
        session.execute(
            sa.select(ch.charge_key)
            .select_from(charges_joined(outer=False))
            .where(v.status != "draft")
            .where(scope.where(ch.family_id))
        ).scalars()
    )


def recalculate(session: Session, through: date, scope: Scope = ALL) -> StepReport:
    """Write the slots due on or before `through` for the scope; returns what changed."""
    report = StepReport("recalculate schedules")
    ref = load_reference(session, scope)
    result = plan(ref, through, frozen_dates(session, scope))
    report.warnings += result.warnings
    frozen = frozen_charge_keys(session, scope)
    bp = BillingPeriod.__table__
    existing = {
        r.slot_key: r
        for r in records(
            session,
            sa.select(bp).where(bp.c.due_date <= through).where(scope.where(bp.c.family_id)),
        )
    }
    report.read = len(ref.subscriptions)
    wanted = {s.slot_key: s for s in result.slots if s.slot_key not in frozen}
    # A slot a later close wrote may now be due earlier (a changed timing or billing day):
    # it is the same slot, updated in place rather than written twice. Over every family,
    # what the read above left out is what is due after `through`.
    beyond = bp.c.due_date > through if scope.families is None else None
    # (Rows found that way are all wanted: only slots due by `through` go stale.)
    report.written, report.deleted = write_diff(
        session,
        BillingPeriod,
        "slot_key",
        existing,
        wanted,
        COMPARED,
        later=(sa.select(bp), beyond),
        is_stale=lambda key, _: key not in frozen,
        by_attribute=True,
        as_insert=Slot.row,
    )
    report.details["slots"] = len(wanted)
    report.details["waiting"] = sum(
        1 for s in wanted.values() if s.billing_date is None or s.billing_date > through
    )
    return report
