"""Shards of customer families: the units a close fans its steps out over (a family is
never split), weighed by customers or, for documents, by what there is to render.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

import sqlalchemy as sa

from billing_core.steps.render import RENDERED
from billing_core.store.engine import unit_of_work
from billing_core.store.models import Customer, Invoice, InvoiceCharge, InvoiceDocument, InvoiceLine


def all_families() -> list[str]:
    with unit_of_work() as session:
        c = Customer.__table__.c
        return sorted(session.execute(sa.select(c.family_id).distinct()).scalars())


def without(shards: list[list[str] | None], failed: Iterable[str]) -> list[list[str] | None]:
    """Shards of families less the failed ones (the whole store becomes an explicit list);
    shards left empty are dropped."""
    failed = set(failed)
    if not failed:
        return shards
    out: list[list[str] | None] = []
    for shard in shards:
        families = all_families() if shard is None else shard
        kept = [f for f in families if f not in failed]
        if kept:
            out.append(kept)
    return out


def shards(count: int) -> list[list[str]]:
    """Families split into `count` shards of similar size (a family is never split)."""
    return balanced(customer_weights(), count)


def customer_weights(families: Iterable[str] | None = None) -> dict[str, int]:
    """Each family's customers (of `families`, else every family, and any family only
    invoices still name, weighing nothing)."""
    with unit_of_work() as session:
        c = Customer.__table__.c
        counted = sa.select(c.family_id, sa.func.count()).group_by(c.family_id)
        if families is not None:
            families = list(families)
            counted = counted.where(c.family_id.in_(families))
        weights = dict(session.execute(counted).all())
        if families is None:
            _invoiced_too(session, weights)
        return weights


def _invoiced_too(session, weights: dict[str, int]) -> None:
    """Every family invoices name, weighing nothing unless already weighed (a family with
    invoices and no customer left still has its place in a part)."""
    v = Invoice.__table__.c
    for family in session.execute(sa.select(v.family_id).distinct()).scalars():
        weights.setdefault(family, 0)


# What a document costs to lay out, in rows of its tables: a one-line invoice still has
# two pages to lay out (measured: about 0.13 s a document and 0.003 s a row).
DOCUMENT_ROWS = 40


def render_shards(through: date, count: int) -> list[list[str]]:
    """Families split into `count` shards of similar rendering work (a family is never
    split): what weighs is the documents a shard will write, not its customers
    (`render_weights`)."""
    return balanced(render_weights(through), count)


def render_weights(
    through: date | None,
    families: Iterable[str] | None = None,
    invoice_ids: list[int] | None = None,
) -> dict[str, int]:
    """What each family (of `families`, else every one) has to render through `through`,
    of the invoices `invoice_ids` (else all). A family billed child by child writes a
    document per child; one rolled up to its root, one.

    Counted: invoices still waiting for their final documents, and drafts (whose
    previews are rewritten when they change), each as DOCUMENT_ROWS plus its lines and
    charges. Families with nothing to write weigh nothing but keep their place, so the
    step still checks their issued documents are on disk.
    """
    with unit_of_work() as session:
        c = Customer.__table__.c
        v = Invoice.__table__.c
        d = InvoiceDocument.__table__.c
        everyone = sa.select(c.family_id).distinct()
        if families is not None:
            families = list(families)
            everyone = everyone.where(c.family_id.in_(families))
        weights = dict.fromkeys(session.execute(everyone).scalars(), 0)
        if families is None:
            _invoiced_too(session, weights)
        pending = (
            sa.select(v.id, v.family_id)
            .where(v.status.in_(RENDERED))
            .where(
                (v.status == "draft") | ~sa.exists().where(d.invoice_id == v.id, d.final.is_(True))
            )
        )
        if through is not None:
            pending = pending.where(v.billing_date <= through)
        if families is not None:
            pending = pending.where(v.family_id.in_(families))
        if invoice_ids is not None:
            pending = pending.where(v.id.in_(invoice_ids))
        pending = pending.subquery()
        for table in (InvoiceLine.__table__, InvoiceCharge.__table__):
            rows = session.execute(
                sa.select(pending.c.family_id, sa.func.count())
                .join_from(pending, table, table.c.invoice_id == pending.c.id)
                .group_by(pending.c.family_id)
            )
            for family, n in rows:
                weights[family] = weights.get(family, 0) + n
        rows = session.execute(
            sa.select(pending.c.family_id, sa.func.count()).group_by(pending.c.family_id)
        )
        for family, n in rows:
            weights[family] = weights.get(family, 0) + DOCUMENT_ROWS * n
    return weights


def balanced(weights: dict[str, int], count: int) -> list[list[str]]:
    """Families into at most `count` shards of similar weight: heaviest first, each to
    the lightest shard so far (ties by family id, so the same store gives the same
    shards)."""
    out: list[list[str]] = [[] for _ in range(max(count, 1))]
    sizes = [0] * len(out)
    for family, weight in sorted(weights.items(), key=lambda fw: (-fw[1], fw[0])):
        target = sizes.index(min(sizes))
        out[target].append(family)
        sizes[target] += weight
    return [s for s in out if s]
