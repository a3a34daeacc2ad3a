"""The period close as services: each step runs in its own unit of work and commits, so a
failed step leaves the earlier ones done and can be retried on its own. Prefect flows call
these; so do the CLI's direct paths and the tests.

`STEPS` is the close in order: the period-close flow, a close in this process
(`close_locally`) and a preview (`billing_core.steps.preview`) all follow it.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from types import ModuleType
from typing import Any

import sqlalchemy as sa

from billing_core.invoices import lifecycle as invoices
from billing_core.report import StepReport, add_money
from billing_core.steps import collect as collection
from billing_core.steps import collector, credits, processes
from billing_core.steps import consolidate as rollup
from billing_core.steps import rate as rating
from billing_core.steps import recalculate as recalculation
from billing_core.steps import render as rendering
from billing_core.steps.failures import CloseFailed, Failures, isolatable, reason
from billing_core.steps.shards import all_families, without
from billing_core.store.engine import store_name, unit_of_work
from billing_core.store.locks import check_held
from billing_core.store.models import Invoice
from billing_core.store.reference import Scope, one_catalog_read


@dataclass(frozen=True)
class Step:
    """A step of the close."""

    name: str  # the name its report carries
    task: str  # the name of its task in the period-close flow
    module: ModuleType
    # Its function in `module`, looked up each time it runs (so that it can be patched there).
    function: str
    builds: bool = True  # builds the drafts: a preview runs it
    local: bool = True  # a close in this process runs it
    store_named: bool = False  # takes the store's name (its documents carry it)
    # Its families in parts for this machine's cores (`steps.processes`); None: one part.
    parts: Callable[..., list] | None = None

    @property
    def run(self) -> Callable[..., Any]:
        return getattr(self.module, self.function)


RECALCULATE = Step("recalculate schedules", "recalculate-schedules", recalculation, "recalculate")
# A close in this process rebuilds drafts from the usage already stored; a flow collects.
COLLECT = Step("collect usage", "collect-usage", collection, "collect", builds=False, local=False)
RATE = Step("rate", "rate-usage", rating, "rate")
CONSOLIDATE = Step(
    "consolidate roll-ups",
    "consolidate-rollups",
    rollup,
    "consolidate",
    parts=processes.customer_parts,
)
CREDITS = Step("apply credits", "apply-credits", credits, "apply_credits")
# Only when the close is asked to issue.
ISSUE = Step("issue invoices", "issue-invoices", invoices, "issue", builds=False)
RENDER = Step(
    "render invoices",
    "render-invoices",
    rendering,
    "render",
    builds=False,
    store_named=True,
    parts=processes.render_parts,
)

# The close, in order.
STEPS = (RECALCULATE, COLLECT, RATE, CONSOLIDATE, CREDITS, ISSUE, RENDER)

# The name each step's report carries, by its function (for a report of a step whose
# every family failed).
STEP_NAMES = {step.run: step.name for step in STEPS}


def _scope(families: Iterable[str] | None) -> Scope:
    return Scope.of(families)


def _attempt(
    step: Callable[..., StepReport], through: date | None, scope: Scope, rest: tuple, kwargs: dict
) -> StepReport:
    """One try of a step over a scope, in a unit of work of its own, committed."""
    with collector.paused(), unit_of_work() as session:
        report = step(session, through, scope, *rest, **kwargs)
        session.commit()
        report.warnings += invoices.unlink_failures(session)
    return report


def _isolated(
    step: Callable[..., StepReport],
    through: date | None,
    scope: Scope,
    rest: tuple,
    kwargs: dict,
    error: Exception,
    attempt: Callable[..., StepReport] = _attempt,
) -> StepReport:
    """The step failed over its scope: run it again over halves of the families, and
    halves of the halves that fail, until each failing family is alone. The others are
    written; the failing ones are reported. Gives up (raises `error`) when more tries
    than a few failing families would need are spent, e.g. when every family fails.

    Each try is `attempt` (a unit of work of its own, committed; a dry run's savepoint)."""
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
                done.append(attempt(step, through, Scope.of(half), rest, kwargs))
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


def run(
    step: Step, through: date | None, families: Iterable[str] | None = None, *rest: Any
) -> StepReport:
    """A step of `STEPS` over families (every family by default), in a unit of work of its
    own (see `_run`)."""
    kwargs = {"store_name": store_name()} if step.store_named else {}
    split = step.parts(through, families, *rest) if step.parts else [families]
    if len(split) == 1:
        return _run(step.run, through, _scope(families), *rest, **kwargs)
    return _on_cores(step, through, split, rest, kwargs)


def _on_cores(
    step: Step, through: date | None, split: list, rest: tuple, kwargs: dict
) -> StepReport:
    """A step on this machine's cores: its families in parts, each but the first in a
    forked process (`steps.processes`)."""
    started = time.perf_counter()
    report = processes.forked(
        [
            functools.partial(_run, step.run, through, _scope(part), *rest, **kwargs)
            for part in split
        ]
    )
    report.details["seconds"] = round(time.perf_counter() - started, 3)
    report.details["processes"] = len(split)
    return report


def recalculate(through: date, families: Iterable[str] | None = None) -> StepReport:
    """Step 1: subscriptions and the customer tree into slots and billing dates."""
    return run(RECALCULATE, through, families)


def collect(through: date, close_run_id: int | None = None) -> StepReport:
    """Step 2: pull usage from the configured sources (inbox folder, SQL source)."""
    started = time.perf_counter()
    check_held()
    report = COLLECT.run(close_run_id)
    report.details["seconds"] = round(time.perf_counter() - started, 3)
    return report


def rate(through: date, families: Iterable[str] | None = None) -> StepReport:
    """Step 3: slots into charges (usage aggregated in the database)."""
    return run(RATE, through, families)


def consolidate(through: date, families: Iterable[str] | None = None) -> StepReport:
    """Step 4: charges into draft invoices per billed customer and billing date."""
    return run(CONSOLIDATE, through, families)


def apply_credits(through: date, families: Iterable[str] | None = None) -> StepReport:
    """Step 5: credit grants applied to the drafts, oldest first."""
    return run(CREDITS, through, families)


def render(
    through: date, families: Iterable[str] | None = None, invoice_ids: list[int] | None = None
) -> StepReport:
    """Step 6: documents for the drafts (previews) and issued invoices (final)."""
    return run(RENDER, through, families, invoice_ids)


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
        issued = ISSUE.run(
            session,
            through=through,
            ids=ids,
            store_name=store_name(),
            exclude_families=sorted(exclude_families or ()),
        )
        session.commit()
        report.warnings += invoices.unlink_failures(session)
    report.written = len(issued)
    totals: dict[str, Decimal] = {}
    for invoice in issued:
        add_money(totals, invoice.currency, invoice.total)
    report.money("issued", totals)
    report.details["issued"] = [i.number for i in issued]
    report.details["invoice_ids"] = [i.id for i in issued]
    return report


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
        for step in STEPS:
            if step is ISSUE:
                if issue_invoices:
                    reports.append(issue(through, exclude_families=failed))
            elif step.local:
                for shard in without(scope, failed):
                    reports.append(failed.note(run(step, through, shard)))
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
