"""`billing invoices`: review, issue, change the status of, export and verify invoices."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from billing_core.cli.common import (
    check_status,
    err,
    fail,
    out,
    parse_date,
    require_customer,
    require_store,
)

invoices_app = typer.Typer(no_args_is_help=True, help="Review, issue and export invoices.")
InvoiceArgument = Annotated[
    str, typer.Argument(metavar="INVOICE", help="invoice number (INV-2026-000001) or id")
]


@invoices_app.command("list")
def invoices_list(
    status: Annotated[
        str | None, typer.Option(metavar="STATUS", help="draft, issued, paid, void or canceled")
    ] = None,
    customer: Annotated[
        str | None, typer.Option(metavar="CUSTOMER", help="billed customer id")
    ] = None,
    through: Annotated[
        str | None, typer.Option(metavar="DATE", help="billing dates up to this day")
    ] = None,
) -> None:
    """Invoices with their status and totals: subtotal + discounts + tax + credits = total."""
    from billing_core.domain.money import money_str
    from billing_core.invoices.lifecycle import list_invoices
    from billing_core.store.engine import unit_of_work

    require_store()
    check_status(status)
    day = parse_date(through, "--through")
    with unit_of_work() as session:
        require_customer(session, customer)
        rows = list_invoices(session, status, customer, day)
    amounts = ("subtotal", "discounts", "tax", "credits", "total")
    table = Table()
    for col in ("id", "number", "status", "billed customer", "billing date", *amounts):
        table.add_column(col, justify="right" if col in ("id", *amounts) else "left")
    for r in rows:
        table.add_row(
            str(r.id),
            r.number or "",
            r.status,
            r.billed_customer_id,
            r.billing_date.isoformat(),
            money_str(r.subtotal, r.currency),
            money_str(r.discount_total, r.currency),
            money_str(r.tax_total, r.currency),
            money_str(r.credit_total, r.currency),
            f"{money_str(r.total, r.currency)} {r.currency}",
        )
    out.print(table)
    if not rows:
        out.print("no invoices" + _filtered(status, customer, day))


def _filtered(status: str | None, customer: str | None, through: date | None = None) -> str:
    said = [f"status {status}"] if status else []
    said += [f"billed customer {customer}"] if customer else []
    said += [f"a billing date up to {through}"] if through else []
    return f" with {' and '.join(said)}" if said else ""


@invoices_app.command("show")
def invoices_show(
    invoice: Annotated[str, typer.Argument(metavar="INVOICE", help="invoice number or id")],
    output: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="also write the document to this .html or .pdf file (a copy for review)",
        ),
    ] = None,
) -> None:
    """One invoice, grouped by serviced customer as on the document."""
    from billing_core.cli.terminal import show_invoice
    from billing_core.invoices.lifecycle import InvoiceError, resolve
    from billing_core.store.engine import store_name, unit_of_work

    require_store()
    if output is not None and output.suffix.lower() not in (".html", ".pdf"):
        fail(f"--output must end in .html or .pdf: {output}", code=2)
    if output is not None and output.parts[0].lower() in ("s3:", "s3:/"):
        fail(
            "--output writes a local file (a copy for review); the invoice's own documents "
            "are in BILLING_OUTPUT_DIR, linked from the close's artifacts",
            code=2,
        )
    with unit_of_work() as session:
        try:
            invoice_id = resolve(session, invoice)
            show_invoice(session, invoice_id, out, store_name=store_name())
            if output is not None:
                from billing_core.invoices.documents import write_document

                write_document(session, invoice_id, output, store_name())
        except InvoiceError as error:
            fail(str(error))
        except OSError as error:
            from billing_core.store.files import os_reason

            fail(f"{output}: not written ({os_reason(error)})")
    if output is not None:
        out.print(f"wrote {output}")


@invoices_app.command("explain")
def invoices_explain(
    invoice: InvoiceArgument,
    line: Annotated[
        int | None, typer.Option(metavar="N", help="only this line (as numbered in the output)")
    ] = None,
) -> None:
    """How each line's amount came about, step by step, and the usage events behind it."""
    from billing_core.cli.terminal import print_explanation
    from billing_core.invoices.audit import explain_invoice
    from billing_core.invoices.lifecycle import InvoiceError, resolve
    from billing_core.store.engine import store_name, unit_of_work

    require_store()
    with unit_of_work() as session:
        try:
            data = explain_invoice(session, resolve(session, invoice), store_name(), line)
        except InvoiceError as error:
            fail(str(error))
    print_explanation(out, data)


@invoices_app.command("preview")
def invoices_preview(
    customer: Annotated[str, typer.Argument(metavar="CUSTOMER", help="customer id")],
    through: Annotated[
        str | None,
        typer.Option(metavar="DATE", help="close billing dates up to this day (default: today)"),
    ] = None,
) -> None:
    """The invoices a close through --through would build for CUSTOMER; writes nothing."""
    from billing_core.cli.terminal import print_invoice
    from billing_core.steps.preview import PreviewError, preview
    from billing_core.store.engine import store_name, unit_of_work

    require_store()
    day = parse_date(through, "--through") or date.today()
    with unit_of_work() as session:
        try:
            result = preview(session, customer, day, store_name())
        except PreviewError as error:
            fail(str(error))
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


@contextmanager
def _between_closes(command: str, refused: str) -> Iterator[None]:
    """The store's close lock, for a command that changes drafts (issuing or canceling
    them): a close rebuilds, credits and renders drafts step by step, so a draft frozen or
    withdrawn between two of its steps would leave the close's work half applied. With a
    close running the command changes nothing and says so in one line (it waits up to
    BILLING_CLOSE_LOCK_TIMEOUT first, as a close does)."""
    from billing_core.config import get_settings
    from billing_core.store.locks import CloseLocked, LockLost, close_lock

    try:
        with close_lock(command, get_settings().close_lock_timeout):
            yield
    except (CloseLocked, LockLost) as locked:
        fail(f"{refused}: {locked}")


def _transition(reference: str, to: str) -> None:
    from billing_core.invoices.lifecycle import InvoiceError, resolve, transition
    from billing_core.store.engine import unit_of_work

    require_store()
    # Canceling a draft withdraws its charges and gives its credits back: not while a close
    # is building drafts. Voiding or paying an issued invoice changes no draft.
    held = (
        _between_closes("billing invoices cancel", "nothing canceled")
        if to == "canceled"
        else nullcontext()
    )
    try:
        with held, unit_of_work() as session:
            invoice = transition(session, resolve(session, reference), to)
            session.commit()
    except InvoiceError as error:
        fail(str(error))
    out.print(f"invoice {invoice.number or invoice.id} is now {invoice.status}")


@invoices_app.command("issue")
def invoices_issue(
    invoices: Annotated[
        list[str] | None,
        typer.Argument(metavar="[INVOICE]...", help="draft ids (default: every draft due)"),
    ] = None,
    through: Annotated[
        str | None,
        typer.Option(metavar="DATE", help="issue drafts billed up to this day (default: today)"),
    ] = None,
) -> None:
    """Number and freeze drafts; their final documents are written."""
    from billing_core.invoices.lifecycle import InvoiceError, resolve
    from billing_core.steps import close as steps
    from billing_core.steps.documents import documents_problem
    from billing_core.store.engine import unit_of_work

    require_store()
    day = parse_date(through, "--through")
    with _between_closes("billing invoices issue", "nothing issued"):
        try:
            with unit_of_work() as session:
                ids = [resolve(session, reference) for reference in invoices or []]
            report = steps.issue(through=day if ids else (day or date.today()), ids=ids or None)
        except InvoiceError as error:
            fail(str(error))
        issued = report.details["invoice_ids"]
        rendered = steps.render(None, invoice_ids=issued) if issued else None
    out.print(f"issued {len(issued)} invoice(s): {', '.join(report.details['issued']) or '-'}")
    problem = documents_problem([report, rendered] if rendered else [report])
    if problem:
        fail(problem)


@invoices_app.command("verify")
def invoices_verify(
    invoices: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[INVOICE]...", help="invoice numbers or ids (default: every issued invoice)"
        ),
    ] = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="write a missing document again, and replace an altered one (kept beside "
            "it as NAME.altered-TIMESTAMP), when rendered again it has the recorded SHA-256",
        ),
    ] = False,
) -> None:
    """Check issued invoices' documents against the SHA-256 recorded when they were
    written: one line per missing or altered document; exits 1 when any (with --repair,
    when any is left)."""
    from billing_core.invoices.lifecycle import InvoiceError, resolve
    from billing_core.invoices.verification import check
    from billing_core.invoices.verification import repair as write_again
    from billing_core.store.engine import store_name, unit_of_work

    require_store()
    try:
        with unit_of_work() as session:
            ids = [resolve(session, reference) for reference in invoices or []] or None
            checked = check(session, ids)
            outcomes = write_again(session, checked.findings, store_name()) if repair else []
    except InvoiceError as error:
        fail(str(error))
    for index, finding in enumerate(checked.findings):
        line = finding.line() + (f"; {outcomes[index].text}" if outcomes else "")
        out.print(line, soft_wrap=True)
    summary = checked.summary()
    if repair and checked.findings:
        summary += f"; {sum(o.written for o in outcomes)} written again"
    out.print(summary, soft_wrap=True)
    left = [o for o in outcomes if not o.written] if repair else checked.findings
    if left:
        raise typer.Exit(1)


@invoices_app.command("void")
def invoices_void(invoice: InvoiceArgument) -> None:
    """Void an issued invoice (its credit consumption is not given back)."""
    _transition(invoice, "void")


@invoices_app.command("pay")
def invoices_pay(invoice: InvoiceArgument) -> None:
    """Mark an issued invoice paid."""
    _transition(invoice, "paid")


@invoices_app.command("cancel")
def invoices_cancel(invoice: InvoiceArgument) -> None:
    """Cancel a draft (its credit consumption is given back; its charges are withdrawn)."""
    _transition(invoice, "canceled")


# The columns of the CSV export, as docs/formats.md lists them (a test holds the two
# together): the JSON export's fields of each invoice, repeated on each of its lines, then
# the line's, in the JSON's order. A row is a line, so the invoice's `id` is named
# `invoice_id` and the line's `amount` `line_amount`.
INVOICE_FIELDS = [
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
    "issued_at",
    "issue_date",
    "due_date",
]
LINE_FIELDS = [
    "serviced_customer",
    "subscription",
    "price",
    "product",
    "kind",
    "description",
    "period_start",
    "period_end",
    "quantity",
    "unit_price",
    "amount",
    "grant",
    "tax_rate",
]
CSV_COLUMNS = ["invoice_id" if f == "id" else f for f in INVOICE_FIELDS] + [
    "line_amount" if f == "amount" else f for f in LINE_FIELDS
]


@invoices_app.command("export")
def invoices_export(
    format_: Annotated[
        str, typer.Option("--format", metavar="FORMAT", help="json or csv")
    ] = "json",
    output: Annotated[
        Path | None, typer.Option(metavar="FILE", help="file to write (default: stdout)")
    ] = None,
    status: Annotated[
        str | None, typer.Option(metavar="STATUS", help="only invoices with this status")
    ] = None,
) -> None:
    """Every invoice with its lines, as the export contract describes."""
    from billing_core.invoices.lifecycle import export
    from billing_core.store.engine import unit_of_work

    require_store()
    if format_ not in ("json", "csv"):
        fail(f"--format must be json or csv, got {format_!r}", code=2)
    check_status(status)
    with unit_of_work() as session:
        data = export(session, status)
    text = json.dumps(data, indent=2) + "\n" if format_ == "json" else _export_csv(data)
    if output is None:
        sys.stdout.write(text)
    else:
        _write_export(output, text, len(data))


def _export_csv(data: list[dict]) -> str:
    """The export as CSV: a row per invoice line, its invoice's columns first."""
    from billing_core.store.files import SafeCsvWriter

    buffer = io.StringIO()
    writer = SafeCsvWriter(csv.writer(buffer))
    writer.writerow(CSV_COLUMNS)
    for invoice in data:
        for line in invoice["lines"]:
            writer.writerow([invoice[f] for f in INVOICE_FIELDS] + [line[f] for f in LINE_FIELDS])
    return buffer.getvalue()


def _write_export(output: Path, text: str, count: int) -> None:
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as error:
        from billing_core.store.files import os_reason

        fail(f"{output}: not written ({os_reason(error)})")
    out.print(f"wrote {count} invoice(s) to {output}")
