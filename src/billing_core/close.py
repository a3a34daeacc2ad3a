"""The period close as services: each step runs in its own unit of work and commits, so a
failed step leaves the earlier ones done and can be retried on its own. Prefect flows call
these; so do the CLI's direct paths and the tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa

from . import collection, collector, credits, invoices, rating, recalculation, rendering, rollup
from .db import store_name, unit_of_work
from .models import CloseRun, Customer, Invoice, InvoiceCharge, InvoiceDocument, InvoiceLine
from .reference import Scope, one_catalog_read
from .report import StepReport

STEPS = ("recalculate", "collect", "rate", "consolidate", "credits", "render")


class DocumentsNotWritten(RuntimeError):
    """A close whose database work is done and recorded, but some of whose documents could
    not be written (a full or read-only disk): the operator must act. `result` is what the
    close returned otherwise."""

    def __init__(self, message: str, result: dict | None = None):
        super().__init__(message)
        self.result = result


def _scope(families: Iterable[str] | None) -> Scope:
    return Scope.of(families)


def _run(step: Callable[..., StepReport], *args: Any, **kwargs: Any) -> StepReport:
    """Run a step in a unit of work of its own, commit it, and note how long it took."""
    started = time.perf_counter()
    with collector.paused(), unit_of_work() as session:
        report = step(session, *args, **kwargs)
        session.commit()
        report.warnings += invoices.unlink_failures(session)
    report.details["seconds"] = round(time.perf_counter() - started, 3)
    return report


def recalculate(through: date, families: Iterable[str] | None = None) -> StepReport:
    """Step 1: subscriptions and the customer tree into slots and billing dates."""
    return _run(recalculation.recalculate, through, _scope(families))


def collect(through: date, close_run_id: int | None = None) -> StepReport:
    """Step 2: pull usage from the configured sources (inbox folder, SQL source)."""
    started = time.perf_counter()
    report = collection.collect(close_run_id)
    report.details["seconds"] = round(time.perf_counter() - started, 3)
    return report


def rate(through: date, families: Iterable[str] | None = None) -> StepReport:
    """Step 3: slots into charges (usage aggregated in the database)."""
    return _run(rating.rate, through, _scope(families))


def consolidate(through: date, families: Iterable[str] | None = None) -> StepReport:
    """Step 4: charges into draft invoices per billed customer and billing date."""
    return _run(rollup.consolidate, through, _scope(families))


def apply_credits(through: date, families: Iterable[str] | None = None) -> StepReport:
    """Step 5: credit grants applied to the drafts, oldest first."""
    return _run(credits.apply_credits, through, _scope(families))


def render(
    through: date, families: Iterable[str] | None = None, invoice_ids: list[int] | None = None
) -> StepReport:
    """Step 6: documents for the drafts (previews) and issued invoices (final)."""
    return _run(rendering.render, through, _scope(families), invoice_ids, store_name=store_name())


def issue(through: date | None = None, ids: list[int] | None = None) -> StepReport:
    """Number and freeze drafts, in billing-date then billed-customer order."""
    report = StepReport("issue invoices")
    with unit_of_work() as session:
        issued = invoices.issue(session, through=through, ids=ids, store_name=store_name())
        session.commit()
        report.warnings += invoices.unlink_failures(session)
    report.written = len(issued)
    report.details["issued"] = [i.number for i in issued]
    report.details["invoice_ids"] = [i.id for i in issued]
    return report


def shards(count: int) -> list[list[str]]:
    """Families split into `count` shards of similar size (a family is never split)."""
    with unit_of_work() as session:
        c = Customer.__table__.c
        rows = session.execute(sa.select(c.family_id, sa.func.count()).group_by(c.family_id))
        return balanced(dict(rows.all()), count)


# What a document costs to lay out, in rows of its tables: a one-line invoice still has
# two pages to lay out (measured: about 0.13 s a document and 0.003 s a row).
DOCUMENT_ROWS = 40


def render_shards(through: date, count: int) -> list[list[str]]:
    """Families split into `count` shards of similar rendering work (a family is never
    split): what weighs is the documents a shard will write, not its customers. A family
    billed child by child writes a document per child; one rolled up to its root, one.

    Counted: invoices through `through` still waiting for their final documents, and
    drafts (whose previews are rewritten when they change), each as DOCUMENT_ROWS plus
    its lines and charges. Families with nothing to write weigh nothing but keep their
    place, so the step still checks their issued documents are on disk.
    """
    with unit_of_work() as session:
        c = Customer.__table__.c
        v = Invoice.__table__.c
        d = InvoiceDocument.__table__.c
        weights = dict.fromkeys(session.execute(sa.select(c.family_id).distinct()).scalars(), 0)
        pending = (
            sa.select(v.id, v.family_id)
            .where(v.billing_date <= through, v.status.in_(rendering.RENDERED))
            .where(
                (v.status == "draft") | ~sa.exists().where(d.invoice_id == v.id, d.final.is_(True))
            )
            .subquery()
        )
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
    return balanced(weights, count)


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


def start_run(through: date, issue_invoices: bool, flow_run_id: str | None = None) -> int:
    """Record a close (a retried flow run with the same id reuses its record)."""
    with unit_of_work() as session:
        r = CloseRun.__table__.c
        if flow_run_id:
            found = session.execute(sa.select(r.id).where(r.flow_run_id == flow_run_id)).first()
            if found:
                session.execute(
                    sa.update(CloseRun.__table__)
                    .where(r.id == found.id)
                    .values(status="running", finished_at=None)
                )
                session.commit()
                return found.id
        run_id = session.execute(
            sa.insert(CloseRun.__table__)
            .values(
                through=through,
                issue=issue_invoices,
                flow_run_id=flow_run_id,
                status="running",
                started_at=datetime.now(UTC),
                steps={},
            )
            .returning(r.id)
        ).scalar_one()
        session.commit()
    return run_id


def recorded_through(flow_run_id: str | None) -> date | None:
    """The date a flow run's close was started with (None for a new run)."""
    if not flow_run_id:
        return None
    with unit_of_work() as session:
        r = CloseRun.__table__.c
        return session.execute(sa.select(r.through).where(r.flow_run_id == flow_run_id)).scalar()


def record_steps(run_id: int, reports: list[dict]) -> None:
    """Keep what each step did on the close's record."""
    with unit_of_work() as session:
        r = CloseRun.__table__.c
        steps = session.execute(sa.select(r.steps).where(r.id == run_id)).scalar_one() or {}
        steps = {**steps, **{report["step"]: report for report in reports}}
        session.execute(sa.update(CloseRun.__table__).where(r.id == run_id).values(steps=steps))
        session.commit()


def finish_run(run_id: int, status: str) -> None:
    with unit_of_work() as session:
        r = CloseRun.__table__.c
        session.execute(
            sa.update(CloseRun.__table__)
            .where(r.id == run_id)
            .values(status=status, finished_at=datetime.now(UTC))
        )
        session.commit()


def close_locally(
    through: date, issue_invoices: bool = False, families: Iterable[str] | None = None
) -> list[StepReport]:
    """The whole close in this process, without Prefect (imports' recalculation, tests);
    it takes the store's close lock like a flow run does."""
    from .config import get_settings
    from .locks import close_lock

    families = None if families is None else sorted(families)
    with close_lock("a local close", get_settings().close_lock_timeout), one_catalog_read():
        reports = [
            recalculate(through, families),
            rate(through, families),
            consolidate(through, families),
            apply_credits(through, families),
        ]
        if issue_invoices:
            reports.append(issue(through))
        reports.append(render(through, families))
    return reports


def latest_draft_date(families: Iterable[str]) -> date | None:
    """The last billing date with a draft in these families (how far a rebuild reaches)."""
    families = sorted(families)
    if not families:
        return None
    with unit_of_work() as session:
        v = Invoice.__table__.c
        return session.execute(
            sa.select(sa.func.max(v.billing_date)).where(
                v.status == "draft", v.family_id.in_(families)
            )
        ).scalar_one()


def summary_rows(invoice_ids: list[int] | None = None, through: date | None = None) -> list[Any]:
    """Invoices with their documents, for the operator's table."""
    with unit_of_work() as session:
        v = Invoice.__table__.c
        stmt = sa.select(
            v.id, v.number, v.status, v.billed_customer_id, v.billing_date, v.total, v.currency
        ).order_by(v.billing_date, v.billed_customer_id)
        if invoice_ids is not None:
            stmt = stmt.where(v.id.in_(invoice_ids))
        if through is not None:
            stmt = stmt.where(v.billing_date <= through)
        return session.execute(stmt).all()


def billing_dates_between(start: date, end: date) -> list[date]:
    """The billing dates a backfill closes one by one: every date a slot lands on in the
    range (schedules recalculated through `end` first), and `end` itself."""
    recalculate(end)
    with unit_of_work() as session:
        from .models import BillingPeriod

        bp = BillingPeriod.__table__.c
        dates = set(
            session.execute(
                sa.select(bp.billing_date)
                .distinct()
                .where(bp.billing_date >= start, bp.billing_date <= end)
            ).scalars()
        )
    return sorted(dates | {end})


def documents(through: date | None = None) -> dict[int, dict[str, str]]:
    """invoice id -> format -> path of its current documents."""
    from .models import InvoiceDocument

    with unit_of_work() as session:
        d = InvoiceDocument.__table__.c
        v = Invoice.__table__.c
        stmt = sa.select(d.invoice_id, d.format, d.path).join(
            Invoice.__table__, v.id == d.invoice_id
        )
        if through is not None:
            stmt = stmt.where(v.billing_date <= through)
        out: dict[int, dict[str, str]] = {}
        for invoice_id, fmt, path in session.execute(stmt):
            out.setdefault(invoice_id, {})[fmt] = path
        return out


# How many invoices a one-line message names before it counts the rest.
NAMED = 10


def _named(items: list[str]) -> str:
    shown = ", ".join(items[:NAMED])
    return shown + (f" and {len(items) - NAMED} more" if len(items) > NAMED else "")


def documents_missing(reports: Iterable[StepReport | dict]) -> list[dict]:
    """The documents the render step(s) among `reports` could not write."""
    found = []
    for report in reports:
        data = report if isinstance(report, dict) else report.as_dict()
        if data["step"] == "render invoices":
            found += data["details"].get("documents_missing", [])
    return found


def documents_problem(reports: Iterable[StepReport | dict]) -> str | None:
    """One line for an operator when a close could not write some documents: what it
    issued, which documents are missing (invoice and format), why (each reason once) and
    what to do; None when every document was written."""
    reports = list(reports)
    missing = documents_missing(reports)
    if not missing:
        return None
    issued = []
    for report in reports:
        data = report if isinstance(report, dict) else report.as_dict()
        if data["step"] == "issue invoices":
            issued += data["details"].get("issued", [])
    return missing_documents_message(missing, issued)


def missing_documents_message(missing: list[dict], issued: list[str]) -> str:
    from .config import get_settings

    formats: dict[str, list[str]] = {}
    reasons: dict[str, str] = {}  # the first full reason of each kind ("Permission denied")
    for entry in missing:
        invoice = entry["invoice"]
        label = invoice if isinstance(invoice, str) else f"draft {invoice}"
        formats.setdefault(label, []).append(entry["format"])
        reasons.setdefault(entry["reason"].split(": ", 1)[0], entry["reason"])
    items = [f"{label} ({', '.join(fmts)})" for label, fmts in formats.items()]
    line = (
        f"documents not written: {len(missing)} document(s) of {len(items)} invoice(s) are "
        f"missing: {_named(items)} ({'; '.join(reasons.values())})"
    )
    if issued:
        line += f"; the close issued {len(issued)} invoice(s): {_named(issued)}"
    return (
        line + "; the next close writes them once the output folder "
        f"{get_settings().output_dir} can be written"
    )
