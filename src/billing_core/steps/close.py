"""The period close as services: each step runs in its own unit of work and commits, so a
failed step leaves the earlier ones done and can be retried on its own. Prefect flows call
these; so do the CLI's direct paths and the tests.
"""

from __future__ import annotations

import decimal
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa

from billing_core.invoices import lifecycle as invoices
from billing_core.report import StepReport
from billing_core.steps import collect as collection
from billing_core.steps import collector, credits
from billing_core.steps import consolidate as rollup
from billing_core.steps import rate as rating
from billing_core.steps import recalculate as recalculation
from billing_core.steps import render as rendering
from billing_core.store.engine import store_name, unit_of_work
from billing_core.store.locks import CloseLocked, LockLost, check_held, unfenced
from billing_core.store.models import (
    CloseRun,
    Customer,
    Invoice,
    InvoiceCharge,
    InvoiceDocument,
    InvoiceLine,
)
from billing_core.store.reference import Scope, one_catalog_read

STEPS = ("recalculate", "collect", "rate", "consolidate", "credits", "render")

# The name each step's report carries (for a report of a step whose every family failed).
STEP_NAMES = {
    recalculation.recalculate: "recalculate schedules",
    rating.rate: "rate",
    rollup.consolidate: "consolidate roll-ups",
    credits.apply_credits: "apply credits",
    rendering.render: "render invoices",
}


class FamilyFailures(RuntimeError):
    """A step finished every family of its scope but some; carries the step's report
    (what it did for the others, and each failed family's reason)."""

    def __init__(self, report: dict):
        super().__init__(report)
        self.report = report

    def __str__(self) -> str:
        return describe_failures({self.report["step"]: self.report.get("failures", {})})


class CloseFailed(RuntimeError):
    """A close finished every family it could and failed the others."""

    def __init__(
        self,
        failures: dict[str, dict[str, str]],
        through: date | str,
        documents: str | None = None,
    ):
        super().__init__(failures, str(through), documents)
        self.failures = failures
        self.through = str(through)
        # One line on documents that could not be written, if any were not.
        self.documents = documents

    def __str__(self) -> str:
        return (
            f"the close through {self.through} finished every other family and failed "
            f"{len(self.failures)}: "
            + describe_failures(
                {
                    step: {f: r["reason"] for f, r in self.failures.items() if r["step"] == step}
                    for step in dict.fromkeys(r["step"] for r in self.failures.values())
                }
            )
        )

    def lines(self) -> list[str]:
        """One line per failed family, for a terminal."""
        return [
            f"family {family}: {r['step']} failed: {r['reason']}"
            for family, r in sorted(self.failures.items())
        ] + ([self.documents] if self.documents else [])


class Failures(dict):
    """Families a close could not finish: family -> {"step", "reason"} (the first failure
    of each)."""

    def note(self, report: StepReport | dict) -> StepReport | dict:
        data = report if isinstance(report, dict) else report.as_dict()
        for family, why in data.get("failures", {}).items():
            self.setdefault(family, {"step": data["step"], "reason": why})
        return report


def describe_failures(by_step: dict[str, dict[str, str]]) -> str:
    return "; ".join(
        f"{family} ({step}: {reason})"
        for step, failures in by_step.items()
        for family, reason in sorted(failures.items())
    )


class DocumentsNotWritten(RuntimeError):
    """A close whose database work is done and recorded, but some of whose documents could
    not be written (a full or read-only disk): the operator must act. `result` is what the
    close returned otherwise."""

    def __init__(self, message: str, result: dict | None = None):
        super().__init__(message)
        self.result = result


def _scope(families: Iterable[str] | None) -> Scope:
    return Scope.of(families)


def reason(error: BaseException) -> str:
    """An error in one line, without the SQL statement a database error carries."""
    inner = getattr(error, "orig", None) or error
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    name = type(inner).__name__
    if isinstance(inner, decimal.DecimalException) and text.startswith("[<class"):
        text = (
            "an amount could not be computed (a price, discount, credit or quantity of this "
            "family beyond what can be billed, such as 1E+400)"
        )
    return (f"{name}: {text}" if text else name)[:300]


def isolatable(error: Exception) -> bool:
    """Whether an error may be one family's (its data) rather than the store's or the
    machine's: those are retried or stop the close as a whole."""
    if isinstance(error, LockLost | CloseLocked | OSError | MemoryError):
        return False
    if isinstance(error, sa.exc.OperationalError | sa.exc.InterfaceError):
        return False
    return not (isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated)


def _attempt(
    step: Callable[..., StepReport], through: date | None, scope: Scope, rest: tuple, kwargs: dict
) -> StepReport:
    """One try of a step over a scope, in a unit of work of its own, committed."""
    with collector.paused(), unit_of_work() as session:
        report = step(session, through, scope, *rest, **kwargs)
        session.commit()
        report.warnings += invoices.unlink_failures(session)
    return report


def all_families() -> list[str]:
    with unit_of_work() as session:
        c = Customer.__table__.c
        return sorted(session.execute(sa.select(c.family_id).distinct()).scalars())


def _isolated(
    step: Callable[..., StepReport],
    through: date | None,
    scope: Scope,
    rest: tuple,
    kwargs: dict,
    error: Exception,
) -> StepReport:
    """The step failed over its scope: run it again over halves of the families, and
    halves of the halves that fail, until each failing family is alone. The others are
    written; the failing ones are reported. Gives up (raises `error`) when more tries
    than a few failing families would need are spent, e.g. when every family fails."""
    families = sorted(scope.families) if scope.families is not None else all_families()
    if len(families) <= 1:
        if families:
            report = StepReport(STEP_NAMES.get(step, step.__name__))
            report.failures[families[0]] = reason(error)
            return report
        raise error
    budget = 8 * (math.ceil(math.log2(len(families))) + 1)
    done: list[StepReport] = []
    failures: dict[str, str] = {}
    pending = [families]
    while pending:
        group = pending.pop()
        if len(group) > 1:
            middle = len(group) // 2
            halves = [group[middle:], group[:middle]]
        else:
            halves = [group]
        for half in halves:
            if budget <= 0:
                raise error
            budget -= 1
            try:
                done.append(_attempt(step, through, Scope.of(half), rest, kwargs))
            except Exception as failure:  # noqa: BLE001 - isolated, reported per family
                if not isolatable(failure):
                    raise
                if len(half) == 1:
                    failures[half[0]] = reason(failure)
                else:
                    pending.append(half)
    report = done[0] if done else StepReport(STEP_NAMES.get(step, step.__name__))
    for other in done[1:]:
        report = report.merge(other)
    report.failures.update(failures)
    return report


def _run(
    step: Callable[..., StepReport], through: date | None, scope: Scope, *rest: Any, **kwargs: Any
) -> StepReport:
    """Run a step in a unit of work of its own, commit it, and note how long it took.

    When the step fails for reasons that may lie in one family's data, the families that
    can be finished are, and the report names the others (`failures`)."""
    started = time.perf_counter()
    check_held()
    try:
        report = _attempt(step, through, scope, rest, kwargs)
    except Exception as error:
        if not isolatable(error):
            raise
        report = _isolated(step, through, scope, rest, kwargs, error)
    report.details["seconds"] = round(time.perf_counter() - started, 3)
    return report


def recalculate(through: date, families: Iterable[str] | None = None) -> StepReport:
    """Step 1: subscriptions and the customer tree into slots and billing dates."""
    return _run(recalculation.recalculate, through, _scope(families))


def collect(through: date, close_run_id: int | None = None) -> StepReport:
    """Step 2: pull usage from the configured sources (inbox folder, SQL source)."""
    started = time.perf_counter()
    check_held()
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


def issue(
    through: date | None = None,
    ids: list[int] | None = None,
    exclude_families: Iterable[str] | None = None,
) -> StepReport:
    """Number and freeze drafts, in billing-date then billed-customer order (drafts of
    families this close failed stay drafts)."""
    report = StepReport("issue invoices")
    check_held()
    with unit_of_work() as session:
        issued = invoices.issue(
            session,
            through=through,
            ids=ids,
            store_name=store_name(),
            exclude_families=sorted(exclude_families or ()),
        )
        session.commit()
        report.warnings += invoices.unlink_failures(session)
    report.written = len(issued)
    report.details["issued"] = [i.number for i in issued]
    report.details["invoice_ids"] = [i.id for i in issued]
    return report


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
                    .values(status="running", finished_at=None, failures=sa.null())
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


def finish_run(run_id: int, status: str, failures: dict[str, dict[str, str]] | None = None) -> None:
    """Record how a close ended. "completed" is committed only while the close still
    holds the lock; a close that failed (or lost the lock) records that it failed."""
    values: dict[str, Any] = {"status": status, "finished_at": datetime.now(UTC)}
    if failures is not None:
        values["failures"] = failures or sa.null()
    with unfenced() if status != "completed" else nullcontext(), unit_of_work() as session:
        r = CloseRun.__table__.c
        session.execute(sa.update(CloseRun.__table__).where(r.id == run_id).values(**values))
        session.commit()


def close_locally(
    through: date, issue_invoices: bool = False, families: Iterable[str] | None = None
) -> list[StepReport]:
    """The whole close in this process, without Prefect (imports' recalculation, tests);
    it takes the store's close lock like a flow run does."""
    from billing_core.config import get_settings
    from billing_core.store.locks import close_lock

    scope = [None if families is None else sorted(families)]
    failed = Failures()
    with close_lock("a local close", get_settings().close_lock_timeout), one_catalog_read():
        reports = []
        for step in (recalculate, rate, consolidate, apply_credits):
            for shard in without(scope, failed):
                reports.append(failed.note(step(through, shard)))
        if issue_invoices:
            reports.append(issue(through, exclude_families=failed))
        for shard in without(scope, failed):
            reports.append(failed.note(render(through, shard)))
    if failed:
        raise CloseFailed(dict(failed), through)
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
        from billing_core.store.models import BillingPeriod

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
    from billing_core.store.models import InvoiceDocument

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
    from billing_core.config import get_settings

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
