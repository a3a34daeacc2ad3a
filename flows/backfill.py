"""Backfill: one period close per billing date in a range, in order."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed, State

from billing_core.steps.close import billing_dates_between
from billing_core.steps.documents import DocumentsNotWritten
from billing_core.steps.failures import CloseFailed
from flows.period_close import configured_close
from flows.runtime import close_turn


@flow(name="backfill")
def backfill(start: date, end: date, issue: bool = False, dry_run: bool = False) -> dict | State:
    """Close each billing date from `start` to `end` as a child flow run, in order; the
    result is the same as one close through `end`, and running it again changes nothing.

    With `dry_run`: that one close through `end` as a dry run (a child flow run), which
    writes nothing and publishes what the backfill would change (`close-diff`)."""
    if dry_run:
        return configured_close()(through=end, issue=issue, dry_run=True)
    logger = get_run_logger()
    run = str(flow_run.get_id() or "")
    # Its schedule recalculation writes: under the close lock like any close.
    with close_turn(f"backfill {run}"):
        dates = billing_dates_between(start, end)
    logger.info(f"backfilling {len(dates)} billing date(s) from {start} to {end}")
    close = configured_close()
    closes, missing = [], None
    failed: dict[str, dict[str, str]] = {}
    for day in dates:
        try:
            closes.append(close(through=day, issue=issue))
            missing = None
        except DocumentsNotWritten as error:
            # Recorded: the next date's close writes what it can and reports what is left.
            closes.append(error.result)
            missing = error
        except CloseFailed as error:
            # The other families go on to the next dates; the failed ones stay as they were.
            closes.append({"through": day.isoformat()})
            for family, failure in error.failures.items():
                failed.setdefault(family, failure)
            missing = DocumentsNotWritten(error.documents) if error.documents else None
    if failed:
        raise CloseFailed(failed, end, documents=str(missing) if missing else None)
    result = {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "closes": [c["through"] for c in closes],
    }
    if missing is not None:
        return Failed(message=str(missing), data=DocumentsNotWritten(str(missing), result))
    return result
