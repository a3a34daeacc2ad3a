"""What a close changes in the invoices, published for the operator (`close-diff`): the
dry run's prediction, or the change a real close made to the drafts it replaced. The
diff itself is `billing_core.steps.dry_run` (computed) and `billing_core.domain.close_diff`
(compared)."""

from __future__ import annotations

from datetime import date

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from billing_core.domain.close_diff import (
    LISTED_LINE_TABLES,
    period_text,
    signed,
    status_text,
    value_text,
)
from billing_core.steps import dry_run as dry_runs
from flows.runtime import close_turn, md

KEY = "close-diff"
# An artifact is read in a browser: the invoices beyond these are counted, not listed
# (`billing close --dry-run --format json` and the dry run's flow result hold them all).
MAX_INVOICES = 500
MAX_LINE_TABLES = LISTED_LINE_TABLES


def dry_close(through: date, issue: bool, run: str) -> dict:
    """The period-close flow's dry run, started in the close's turn (the queue, then the
    close lock; see `dry_runs.dry_run` for how long it keeps it), nothing written; the
    diff published and returned."""
    result = dry_runs.dry_run(
        through, issue, turn=lambda: close_turn(f"dry run {run or 'local'}", run or None)
    )
    logger = get_run_logger()
    counts = result["counts"]
    logger.info(
        f"dry run through {through}: {counts['added']} invoice(s) added, {counts['changed']} "
        f"changed, {counts['removed']} removed, {counts['unchanged']} unchanged; "
        "nothing was written"
    )
    for warning in result["warnings"]:
        logger.warning(warning)
    for family, failure in sorted(result["failures"].items()):
        logger.error(
            f"the close would fail family {family}: {failure['step']}: {failure['reason']}"
        )
    publish_close_diff(result)
    return result


def counted(result: dict) -> dict:
    """A close's diff without its invoices: its date, the counts and the totals per
    currency, as a real close's flow result carries it (the invoices and their lines are
    in the `close-diff` artifact)."""
    return {k: v for k, v in result.items() if k != "invoices"}


def _money(value: str | None) -> str:
    return "—" if value is None else value


def markdown(result: dict) -> str:
    """The diff as the artifact shows it: counts, one row per invoice, the lines that
    differ, the totals per currency; store text as literal markdown."""
    counts = result["counts"]
    what = "would change (dry run: nothing was written)" if result["dry_run"] else "changed"
    issuing = ", issuing" if result["issue"] else ""
    lines = [
        f"### What the close through {result['through']}{issuing} {what}",
        "",
        f"{counts['added']} invoice(s) added, {counts['changed']} changed, "
        f"{counts['removed']} removed, {counts['unchanged']} unchanged.",
        "",
    ]
    invoices = result["invoices"]
    if invoices:
        lines += [
            "| change | billed customer | billing date | status | currency | old total "
            "| new total | difference |",
            "|---|---|---|---|---|---:|---:|---:|",
        ]
        for invoice in invoices[:MAX_INVOICES]:
            lines.append(
                f"| {invoice['change']} | {md(invoice['billed_customer'])} "
                f"| {invoice['billing_date']} | {md(status_text(invoice))} "
                f"| {md(invoice['currency'])} "
                f"| {_money(invoice['old_total'])} | {_money(invoice['new_total'])} "
                f"| {signed(invoice['difference'])} |"
            )
        if len(invoices) > MAX_INVOICES:
            lines.append(f"\n… and {len(invoices) - MAX_INVOICES} more invoice(s).")
    if result["totals"]:
        lines += [
            "",
            "**Totals by currency** (of the invoices above)",
            "",
            "| currency | old | new | difference |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {md(t['currency'])} | {t['old']} | {t['new']} | {signed(t['difference'])} |"
            for t in result["totals"]
        ]
    # A real close's diff lists the lines of its first invoices only (`unlisted_lines`).
    with_lines = [i for i in invoices if i["lines"] or i.get("unlisted_lines")]
    for invoice in [i for i in with_lines if i["lines"]][:MAX_LINE_TABLES]:
        lines += [
            "",
            f"**{md(invoice['billed_customer'])} {invoice['billing_date']}** ({invoice['change']})",
            "",
            "| line | serviced customer | product | kind | period | quantity | amount |",
            "|---|---|---|---|---|---:|---:|",
        ]
        lines += [
            f"| {line['change']} | {md(line['serviced_customer'])} | {md(line['product'] or '')} "
            f"| {line['kind']} | {period_text(line)} | {md(value_text(line, 'quantity'))} "
            f"| {md(value_text(line, 'amount'))} |"
            for line in invoice["lines"]
        ]
    if len(with_lines) > MAX_LINE_TABLES:
        lines.append(f"\n… the lines of {len(with_lines) - MAX_LINE_TABLES} more invoice(s).")
    failures = result.get("failures") or {}
    if failures:
        lines += ["", "**Families the close would fail** (left as they are)", ""]
        lines += [
            f"- {md(family)}: {md(f['step'])}: {md(f['reason'])}"
            for family, f in sorted(failures.items())
        ]
    return "\n".join(lines)


def publish_close_diff(result: dict) -> None:
    """The `close-diff` artifact of a dry run or a real close."""
    kind = "would change (dry run)" if result["dry_run"] else "changed"
    create_markdown_artifact(
        key=KEY,
        markdown=markdown(result),
        description=f"What the close through {result['through']} {kind} in the invoices",
    )
