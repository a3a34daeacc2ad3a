"""What a close would change (`billing close --dry-run`), on the terminal: one row per
invoice added, removed or changed, the lines that differ, the totals per currency."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from billing_core.domain.close_diff import period_text, signed, status_text, value_text


def _invoices_table(result: dict) -> Table:
    table = Table(title=f"Invoices the close through {result['through']} would change")
    for col in ("change", "billed customer", "billing date", "status", "currency"):
        table.add_column(col)
    for col in ("old total", "new total", "difference"):
        table.add_column(col, justify="right")
    for invoice in result["invoices"]:
        table.add_row(
            invoice["change"],
            invoice["billed_customer"],
            invoice["billing_date"],
            status_text(invoice),
            invoice["currency"],
            invoice["old_total"] or "—",
            invoice["new_total"] or "—",
            signed(invoice["difference"]),
        )
    return table


def _lines_table(invoice: dict) -> Table:
    table = Table(
        title=f"{invoice['billed_customer']} {invoice['billing_date']}: lines {invoice['change']}"
        if invoice["change"] != "changed"
        else f"{invoice['billed_customer']} {invoice['billing_date']}: lines that differ"
    )
    for col in ("line", "serviced customer", "product", "kind", "period"):
        table.add_column(col)
    for col in ("quantity", "amount"):
        table.add_column(col, justify="right")
    for line in invoice["lines"]:
        table.add_row(
            line["change"],
            line["serviced_customer"],
            line["product"] or "",
            line["kind"],
            period_text(line),
            value_text(line, "quantity"),
            value_text(line, "amount"),
        )
    return table


def _totals_table(result: dict) -> Table:
    table = Table(title="Totals by currency (of the invoices above)")
    table.add_column("currency")
    for col in ("old", "new", "difference"):
        table.add_column(col, justify="right")
    for total in result["totals"]:
        table.add_row(total["currency"], total["old"], total["new"], signed(total["difference"]))
    return table


def print_close_diff(console: Console, errors: Console, result: dict) -> None:
    """The dry run's diff; its warnings and the families it would fail on `errors`."""
    issuing = " and issue" if result["issue"] else ""
    counts = result["counts"]
    console.print(
        Text("Dry run", "bold")
        + f": what a close through {result['through']}{issuing} would change"
    )
    console.print(
        f"{counts['added']} invoice(s) added, {counts['changed']} changed, "
        f"{counts['removed']} removed, {counts['unchanged']} unchanged"
    )
    for warning in result.get("warnings", []):
        errors.print(f"warning: {warning}")
    if result["invoices"]:
        console.print(_invoices_table(result))
        for invoice in result["invoices"]:
            if invoice["lines"]:
                console.print(_lines_table(invoice))
        console.print(_totals_table(result))
    else:
        console.print("no invoice would change")
    for family, failure in sorted(result.get("failures", {}).items()):
        errors.print(
            f"the close would fail family {family}: {failure['step']}: {failure['reason']}"
        )
    console.print("dry run: nothing was written")
