"""A close computed and thrown away (`billing close --dry-run`, the flow's `dry_run`), and
what a close changes in the invoices.

How a dry run writes nothing: the close's own step functions (`STEPS`: recalculation,
collection, rating, consolidation, credits, and issuing when asked) run in order on ONE
session, whose transaction is rolled back at the end; the invoices are read before the
first step and after the last inside that transaction and compared
(`billing_core.domain.close_diff`). On SQLite that session works on a private copy of the
store taken in the close's turn (`store.engine.scratch_copy`); on PostgreSQL on the store
itself, in the close's turn. The steps never commit by themselves (the close's runner
commits each step's unit of work, `steps.close._attempt`); here:

- each step runs in a savepoint of the session, so that a step failing for some families
  is isolated family by family as the close does (`steps.close._isolated`), the others
  kept in the transaction;
- collection loads every configured source into the session, but moves no inbox file and
  keeps no watermark (`steps.collect`);
- no document is rendered, and none is removed (`info["dry_run"]` makes
  `invoices.lifecycle.unlink_after_commit` keep files: a savepoint's release runs
  SQLAlchemy's after_commit);
- a commit of the session itself is refused (`DryRunCommitted`), and no other session is
  opened while the transaction is open.

Choices and costs: docs/decisions.md, "Dry run, diffed".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, ExitStack
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain.close_diff import LISTED_LINE_TABLES, Key, diff_invoices
from billing_core.invoices.lifecycle import ONE_DAY, lines_of
from billing_core.report import StepReport
from billing_core.steps import collect as collection
from billing_core.steps.close import COLLECT, ISSUE, STEPS, _isolated
from billing_core.steps.failures import Failures, isolatable
from billing_core.store.engine import is_postgres, scratch_copy, store_name, unit_of_work
from billing_core.store.models import Customer, Invoice, InvoiceLine
from billing_core.store.reference import ALL, Scope, one_catalog_read
from billing_core.store.rows import among, chunks


class DryRunCommitted(RuntimeError):
    """Something tried to commit a dry run's transaction (a bug: nothing was written)."""


# --- what the invoices look like -----------------------------------------------------------


def _line(line: Any) -> dict:
    return {
        "serviced_customer": line.serviced_customer_id,
        "subscription": line.subscription_id,
        "price": line.price_code,
        "product": line.product,
        "kind": line.kind,
        "description": line.description,
        "period_start": line.period_start.isoformat() if line.period_start else None,
        "period_end": (line.period_end - ONE_DAY).isoformat() if line.period_end else None,
        "grant": line.grant_id,
        "quantity": line.quantity,
        "unit_price": line.unit_price,
        "amount": line.amount,
    }


def picture(
    session: Session, ids: Iterable[int] = (), lines: bool = True, digests: bool = False
) -> dict[Key, dict]:
    """Every draft (whatever its billing date: a close may refresh later drafts too) and
    the invoices `ids` (those a close issued), with their lines, keyed by billed customer
    and billing date, as `domain.close_diff` compares them. Issued invoices never change,
    so the drafts before a close and the drafts and newly issued invoices after it hold
    everything a close changes.

    Each invoice also carries its `id`, its `line_count` and, with `digests` on
    PostgreSQL, its lines' `digest` (an md5 of the rows themselves, ids included: the
    same digest is the same rows; else None). Without `lines`, its `lines` are None, to be
    read where needed (`changes`)."""
    v = Invoice.__table__.c
    drafts = session.execute(sa.select(Invoice.__table__).where(v.status == "draft"))
    rows = {r.id: r for r in drafts}
    for part in chunks(sorted(set(ids) - rows.keys())):
        rows.update(
            (r.id, r) for r in session.execute(sa.select(Invoice.__table__).where(v.id.in_(part)))
        )
    counts = _line_digests(session, sorted(rows), digests)
    read = lines_of(session, sorted(rows)) if lines else {}
    return {
        (r.billed_customer_id, r.billing_date.isoformat()): {
            "id": r.id,
            "status": r.status,
            "number": r.number,
            "currency": r.currency,
            "subtotal": r.subtotal,
            "discount_total": r.discount_total,
            "tax_total": r.tax_total,
            "credit_total": r.credit_total,
            "total": r.total,
            "line_count": counts.get(r.id, (0, None))[0],
            "digest": counts.get(r.id, (0, None))[1],
            "lines": [_line(line) for line in read.get(r.id, [])] if lines else None,
        }
        for r in rows.values()
    }


# The lines' rows as text, in order, hashed: PostgreSQL only (SQLite has no md5).
_DIGEST = sa.literal_column(
    "md5(string_agg(invoice_lines::text, '|' ORDER BY invoice_lines.position, invoice_lines.id))"
)


def _line_digests(
    session: Session, invoice_ids: list[int], digests: bool = True
) -> dict[int, tuple[int, str | None]]:
    """Per invoice with lines: how many, and with `digests` their digest (None on SQLite
    or without)."""
    ln = InvoiceLine.__table__.c
    digest = _DIGEST if digests and is_postgres(session) else sa.null()
    out: dict[int, tuple[int, str | None]] = {}
    for condition in among(session, ln.invoice_id, invoice_ids):
        stmt = sa.select(ln.invoice_id, sa.func.count(), digest).where(condition)
        out.update((i, (n, d)) for i, n, d in session.execute(stmt.group_by(ln.invoice_id)))
    return out


def _read_lines(session: Session, before: dict[Key, dict], after: dict[Key, dict]) -> None:
    """Fill in the lines of `after` (a picture without them) where the diff needs them:

    - an invoice in both whose lines have the digest they had: the lines it had (the same
      rows; on SQLite, without digests, read);
    - any other invoice in both: read, to be compared line by line;
    - an invoice added: read for the first `LISTED_LINE_TABLES` added with lines (by key,
      as the diff orders them; no earlier invoice can push them out of the listed
      tables); the others keep None: the diff counts their lines as added without
      listing them.
    """
    wanted: list[int] = []
    added = 0
    both = [after[key]["id"] for key in after.keys() & before.keys()]
    digests = {i: d for i, (_, d) in _line_digests(session, sorted(both)).items()}
    for key in sorted(after):
        new, old = after[key], before.get(key)
        if old is not None:
            digest = digests.get(new["id"])
            if digest is not None and digest == old.get("digest"):
                new["lines"] = old["lines"]
            else:
                wanted.append(new["id"])
        elif not new["line_count"]:
            new["lines"] = []
        elif added < LISTED_LINE_TABLES:
            added += 1
            wanted.append(new["id"])
    read = lines_of(session, sorted(wanted))
    by_id = {invoice["id"]: invoice for invoice in after.values()}
    for invoice_id in wanted:
        by_id[invoice_id]["lines"] = [_line(line) for line in read.get(invoice_id, [])]


def _diff(
    before: dict[Key, dict], after: dict[Key, dict], through: date, issue: bool, dry_run: bool
) -> dict:
    return {
        "through": through.isoformat(),
        "issue": issue,
        "dry_run": dry_run,
        **diff_invoices(before, after),
    }


# --- a real close: the drafts it replaced ----------------------------------------------------


def drafts() -> dict[Key, dict]:
    """The drafts before a close (taken under its lock, before its first step)."""
    with unit_of_work() as session:
        return picture(session, digests=True)


def changes(
    before: dict[Key, dict], reports: list[dict], through: date, issue: bool = False
) -> dict:
    """What a close changed since `before` (taken by `drafts`), read under its lock after
    its last step: the invoices it issued are in its issue step's report.

    The lines of invoices added are listed for the first `LISTED_LINE_TABLES` (the
    artifact shows no more), and counted for the others (`_read_lines`): a first close of
    6,000 invoices read and compared 54,000 lines it never showed."""
    issued = [
        i for r in reports if r["step"] == ISSUE.name for i in r["details"].get("invoice_ids", [])
    ]
    with unit_of_work() as session:
        after = picture(session, issued, lines=False)
        _read_lines(session, before, after)
    return _diff(before, after, through, issue, dry_run=False)


# --- a dry run -------------------------------------------------------------------------------


def _refuse_commit(session: Session) -> None:
    if not session.in_nested_transaction():
        raise DryRunCommitted("a dry run never commits its transaction")


def _close_lock() -> AbstractContextManager[Any]:
    from billing_core.config import get_settings
    from billing_core.store.locks import close_lock

    return close_lock("a dry run", get_settings().close_lock_timeout)


def dry_run(
    through: date,
    issue: bool = False,
    turn: Callable[[], AbstractContextManager[Any]] | None = None,
) -> dict:
    """What a close through `through` (issuing, with `issue`) would change in the
    invoices, computed and thrown away: `domain.close_diff`'s diff, with `through`,
    `issue`, `dry_run`, the step reports (`steps`), their `warnings`, and the families the
    close would fail (`failures`: family -> step and reason).

    It takes the close's turn (`turn`: the store's close lock by default; the flow's close
    turn in the flow), so that it starts from a store no close is half-way through. On
    SQLite it copies the store (`store.engine.scratch_copy`), gives the turn back, and
    computes on the copy: the store is neither locked nor written meanwhile. On
    PostgreSQL it computes on the store in a transaction it rolls back, holding the turn
    until then (no close contends with its uncommitted rows; readers are never blocked)."""
    with ExitStack() as kept:
        held = kept.enter_context(ExitStack())
        held.enter_context((turn or _close_lock)())
        copy = kept.enter_context(scratch_copy())
        if copy is not None:
            held.close()  # the copy is the store as it was: the turn can go
        with one_catalog_read(), unit_of_work(copy) as session:
            session.info["dry_run"] = True
            sa.event.listen(session, "before_commit", _refuse_commit)
            before = picture(session)
            reports, failed, issued = _run_steps(session, through, issue)
            after = picture(session, issued)
            session.rollback()
    result = _diff(before, after, through, issue, dry_run=True)
    result["steps"] = [r.as_dict() for r in reports]
    result["warnings"] = [w for r in reports for w in r.warnings]
    result["failures"] = dict(failed)
    return result


def _run_steps(
    session: Session, through: date, issue: bool
) -> tuple[list[StepReport], Failures, list[int]]:
    """The close's steps in order, on `session`; a family that fails a step is left out of
    the later ones, as the close leaves it."""
    c = Customer.__table__.c
    families = sorted(session.execute(sa.select(c.family_id).distinct()).scalars())
    failed = Failures()
    reports: list[StepReport] = []
    issued: list[int] = []
    for step in STEPS:
        scope = ALL if not failed else Scope.of(f for f in families if f not in failed)
        if step is COLLECT:
            reports.append(collection.collect(None, session))
        elif step is ISSUE:
            if issue:
                rows = ISSUE.run(
                    session,
                    through=through,
                    store_name=store_name(),
                    exclude_families=sorted(failed),
                )
                issued = [r.id for r in rows]
                report = StepReport(ISSUE.name, written=len(rows))
                report.details["issued"] = [r.number for r in rows]
                reports.append(report)
        elif step.builds and scope.families != frozenset():
            reports.append(failed.note(_step(session, step.run, through, scope, families)))
    return reports, failed, issued


def _step(
    session: Session, run: Any, through: date, scope: Scope, families: list[str]
) -> StepReport:
    """One step over the scope in a savepoint; when it fails for reasons that may lie in
    one family's data, again family group by family group (`steps.close._isolated`)."""

    def attempt(step: Any, through: date, scope: Scope, rest: tuple, kwargs: dict) -> StepReport:
        with session.begin_nested():
            return step(session, through, scope, *rest, **kwargs)

    try:
        return attempt(run, through, scope, (), {})
    except Exception as error:
        if not isolatable(error):
            raise
        # The families named: the runner's own list would open another session.
        named = scope if scope.families is not None else Scope.of(families)
        return _isolated(run, through, named, (), {}, error, attempt=attempt)
