"""The `billing` command: parses, calls the services, prints.

Refused input exits 1 with the reason on stderr (one line naming the file and problem,
then one line per bad row); nothing is changed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from billing_core.config import get_settings

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Period-close billing: schedules and usage into consolidated invoices.",
)
db_app = typer.Typer(no_args_is_help=True, help="Create or migrate the store.")
usage_app = typer.Typer(no_args_is_help=True, help="Load metered usage.")
invoices_app = typer.Typer(no_args_is_help=True, help="Review, issue and export invoices.")
subscriptions_app = typer.Typer(no_args_is_help=True, help="Billing schedules.")
credits_app = typer.Typer(no_args_is_help=True, help="Credit grants and their ledger.")
app.add_typer(db_app, name="db")
app.add_typer(usage_app, name="usage")
app.add_typer(invoices_app, name="invoices")
app.add_typer(subscriptions_app, name="subscriptions")
app.add_typer(credits_app, name="credits")

# Wide when piped (tables stay readable in logs); the terminal's width otherwise. What is
# printed holds names and ids as the catalog wrote them: no Rich markup (`[bold]`, an
# unbalanced `[/x]` that would fail the command) and no emoji codes are read in it; styles
# are given as `Text`.
out = Console(
    highlight=False, markup=False, emoji=False, width=None if sys.stdout.isatty() else 160
)
err = Console(stderr=True, highlight=False, markup=False, emoji=False, soft_wrap=True)


def _fail(*lines: str, code: int = 1) -> None:
    """Refuse: the reason on stderr (one line each, never wrapped) and a non-zero exit."""
    for line in lines:
        err.print(line)
    raise typer.Exit(code)


def _store() -> None:
    """Refuse to run on a store that is missing or not migrated."""
    from billing_core.store.engine import StoreError, require_current

    try:
        require_current()
    except StoreError as error:
        _fail(str(error))


def _date(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        _fail(f"{name}: not a date (YYYY-MM-DD): {value!r}", code=2)
    return None


# --- db ------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the store or migrate it to the code's schema (Alembic)."""
    from billing_core.store.engine import StoreError, safe_url, upgrade

    settings = get_settings()
    try:
        revision = upgrade(settings.database_url)
    except StoreError as error:
        _fail(str(error))
    out.print(f"store {safe_url(settings.database_url)} is at revision {revision}")


@db_app.command("grant")
def db_grant(
    role: Annotated[str, typer.Argument(help="the application role (PostgreSQL)")],
    apply: Annotated[
        bool, typer.Option("--apply", help="run the statements (connected as the store's owner)")
    ] = False,
) -> None:
    """Print (or apply) the grants of the application role: read and write rows, nothing
    else. On SQLite there are no roles: it says so and exits 0."""
    from billing_core.store.engine import safe_url
    from billing_core.store.roles import RoleError, grants

    _store()
    url = get_settings().database_url
    try:
        result = grants(url, role, apply=apply)
    except RoleError as error:
        _fail(str(error))
    if not result.applies:
        out.print(*result.warnings, soft_wrap=True)
        return
    for warning in result.warnings:
        err.print(f"warning: {warning}")
    for statement in result.statements:
        out.print(statement, soft_wrap=True)
    if apply:
        out.print(f"-- applied to {safe_url(url)}")


# --- catalog -------------------------------------------------------------------------------


@app.command("import")
def import_(file: Annotated[Path, typer.Argument(help="YAML or JSON catalog")]) -> None:
    """Import a catalog: validated whole, then upserted by id."""
    from billing_core.inputs.catalog import CatalogError, import_catalog, load_file, parse
    from billing_core.store.engine import unit_of_work

    _store()
    if not file.is_file():
        _fail(f"{file}: no such file")
    try:
        catalog = parse(load_file(file))
        with unit_of_work() as session:
            result = import_catalog(session, catalog)
            session.commit()
    except CatalogError as error:
        _fail(*(f"{file}: {problem}" for problem in error.problems))
    for warning in result.warnings:
        err.print(f"warning: {warning}")
    counts = ", ".join(
        f"{section} {new} new/{updated} updated"
        for section, (new, updated) in result.counts.items()
        if new or updated
    )
    out.print(f"imported {file}: {counts or 'nothing new'}")
    rebuilt = _rebuild_after_import(result.affected_families)
    if rebuilt:
        out.print(rebuilt)


def _rebuild_after_import(families: set[str]) -> str | None:
    """Recalculate the drafts an import may have changed (hierarchy, roll-up, schedules)."""
    from billing_core.steps.close import close_locally, latest_draft_date

    if not families:
        return None
    from billing_core.store.locks import CloseLocked

    through = latest_draft_date(families)
    if through is None:
        return None
    from billing_core.steps.close import CloseFailed

    try:
        reports = close_locally(through, families=families)
    except CloseLocked as locked:
        return f"drafts not recalculated now ({locked}); the next close rebuilds them"
    except CloseFailed as failed:
        return (
            f"drafts recalculated through {through} except for "
            + "; ".join(failed.lines())
            + " (those families keep their drafts; the next close retries them)"
        )
    _warn_missing_previews(reports)
    consolidated = next(r for r in reports if r.step == "consolidate roll-ups")
    built = consolidated.details.get("drafts_built", 0)
    dropped = consolidated.details.get("drafts_discarded", 0)
    if not built and not dropped:
        return f"drafts through {through} still match the catalog"
    return (
        f"recalculated drafts through {through} for {len(families)} famil"
        f"{'y' if len(families) == 1 else 'ies'}: {dropped} discarded, {built} rebuilt"
    )


def _warn_missing_previews(reports: list) -> None:
    """The import stands when draft previews cannot be written: one warning line."""
    from billing_core.steps.documents import documents_missing

    missing = documents_missing(reports)
    if missing:
        drafts = all(isinstance(m["invoice"], int) for m in missing)  # drafts have no number
        err.print(
            f"warning: {'draft previews' if drafts else 'documents'} could not be written "
            f"({len(missing)} missing; {missing[0]['reason']}); the next close writes them"
        )


# --- usage ---------------------------------------------------------------------------------


@usage_app.command("ingest")
def usage_ingest(
    files: Annotated[list[Path], typer.Argument(help="CSV or JSON Lines files")],
    skip_invalid: Annotated[
        Path | None,
        typer.Option(
            "--skip-invalid",
            metavar="REJECTS_FILE",
            help="load the valid rows and write the invalid ones to this CSV",
        ),
    ] = None,
) -> None:
    """Load usage events; the same event_id is counted once, whatever the file."""
    from billing_core.inputs.usage import (
        UsageRefused,
        ingest_files,
        refresh_statistics,
        retrying_deadlocks,
    )

    _store()
    try:
        result = retrying_deadlocks(
            lambda session: ingest_files(session, files, rejects_path=skip_invalid)
        )
    except UsageRefused as refused:
        _fail(refused.summary, *map(str, refused.problems))
    refresh_statistics(result.loaded)
    out.print(
        f"read {result.read} event(s) from {result.files} file(s): {result.loaded} new, "
        f"{result.duplicates} already loaded, {result.rejected} rejected"
        + (f" (written to {skip_invalid})" if result.rejected and skip_invalid else "")
    )


# --- close ---------------------------------------------------------------------------------


@app.command("close")
def close(
    through: Annotated[
        str | None, typer.Option(help="close billing dates up to this day (default: today)")
    ] = None,
    issue: Annotated[bool, typer.Option("--issue", help="issue the drafts closed")] = False,
) -> None:
    """Run the period-close flow for every billing date up to and including --through."""
    _store()
    day = _date(through, "--through") or date.today()
    from flows.period_close import configured_close

    _quiet_tracebacks()

    from billing_core.steps.documents import DocumentsNotWritten
    from billing_core.steps.failures import CloseFailed
    from billing_core.store.locks import CloseLocked, LockLost

    try:
        result = configured_close()(through=day, issue=issue)
    except (CloseLocked, LockLost) as locked:
        _fail(str(locked))
    except CloseFailed as failed:
        _print_invoices(None, through=day)
        _fail_families(f"close through {day}", "close again", failed)
    except DocumentsNotWritten as missing:
        if missing.result is not None:
            _print_close(missing.result)
        _fail(str(missing))
    _print_close(result)


@app.command("backfill")
def backfill(
    from_: Annotated[str, typer.Option("--from", help="first billing date")],
    to: Annotated[str, typer.Option("--to", help="last billing date")],
    issue: Annotated[bool, typer.Option("--issue", help="issue each date's drafts")] = False,
) -> None:
    """One close per billing date in the range, in order (same result as one close)."""
    _store()
    start, end = _date(from_, "--from"), _date(to, "--to")
    assert start and end
    if end < start:
        _fail(f"--to {end} is before --from {start}", code=2)
    from flows.backfill import backfill as backfill_flow

    _quiet_tracebacks()

    from billing_core.steps.documents import DocumentsNotWritten
    from billing_core.steps.failures import CloseFailed

    try:
        result = backfill_flow(start=start, end=end, issue=issue)
    except DocumentsNotWritten as missing:
        _print_invoices(None, through=end)
        _fail(str(missing))
    except CloseFailed as failed:
        _print_invoices(None, through=end)
        _fail_families(f"backfill to {end}", "run it again", failed)
    out.print(f"backfilled {len(result['closes'])} billing date(s) from {start} to {end}")
    _print_invoices(None, through=end)


def _fail_families(what: str, then: str, failed) -> None:
    """A close that finished every family but some: one line, then a line per family."""
    n = len(failed.failures)
    _fail(
        f"{what} failed for {n} customer famil{'y' if n == 1 else 'ies'} (every other "
        f"family was closed); fix the cause and {then}:",
        *(f"  {line}" for line in failed.lines()),
    )


def _print_close(result: dict) -> None:
    for step in result["steps"]:
        out.print(
            f"  {step['step']}: read {step['read']}, wrote {step['written']}, "
            f"removed {step['deleted']}"
        )
        for warning in step["warnings"]:
            err.print(f"  warning: {warning}")
    _print_invoices(None, through=date.fromisoformat(result["through"]))


def _print_invoices(invoice_ids: list[int] | None, through: date | None = None) -> None:
    from billing_core.domain.money import money_str
    from billing_core.steps.documents import summary_rows

    rows = summary_rows(invoice_ids, through)
    table = Table(title=f"Invoices through {through}" if through else "Invoices")
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
    out.print(table)


# --- invoices ------------------------------------------------------------------------------


@invoices_app.command("list")
def invoices_list(
    status: Annotated[str | None, typer.Option(help="draft, issued, paid, void, canceled")] = None,
    customer: Annotated[str | None, typer.Option(help="billed customer id")] = None,
) -> None:
    """Invoices with their status and totals."""
    from billing_core.domain.money import money_str
    from billing_core.invoices.lifecycle import list_invoices
    from billing_core.store.engine import unit_of_work

    _store()
    with unit_of_work() as session:
        rows = list_invoices(session, status, customer)
    table = Table()
    for col in (
        "id",
        "number",
        "status",
        "billed customer",
        "billing date",
        "subtotal",
        "tax",
        "credits",
        "total",
    ):
        table.add_column(
            col, justify="right" if col in ("id", "subtotal", "tax", "credits", "total") else "left"
        )
    for r in rows:
        table.add_row(
            str(r.id),
            r.number or "",
            r.status,
            r.billed_customer_id,
            r.billing_date.isoformat(),
            money_str(r.subtotal, r.currency),
            money_str(r.tax_total, r.currency),
            money_str(r.credit_total, r.currency),
            f"{money_str(r.total, r.currency)} {r.currency}",
        )
    out.print(table)


@invoices_app.command("show")
def invoices_show(
    invoice_id: Annotated[int, typer.Argument(help="invoice id")],
    output: Annotated[
        Path | None,
        typer.Option(help="also write the document to this .html or .pdf file (a copy for review)"),
    ] = None,
) -> None:
    """One invoice, grouped by serviced customer as on the document."""
    from billing_core.cli.terminal import show_invoice
    from billing_core.invoices.lifecycle import InvoiceError
    from billing_core.store.engine import store_name, unit_of_work

    _store()
    if output is not None and output.suffix.lower() not in (".html", ".pdf"):
        _fail(f"--output must end in .html or .pdf: {output}", code=2)
    with unit_of_work() as session:
        try:
            show_invoice(session, invoice_id, out, store_name=store_name())
            if output is not None:
                from billing_core.steps.render import write_document

                write_document(session, invoice_id, output, store_name())
        except InvoiceError as error:
            _fail(str(error))
        except OSError as error:
            from billing_core.store.files import os_reason

            _fail(f"{output}: not written ({os_reason(error)})")
    if output is not None:
        out.print(f"wrote {output}")


@invoices_app.command("preview")
def invoices_preview(
    customer: Annotated[str, typer.Argument(help="customer id")],
    through: Annotated[
        str | None, typer.Option(help="close billing dates up to this day (default: today)")
    ] = None,
) -> None:
    """The invoices a close through --through would build for CUSTOMER; writes nothing."""
    from billing_core.cli.terminal import print_invoice
    from billing_core.steps.preview import PreviewError, preview
    from billing_core.store.engine import store_name, unit_of_work

    _store()
    day = _date(through, "--through") or date.today()
    with unit_of_work() as session:
        try:
            result = preview(session, customer, day, store_name())
        except PreviewError as error:
            _fail(str(error))
        # Printed before the unit of work rolls everything back.
        out.print(
            Text("Preview", "bold") + f" for {result.customer_name} ({customer}) through {day}"
        )
        for warning in result.warnings:
            err.print(f"warning: {warning}")
        if result.billed_elsewhere:
            out.print(f"{customer}'s charges are billed to another customer: its invoices follow")
        if not result.invoices:
            out.print(f"no invoice: nothing would be billed to {customer} through {day}")
        for invoice, data in result.invoices:
            out.print()
            billing_date = data["invoice"]["billing_date"]
            title = f"Invoice preview for {billing_date} (not saved)"
            print_invoice(out, invoice, data, title=title)
        session.rollback()
    out.print("preview only: nothing was written")


def _transition(invoice_id: int, to: str) -> None:
    from billing_core.invoices.lifecycle import InvoiceError, transition
    from billing_core.store.engine import unit_of_work

    _store()
    try:
        with unit_of_work() as session:
            invoice = transition(session, invoice_id, to)
            session.commit()
    except InvoiceError as error:
        _fail(str(error))
    out.print(f"invoice {invoice.number or invoice.id} is now {invoice.status}")


@invoices_app.command("issue")
def invoices_issue(
    ids: Annotated[list[int] | None, typer.Argument(help="draft ids (default: all due)")] = None,
    through: Annotated[
        str | None, typer.Option(help="issue drafts billed up to this day (default: today)")
    ] = None,
) -> None:
    """Number and freeze drafts; their final documents are written."""
    from billing_core.invoices.lifecycle import InvoiceError
    from billing_core.steps import close as steps
    from billing_core.steps.documents import documents_problem

    _store()
    day = _date(through, "--through")
    try:
        report = steps.issue(through=day if ids else (day or date.today()), ids=ids or None)
    except InvoiceError as error:
        _fail(str(error))
    issued = report.details["invoice_ids"]
    rendered = steps.render(None, invoice_ids=issued) if issued else None
    out.print(f"issued {len(issued)} invoice(s): {', '.join(report.details['issued']) or '-'}")
    problem = documents_problem([report, rendered] if rendered else [report])
    if problem:
        _fail(problem)


@invoices_app.command("void")
def invoices_void(invoice_id: int) -> None:
    """Void an issued invoice (its credit consumption is not given back)."""
    _transition(invoice_id, "void")


@invoices_app.command("pay")
def invoices_pay(invoice_id: int) -> None:
    """Mark an issued invoice paid."""
    _transition(invoice_id, "paid")


@invoices_app.command("cancel")
def invoices_cancel(invoice_id: int) -> None:
    """Cancel a draft (its credit consumption is given back; its charges are withdrawn)."""
    _transition(invoice_id, "canceled")


@invoices_app.command("export")
def invoices_export(
    format_: Annotated[str, typer.Option("--format", help="json or csv")] = "json",
    output: Annotated[Path | None, typer.Option(help="file to write (default: stdout)")] = None,
    status: Annotated[str | None, typer.Option(help="only invoices with this status")] = None,
) -> None:
    """Every invoice with its lines, as the export contract describes."""
    from billing_core.invoices.lifecycle import export
    from billing_core.store.engine import unit_of_work
    from billing_core.store.files import SafeCsvWriter

    _store()
    if format_ not in ("json", "csv"):
        _fail(f"--format must be json or csv, got {format_!r}", code=2)
    with unit_of_work() as session:
        data = export(session, status)
    if format_ == "json":
        text = json.dumps(data, indent=2) + "\n"
    else:
        buffer = io.StringIO()
        invoice_fields = [
            "id",
            "number",
            "status",
            "billed_customer",
            "currency",
            "billing_date",
            "subtotal",
            "discount_total",
            "tax_total",
            "credit_total",
            "total",
        ]
        line_fields = [
            "serviced_customer",
            "subscription",
            "price",
            "product",
            "kind",
            "period_start",
            "period_end",
            "quantity",
            "unit_price",
            "amount",
        ]
        writer = SafeCsvWriter(csv.writer(buffer))
        writer.writerow(
            ["invoice_" + f if f == "id" else f for f in invoice_fields]
            + ["line_" + f if f in ("amount",) else f for f in line_fields]
        )
        for invoice in data:
            for line in invoice["lines"]:
                writer.writerow(
                    [invoice[f] for f in invoice_fields] + [line[f] for f in line_fields]
                )
        text = buffer.getvalue()
    if output is None:
        sys.stdout.write(text)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as error:
            from billing_core.store.files import os_reason

            _fail(f"{output}: not written ({os_reason(error)})")
        out.print(f"wrote {len(data)} invoice(s) to {output}")


# --- subscriptions -------------------------------------------------------------------------


@subscriptions_app.command("list")
def subscriptions_list(
    customer: Annotated[str | None, typer.Option(help="only this customer's")] = None,
    status: Annotated[str | None, typer.Option(help="draft, upcoming, active or completed")] = None,
    on: Annotated[
        str | None, typer.Option(help="the day the status is read on (default: today)")
    ] = None,
) -> None:
    """Billing schedules with their status: draft, upcoming, active or completed."""
    from billing_core.store.engine import unit_of_work
    from billing_core.views.subscriptions import list_subscriptions

    _store()
    statuses = ("draft", "upcoming", "active", "completed")
    if status is not None and status not in statuses:
        _fail(f"--status must be one of {', '.join(statuses)}, got {status!r}", code=2)
    day = _date(on, "--on") or date.today()
    with unit_of_work() as session:
        rows = list_subscriptions(session, day, customer, status)
    table = Table(title=f"Subscriptions on {day}")
    for col in ("id", "customer", "billed to", "cadence", "day", "start", "end", "status"):
        table.add_column(col)
    table.add_column("prices")
    for r in rows:
        table.add_row(
            r.id,
            r.customer_id,
            r.billed_customer_id,
            r.cadence,
            str(r.anchor_day)
            + (f" (aligned, own {r.billing_day})" if r.anchor_day != r.billing_day else ""),
            r.start.isoformat(),
            r.end.isoformat() if r.end else "",
            r.status,
            ", ".join(r.prices),
        )
    out.print(table)


@subscriptions_app.command("preview")
def subscriptions_preview(
    subscription_id: Annotated[str, typer.Argument(metavar="ID", help="subscription id")],
    through: Annotated[
        str | None, typer.Option(help="preview closes up to this day (default: today)")
    ] = None,
    format_: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """The periods, billing dates and prorated amounts a close would produce; writes
    nothing."""
    from billing_core.domain.money import money_str, plain
    from billing_core.store.engine import unit_of_work
    from billing_core.views.subscriptions import SubscriptionError, preview_subscription

    _store()
    if format_ not in ("table", "json"):
        _fail(f"--format must be table or json, got {format_!r}", code=2)
    day = _date(through, "--through") or date.today()
    try:
        with unit_of_work() as session:
            preview = preview_subscription(session, subscription_id, day)
    except SubscriptionError as error:
        _fail(str(error))
    sub, currency = preview.subscription, preview.currency

    def amount(value) -> str | None:
        return None if value is None else money_str(value, currency)

    if format_ == "json":
        data = {
            "subscription": sub.id,
            "customer": sub.customer_id,
            "billed_customer": preview.billed_customer_id,
            "status": preview.status,
            "cadence": sub.cadence,
            "billing_day": preview.anchor_day,
            "currency": currency,
            "timezone": preview.timezone,
            "through": day.isoformat(),
            "to_bill": amount(preview.to_bill),
            "notes": preview.notes,
            "lines": [
                {
                    "kind": x.kind,
                    "price": x.price_code,
                    "product": x.product,
                    "timing": x.timing,
                    "serviced_customer": x.serviced_customer_id,
                    "billed_customer": x.billed_customer_id,
                    "period_start": x.period_start.isoformat(),
                    "period_end": x.period_end.isoformat(),
                    "days": x.days,
                    "period_days": x.full_days,
                    "due_date": x.due_date.isoformat(),
                    "billing_date": x.billing_date.isoformat() if x.billing_date else None,
                    "state": x.state,
                    "quantity": plain(x.quantity),
                    "amount": amount(x.amount),
                    "commitment": amount(x.commitment),
                    "window_start": x.window_start.isoformat() if x.window_start else None,
                    "window_end": x.window_end.isoformat() if x.window_end else None,
                    "invoice": x.invoice_number,
                }
                for x in preview.lines
            ],
        }
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    out.print(
        Text(sub.id, "bold") + f"  {preview.customer_name} ({sub.customer_id}), billed to "
        f"{preview.billed_customer_id}  {sub.cadence} on day {preview.anchor_day}  from "
        f"{sub.start}" + (f" to {sub.end}" if sub.end else "") + f"  {preview.status}  "
        f"{currency}  {preview.timezone}"
    )
    table = Table(title=f"Closes through {day}")
    for col in ("period", "days", "item", "serviced", "due", "billing date", "state"):
        table.add_column(col)
    table.add_column("quantity", justify="right")
    table.add_column("amount", justify="right")
    for x in preview.lines:
        item = x.price_code or f"minimum {amount(x.commitment) or ''}".strip()
        if x.kind == "usage":
            item += f" (usage{', pool ' + x.pool if x.pool else ''})"
        table.add_row(
            f"{x.period_start} – {x.period_end}",
            f"{x.days}/{x.full_days}" if x.prorated else str(x.days),
            item,
            x.serviced_customer_id,
            x.due_date.isoformat(),
            x.billing_date.isoformat() if x.billing_date else "none yet",
            x.state + (f" {x.invoice_number}" if x.invoice_number else ""),
            plain(x.quantity) if x.kind == "usage" else "",
            amount(x.amount) or "",
        )
    out.print(table)
    for x in preview.lines:
        if x.kind == "usage" and x.state != "billed":
            out.print(
                f"  {x.price_code} {x.period_start} – {x.period_end} ({x.serviced_customer_id}):"
                f" usage from {x.window_start:%Y-%m-%d %H:%M} to {x.window_end:%Y-%m-%d %H:%M}"
                " UTC, rated so far"
            )
    for note in preview.notes:
        out.print(f"  note: {note}")
    out.print(f"to bill through {day}: {money_str(preview.to_bill, currency)} {currency}")


# --- credits -------------------------------------------------------------------------------


@credits_app.command("list")
def credits_list(
    customer: Annotated[str | None, typer.Option(help="only this customer's grants")] = None,
    ledger: Annotated[bool, typer.Option("--ledger", help="also list every ledger entry")] = False,
) -> None:
    """Credit grants: what each granted, what invoices consumed, the balance left."""
    from billing_core.cli.terminal import show_credits
    from billing_core.store.engine import unit_of_work

    _store()
    with unit_of_work() as session:
        show_credits(session, out, customer=customer, with_ledger=ledger)


# --- demo ----------------------------------------------------------------------------------


@app.command("demo")
def demo(
    folder: Annotated[Path, typer.Option(help="where the demo store and documents go")] = Path(
        "billing-demo"
    ),
) -> None:
    """The main job on a fresh SQLite store: sample catalog and usage, months closed and
    issued, documents written, a summary printed."""
    from billing_core.cli.demo import run_demo
    from billing_core.steps.documents import DocumentsNotWritten

    try:
        run_demo(folder, out)
    except DocumentsNotWritten as missing:
        _fail(str(missing))


# Prefect starts a temporary API server for a flow run when PREFECT_API_URL is unset; its
# default 20 s to start is too short on a busy machine.
SERVER_STARTUP_SECONDS = "180"
SERVER_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API server"


def _one_line(error: BaseException) -> str:
    """An unexpected error as one line (the traceback with BILLING_DEBUG=1)."""
    if SERVER_TIMEOUT in str(error):
        timeout = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
        return (
            f"the temporary Prefect server did not start within {timeout} s (a busy machine?): "
            "start one with `prefect server start` and run with "
            "PREFECT_API_URL=http://127.0.0.1:4200/api, or raise "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
        )
    from billing_core.store.engine import safe_url

    text = " ".join(str(getattr(error, "orig", None) or error).split())
    url = os.environ.get("BILLING_DATABASE_URL")
    if url:
        text = text.replace(url, safe_url(url))
    return f"error: {type(error).__name__}: {text[:500]} (BILLING_DEBUG=1 shows where)"


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


def main() -> None:
    """Entry point of the `billing` command: no input ever gets a traceback, only one line
    (BILLING_DEBUG=1 shows the traceback of an unexpected error)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", SERVER_STARTUP_SECONDS
    )
    try:
        app()  # exits itself, with click's one-line usage errors
    except Exception as error:  # noqa: BLE001 - the last guard: one line, not a traceback
        if os.environ.get("BILLING_DEBUG") == "1":
            raise
        err.print(_one_line(error))
        sys.exit(1)


if __name__ == "__main__":
    main()
