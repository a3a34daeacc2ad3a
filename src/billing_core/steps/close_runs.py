"""The record of each close (`close_runs`): when it started and ended, what each step did,
and the families it failed.
"""

from __future__ import annotations

from contextlib import nullcontext
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa

from billing_core.store.engine import unit_of_work
from billing_core.store.locks import unfenced
from billing_core.store.models import CloseRun


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
