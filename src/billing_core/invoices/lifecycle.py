"""Invoice lifecycle (draft -> issued -> paid | void, draft -> canceled), gapless numbers,
and the views the CLI prints and exports.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain.money import money_str, plain
from billing_core.domain.terms import dates_of
from billing_core.invoices.identity import live as live_identity
from billing_core.invoices.ledger import rollback
from billing_core.store import postgres
from billing_core.store.models import (
    Invoice,
    InvoiceDocument,
    InvoiceLine,
    InvoiceSequence,
)
from billing_core.store.recorded_documents import remove
from billing_core.store.reference import issuer as load_issuer
from billing_core.store.rows import among, chunks, records

ONE_DAY = timedelta(days=1)
STATUSES = ("draft", "issued", "paid", "void", "canceled")


class InvoiceError(ValueError):
    """An invoice operation that is not allowed (wrong status, unknown id)."""


def unlink_after_commit(session: Session, paths: list[str]) -> None:
    """Remove files once the transaction that dropped their rows commits.

    A preview, or a step that fails and rolls back, must leave the documents on disk that
    its (restored) rows point to. A dry run's session (`info["dry_run"]`) removes none:
    its savepoints "commit" (SQLAlchemy then runs after_commit), but nothing it does is
    kept.
    """
    if not paths or session.info.get("dry_run"):
        return
    if not session.info.get("unlink_hooked"):
        session.info["unlink_hooked"] = True
        sa.event.listen(session, "after_commit", _unlink_pending)
        sa.event.listen(
            session, "after_rollback", lambda sess: sess.info.pop("unlink_after_commit", None)
        )
    session.info.setdefault("unlink_after_commit", []).extend(paths)


def _unlink_pending(session: Session) -> None:
    # The transaction has committed: a file that cannot be removed (a read-only disk) is
    # left where it is, with no row pointing at it, and noted for the step's report.
    for path in session.info.pop("unlink_after_commit", []):
        try:
            remove(path)  # a file, or an object in the shared store
        except OSError as error:
            session.info.setdefault("unlink_failed", []).append(error)


def unlink_failures(session: Session) -> list[str]:
    """A warning for the files the committed transactions of `session` could not remove
    (none when every file went); the list is emptied."""
    failed = session.info.pop("unlink_failed", [])
    if not failed:
        return []
    from billing_core.store.files import os_reason

    return [
        f"{len(failed)} replaced document file(s) could not be removed ({os_reason(failed[0])});"
        " they stay on disk and no invoice points at them"
    ]


def discard_draft(session: Session, invoice: Any, reason: str, now: datetime) -> None:
    """Delete a draft that no longer matches: credits rolled back, documents removed."""
    rollback(
        session, invoice.id, invoice.billing_date, f"draft {invoice.id} discarded: {reason}", now
    )
    d = InvoiceDocument.__table__.c
    unlink_after_commit(
        session,
        list(session.execute(sa.select(d.path).where(d.invoice_id == invoice.id)).scalars()),
    )
    session.execute(sa.delete(InvoiceDocument.__table__).where(d.invoice_id == invoice.id))
    session.execute(
        sa.delete(InvoiceLine.__table__).where(InvoiceLine.__table__.c.invoice_id == invoice.id)
    )
    session.execute(sa.delete(Invoice.__table__).where(Invoice.__table__.c.id == invoice.id))


def _get(session: Session, invoice_id: int, lock: bool = False) -> Any:
    stmt = sa.select(Invoice.__table__).where(Invoice.__table__.c.id == invoice_id)
    if lock:
        stmt = postgres.for_update(session, stmt)
    row = session.execute(stmt).first()
    if row is None:
        raise InvoiceError(f"no invoice {invoice_id}")
    return row


def resolve(session: Session, reference: str) -> int:
    """The id of the invoice a user named by its number (`INV-2026-000001`) or its id."""
    v = Invoice.__table__.c
    text = reference.strip()
    if text.isascii() and text.isdigit():
        number = int(text)
        found = (
            session.execute(sa.select(v.id).where(v.id == number)).scalar()
            if number < 2**63  # a larger number is no id (and no PostgreSQL bigint)
            else None
        )
    else:
        found = session.execute(sa.select(v.id).where(v.number == text)).scalar()
    if found is None:
        raise InvoiceError(f"no invoice {reference!r} (give its number or its id)")
    return found


def next_number(session: Session, issuer_id: str, prefix: str, year: int) -> str:
    """The next gapless number for an issuer and year; the row lock serializes issuers."""
    seq = InvoiceSequence.__table__
    from billing_core.store.rows import insert_ignore

    insert_ignore(
        session,
        InvoiceSequence,
        [{"issuer_id": issuer_id, "year": year, "last_number": 0}],
        ["issuer_id", "year"],
    )
    number = session.execute(
        sa.update(seq)
        .where(seq.c.issuer_id == issuer_id, seq.c.year == year)
        .values(last_number=seq.c.last_number + 1)
        .returning(seq.c.last_number)
    ).scalar_one()
    return f"{prefix}-{year}-{number:06d}"


def issue(
    session: Session,
    *,
    through: date | None = None,
    ids: list[int] | None = None,
    store_name: str = "billing",
    now: datetime | None = None,
    exclude_families: list[str] | None = None,
) -> list[Any]:
    """Number and freeze drafts (given ids, or all billed on or before `through`), in
    order of billing date then billed customer id, each with a snapshot of who it is from
    and to (billing_core.invoices.identity); drafts of `exclude_families` (families a close could
    not finish) stay drafts. The caller commits."""
    now = now or datetime.now(UTC)
    v = Invoice.__table__.c
    stmt = sa.select(Invoice.__table__).where(v.status == "draft")
    if ids is not None:
        stmt = stmt.where(v.id.in_(ids))
        _refuse_unknown(session, ids)
    if through is not None:
        stmt = stmt.where(v.billing_date <= through)
    if exclude_families:
        stmt = stmt.where(v.family_id.not_in(sorted(exclude_families)))
    stmt = stmt.order_by(v.billing_date, v.billed_customer_id, v.id)
    # Two issuing runs at once: the second waits here, then skips what the first took.
    stmt = postgres.for_update(session, stmt)
    drafts = list(session.execute(stmt))
    if ids is not None:
        _refuse_not_drafts(session, ids, drafts)
    return _number_and_freeze(session, drafts, store_name, now)


def _refuse_unknown(session: Session, ids: list[int]) -> None:
    v = Invoice.__table__.c
    found = {r.id for r in session.execute(sa.select(v.id).where(v.id.in_(ids)))}
    missing = sorted(set(ids) - found)
    if missing:
        raise InvoiceError(f"no invoice {', '.join(map(str, missing))}")


def _refuse_not_drafts(session: Session, ids: list[int], drafts: list[Any]) -> None:
    v = Invoice.__table__.c
    not_draft = sorted(set(ids) - {d.id for d in drafts})
    if not_draft:
        statuses = {
            r.id: r.status
            for r in session.execute(sa.select(v.id, v.status).where(v.id.in_(not_draft)))
        }
        raise InvoiceError(
            "only drafts can be issued: " + ", ".join(f"{i} is {statuses[i]}" for i in not_draft)
        )


def _number_and_freeze(
    session: Session, drafts: list[Any], store_name: str, now: datetime
) -> list[Any]:
    """Number the drafts in order and freeze each with who it is from and to."""
    v = Invoice.__table__.c
    issuer = load_issuer(session, store_name)
    drop_draft_documents(session, [d.id for d in drafts])
    # Who each invoice is from and to, as the catalog has it now: frozen with it.
    identities = live_identity(session, drafts, store_name, issuer_id=issuer["id"])
    issued = []
    for draft in drafts:
        number = next_number(
            session, issuer["id"], issuer["invoice_prefix"], draft.billing_date.year
        )
        session.execute(
            sa.update(Invoice.__table__)
            .where(v.id == draft.id)
            .values(
                status="issued",
                number=number,
                issued_at=now,
                issuer_id=issuer["id"],
                identity=identities[draft.id],
            )
        )
        issued.append(_get(session, draft.id))
    return issued


def drop_draft_documents(session: Session, invoice_ids: list[int]) -> None:
    """Remove draft previews before invoices are frozen (their final documents replace
    them, and the store refuses changes to a frozen invoice's rows)."""
    d = InvoiceDocument.__table__.c
    for part in chunks(invoice_ids):
        unlink_after_commit(
            session,
            list(
                session.execute(
                    sa.select(d.path).where(d.invoice_id.in_(part), d.final.is_(False))
                ).scalars()
            ),
        )
        session.execute(
            sa.delete(InvoiceDocument.__table__).where(d.invoice_id.in_(part), d.final.is_(False))
        )


def transition(session: Session, invoice_id: int, to: str, now: datetime | None = None) -> Any:
    """void or pay an issued invoice, or cancel a draft."""
    now = now or datetime.now(UTC)
    invoice = _get(session, invoice_id, lock=True)
    allowed = {"void": "issued", "paid": "issued", "canceled": "draft"}
    if invoice.status != allowed[to]:
        raise InvoiceError(
            f"invoice {invoice.number or invoice.id} is {invoice.status}: only "
            f"{'an issued invoice' if allowed[to] == 'issued' else 'a draft'} can be "
            f"{'voided' if to == 'void' else to}"
        )
    values: dict[str, Any] = {"status": to}
    if to == "canceled":
        rollback(session, invoice.id, invoice.billing_date, f"draft {invoice.id} canceled", now)
        drop_draft_documents(session, [invoice.id])
        values["canceled_at"] = now
    elif to == "void":
        values["voided_at"] = now
    else:
        values["paid_at"] = now
    session.execute(
        sa.update(Invoice.__table__).where(Invoice.__table__.c.id == invoice_id).values(**values)
    )
    return _get(session, invoice_id)


# --- views -------------------------------------------------------------------------------


def list_invoices(
    session: Session, status: str | None = None, customer: str | None = None
) -> list[Any]:
    v = Invoice.__table__.c
    stmt = sa.select(Invoice.__table__).order_by(v.billing_date, v.billed_customer_id, v.id)
    if status:
        stmt = stmt.where(v.status == status)
    if customer:
        stmt = stmt.where(v.billed_customer_id == customer)
    return list(session.execute(stmt))


def lines_of(session: Session, invoice_ids: list[int]) -> dict[int, list[Any]]:
    """The lines of each invoice, in position order, as named tuples (a document's context
    reads each line's fields several times: a named tuple's field costs a twentieth of a
    SQLAlchemy Row's)."""
    ln = InvoiceLine.__table__.c
    out: dict[int, list[Any]] = defaultdict(list)
    for among_ids in among(session, ln.invoice_id, invoice_ids):
        for line in records(
            session,
            sa.select(InvoiceLine.__table__).where(among_ids).order_by(ln.invoice_id, ln.position),
        ):
            out[line.invoice_id].append(line)
    return out


def line_dict(line: Any, currency: str) -> dict:
    """A line as the export contract spells it (inclusive period end, money as text)."""
    return {
        "serviced_customer": line.serviced_customer_id,
        "subscription": line.subscription_id,
        "price": line.price_code,
        "product": line.product,
        "kind": line.kind,
        "description": line.description,
        "period_start": line.period_start.isoformat() if line.period_start else None,
        "period_end": (line.period_end - ONE_DAY).isoformat() if line.period_end else None,
        "quantity": plain(line.quantity),
        "unit_price": plain(line.unit_price),
        "amount": money_str(line.amount, currency),
        "grant": line.grant_id,
        "tax_rate": plain(line.tax_rate),
    }


def invoice_dict(invoice: Any, lines: list[Any]) -> dict:
    """An invoice as the export contract spells it."""
    currency = invoice.currency
    dated = dates_of(invoice.issued_at, invoice.identity)
    return {
        "id": invoice.id,
        "number": invoice.number,
        "status": invoice.status,
        "billed_customer": invoice.billed_customer_id,
        "currency": currency,
        "billing_date": invoice.billing_date.isoformat(),
        "subtotal": money_str(invoice.subtotal, currency),
        "discount_total": money_str(invoice.discount_total, currency),
        "tax_total": money_str(invoice.tax_total, currency),
        "credit_total": money_str(invoice.credit_total, currency),
        "total": money_str(invoice.total, currency),
        "issued_at": invoice.issued_at.isoformat() if invoice.issued_at else None,
        "issue_date": dated[0].isoformat() if dated else None,
        "due_date": dated[1].isoformat() if dated else None,
        "lines": [line_dict(line, currency) for line in lines],
    }


def export(session: Session, status: str | None = None) -> list[dict]:
    """Every invoice with its lines, in billing-date order."""
    invoices = list_invoices(session, status)
    lines = lines_of(session, [i.id for i in invoices])
    return [invoice_dict(i, lines[i.id]) for i in invoices]
