"""`billing close` and `billing backfill`: the period close, and the invoices it left."""

from __future__ import annotations

import json
import os
import sys
from datetime import date
from typing import Annotated

import typer
from rich.table import Table

from billing_core.cli.common import err, fail, out, parse_date, require_store
from billing_core.cli.heap import import_quietly
from billing_core.cli.prefect_server import flow_api
from billing_core.cli.stopping import stops_on_sigterm


def close(
    through: Annotated[
        str | None,
        typer.Option(metavar="DATE", help="close billing dates up to this day (default: today)"),
    ] = None,
    issue: Annotated[bool, typer.Option("--issue", help="issue the drafts closed")] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="compute the close, write nothing, show what it would change"
        ),
    ] = False,
    format_: Annotated[
        str, typer.Option("--format", metavar="FORMAT", help="with --dry-run: table or json")
    ] = "table",
) -> None:
    """Run the period-close flow for every billing date up to and including --through."""
    import_quietly("flows.period_close")
    require_store()
    _check_format(format_, dry_run)
    day = parse_date(through, "--through") or date.today()
    with flow_api(announce=err.print), stops_on_sigterm(f"close through {day}"):
        _close(day, issue, dry_run, format_)


def _close(day: date, issue: bool, dry_run: bool = False, format_: str = "table") -> None:
    from flows.period_close import configured_close

    _quiet_tracebacks()
    if dry_run:
        _dry_run(lambda: configured_close()(through=day, issue=issue, dry_run=True), format_)
        return

    from billing_core.steps.documents import DocumentsNotWritten
    from billing_core.steps.failures import CloseFailed, StepFailed
    from billing_core.store.locks import CloseLocked, LockLost

    try:
        result = configured_close()(through=day, issue=issue)
    except (CloseLocked, LockLost) as locked:
        fail(str(locked))
    except StepFailed as failed:
        fail(
            f"close through {day}: {failed}; the steps before it are done: fix the cause "
            "and close again"
        )
    except CloseFailed as failed:
        _print_invoices(day)
        _fail_families(f"close through {day}", "close again", failed)
    except DocumentsNotWritten as missing:
        if missing.result is not None:
            _print_close(missing.result)
        fail(str(missing))
    _print_close(result)


def backfill(
    from_: Annotated[str, typer.Option("--from", metavar="DATE", help="first billing date")],
    to: Annotated[str, typer.Option("--to", metavar="DATE", help="last billing date")],
    issue: Annotated[bool, typer.Option("--issue", help="issue each date's drafts")] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="compute the backfill, write nothing, show what it would change"
        ),
    ] = False,
    format_: Annotated[
        str, typer.Option("--format", metavar="FORMAT", help="with --dry-run: table or json")
    ] = "table",
) -> None:
    """One close per billing date in the range, in order (same result as one close)."""
    import_quietly("flows.backfill")
    require_store()
    _check_format(format_, dry_run)
    start, end = parse_date(from_, "--from"), parse_date(to, "--to")
    assert start and end
    if end < start:
        fail(f"--to {end} is before --from {start}", code=2)
    with flow_api(announce=err.print), stops_on_sigterm(f"backfill to {end}"):
        _backfill(start, end, issue, dry_run, format_)


def _backfill(
    start: date, end: date, issue: bool, dry_run: bool = False, format_: str = "table"
) -> None:
    from flows.backfill import backfill as backfill_flow

    _quiet_tracebacks()
    if dry_run:
        _dry_run(lambda: backfill_flow(start=start, end=end, issue=issue, dry_run=True), format_)
        return

    from billing_core.steps.documents import DocumentsNotWritten
    from billing_core.steps.failures import CloseFailed

    try:
        result = backfill_flow(start=start, end=end, issue=issue)
    except DocumentsNotWritten as missing:
        _print_invoices(end)
        fail(str(missing))
    except CloseFailed as failed:
        _print_invoices(end)
        _fail_families(f"backfill to {end}", "run it again", failed)
    out.print(f"backfilled {len(result['closes'])} billing date(s) from {start} to {end}")
    _print_invoices(end)


def _check_format(format_: str, dry_run: bool) -> None:
    if format_ not in ("table", "json"):
        fail(f"--format must be table or json, got {format_!r}", code=2)
    if format_ == "json" and not dry_run:
        fail("--format json goes with --dry-run (a close prints its invoices as a table)", code=2)


def _dry_run(run, format_: str) -> None:
    """A dry run's diff, printed; exit 1 when the close would fail some families."""
    from billing_core.cli.close_diff import print_close_diff
    from billing_core.store.locks import CloseLocked, LockLost

    try:
        result = run()
    except (CloseLocked, LockLost) as locked:
        fail(str(locked))
    if format_ == "json":
        shown = {k: v for k, v in result.items() if k != "steps"}
        sys.stdout.write(json.dumps(shown, indent=2) + "\n")
    else:
        print_close_diff(out, err, result)
    if result["failures"]:
        raise typer.Exit(1)


def _fail_families(what: str, then: str, failed) -> None:
    """A close that finished every family but some: one line, then a line per family."""
    n = len(failed.failures)
    fail(
        f"{what} failed for {n} customer famil{'y' if n == 1 else 'ies'} (every other "
        f"family was closed); fix the cause and {then}:",
        *(f"  {line}" for line in failed.lines()),
    )


def _print_close(result: dict) -> None:
    for step in result["steps"]:
        out.print(
            f"  {step['step']}: read {step['read']}, wrote {step['written']}, "
            f"removed {step['deleted']}" + _money_said(step)
        )
        for warning in step["warnings"]:
            err.print(f"  warning: {warning}")
    _print_invoices(date.fromisoformat(result["through"]))


def _money_said(step: dict) -> str:
    """The money a step handled, as one clause: "; amount rated 1,234.50 USD, 99.00 EUR"."""
    money = (step.get("details") or {}).get("money") or {}
    said = [
        f"{label} "
        + ", ".join(f"{_grouped(amount)} {currency}" for currency, amount in sorted(totals.items()))
        for label, totals in money.items()
        if totals
    ]
    return "; " + "; ".join(said) if said else ""


def _grouped(amount: str) -> str:
    whole, _, fraction = amount.partition(".")
    sign = "-" if whole.startswith("-") else ""
    return f"{sign}{int(whole.lstrip('-') or 0):,}" + (f".{fraction}" if fraction else "")


# A close lists the invoices through its date one per row up to this many. Beyond, it
# prints how many there are by status and currency with their totals, the first FIRST
# rows, and the command that lists them all: Rich took seconds to draw the 6,000 rows of
# the benchmark store's close (docs/performance.md, "The CLI's fixed cost, on a big
# store"). The public scenarios and the demo bill a few invoices each: their closes
# print every row, as before.
LISTED = 100
FIRST = 20


def _print_invoices(through: date) -> None:
    from billing_core.steps.documents import summary_rows

    rows = summary_rows(None, through)
    if len(rows) > LISTED:
        _print_summary(rows, through)
    else:
        out.print(_invoices_table(rows, f"Invoices through {through}"))


def _invoices_table(rows: list, title: str) -> Table:
    from billing_core.domain.money import money_str

    table = Table(title=title)
    for col in ("id", "number", "status", "billed customer", "billing date", "total"):
        table.add_column(col, justify="right" if col in ("id", "total") else "left")
    for r in rows:
        table.add_row(
            str(r.id),
            r.number or "",
            r.status,
            r.billed_customer_id,
            r.billing_date.isoformat(),
            f"{money_str(r.total, r.currency)} {r.currency}",
        )
    return table


def _amount(total, currency: str) -> str:
    from billing_core.domain.money import money_str

    return f"{_grouped(money_str(total, currency))} {currency}"


def _print_summary(rows: list, through: date) -> None:
    """Too many invoices to list: their count and total by status and currency (then by
    currency alone), the first FIRST of them, and how to list them all."""
    from decimal import Decimal

    from billing_core.invoices.lifecycle import STATUSES

    by_status: dict[tuple[str, str], list] = {}
    by_currency: dict[str, list] = {}
    for r in rows:
        for entry in (
            by_status.setdefault((r.status, r.currency), [0, Decimal(0)]),
            by_currency.setdefault(r.currency, [0, Decimal(0)]),
        ):
            entry[0] += 1
            entry[1] += r.total
    out.print(
        f"Invoices through {through}: {len(rows):,} (more than {LISTED}: summed up, the "
        f"first {FIRST} listed)"
    )
    table = Table(title="By status and currency")
    for col in ("status", "currency", "invoices", "total"):
        table.add_column(col, justify="right" if col in ("invoices", "total") else "left")
    order = {status: n for n, status in enumerate(STATUSES)}
    for (status, currency), (count, total) in sorted(
        by_status.items(), key=lambda item: (order.get(item[0][0], len(order)), item[0])
    ):
        table.add_row(status, currency, f"{count:,}", _amount(total, currency))
    table.add_section()
    for currency, (count, total) in sorted(by_currency.items()):
        table.add_row("all", currency, f"{count:,}", _amount(total, currency))
    out.print(table)
    out.print(_invoices_table(rows[:FIRST], f"The first {FIRST}"))
    out.print(
        f"… and {len(rows) - FIRST:,} more: `billing invoices list --through {through}` "
        "lists them all"
    )


def _quiet_tracebacks() -> None:
    """Prefect's log lines on the terminal without their tracebacks (the Prefect UI and
    API keep them: their handler formats with its own formatter); BILLING_DEBUG=1 keeps
    them here too."""
    if os.environ.get("BILLING_DEBUG") == "1":
        return
    from prefect.logging.formatters import PrefectFormatter

    if getattr(PrefectFormatter.format, "quiet", False):
        return
    plain = PrefectFormatter.format

    def format_without_traceback(self, record):
        kept = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return plain(self, record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = kept

    format_without_traceback.quiet = True  # type: ignore[attr-defined]
    PrefectFormatter.format = format_without_traceback  # type: ignore[method-assign]
