"""Backfill: one period close per billing date in a range, in order."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from billing_core.close import billing_dates_between
from billing_core.config import get_settings
from billing_core.locks import close_lock
from flows.period_close import configured_close
from flows.runtime import close_slot


@flow(name="backfill")
def backfill(start: date, end: date, issue: bool = False) -> dict:
    """Close each billing date from `start` to `end` as a child flow run, in order; the
    result is the same as one close through `end`, and running it again changes nothing."""
    logger = get_run_logger()
    run = str(flow_run.get_id() or "")
    # Its schedule recalculation writes: under the close lock like any close.
    with close_slot(), close_lock(f"backfill {run}", get_settings().close_lock_timeout):
        dates = billing_dates_between(start, end)
    logger.info(f"backfilling {len(dates)} billing date(s) from {start} to {end}")
    close = configured_close()
    closes = [close(through=day, issue=issue) for day in dates]
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "closes": [c["through"] for c in closes],
    }
