"""Invoice documents: HTML from the Jinja2 templates, PDF from that HTML (WeasyPrint).

Drafts get an HTML preview marked DRAFT, rendered again only when the invoice changes.
Issued invoices get their final documents once; nothing regenerates them.
"""

from __future__ import annotations

import atexit
import gc
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import sqlalchemy as sa
from babel import Locale
from babel.numbers import get_currency_symbol
from sqlmodel import Session

from billing_core.config import get_settings
from billing_core.domain.money import ZERO, minor_units
from billing_core.invoices.identity import mentions_of
from billing_core.invoices.identity import of as identity_of
from billing_core.invoices.lifecycle import InvoiceError, lines_of, unlink_after_commit
from billing_core.report import StepReport
from billing_core.store import files as outputs
from billing_core.store.models import Charge, Invoice, InvoiceCharge, InvoiceDocument
from billing_core.store.reference import ALL, Scope
from billing_core.store.rows import chunks, insert_rows

ONE_DAY = timedelta(days=1)
LOCALE = "en_US"
# What the breakdown page reads of a charge (not its stored pricing: that is heavy).
BREAKDOWN_COLUMNS = (
    "kind",
    "metric_code",
    "serviced_customer_id",
    "product",
    "pool",
    "period_start",
    "period_end",
    "quantity",
    "charge_key",
)


def templates_dir() -> Path:
    configured = get_settings().templates_dir
    if configured is not None:
        return Path(configured)
    return Path(str(resources.files("billing_templates")))


class _Environment(jinja2.Environment):
    """Jinja's environment, reading `row.amount` from a dict by its key first.

    Jinja looks a dotted name up as an attribute first and as a key second; every
    document's context is plain dicts, so each of some 150 lookups per document raised
    and caught an AttributeError before finding the key (about a tenth of the time of
    6,000 HTML documents). A key now wins over a dict's own methods (`row.items` is the
    key `items` if there is one); anything else is looked up as Jinja does.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if obj.__class__ is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)


@lru_cache(maxsize=8)
def _environment(folder: str, mtime: float) -> jinja2.Environment:
    return _Environment(
        loader=jinja2.FileSystemLoader(folder),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def environment() -> jinja2.Environment:
    folder = templates_dir()
    stamp = max((p.stat().st_mtime for p in folder.glob("*.*")), default=0.0)
    return _environment(str(folder), stamp)


# --- formatting ------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _locale() -> tuple[Locale, Any, Any]:
    locale = Locale.parse(LOCALE)
    return locale, locale.currency_formats["standard"], locale.decimal_formats[None]


def money(amount: Decimal | None, currency: str, exact: bool = False) -> str:
    """An amount for its currency: symbol, grouping, the currency's minor units (Babel).

    `exact` keeps digits beyond the minor units (unit prices keep full precision).
    """
    if amount is None:
        return ""
    # Equal decimals are spelt one way: no "-0", and no trailing zeros beyond the minor
    # units.
    amount = amount.normalize() if amount else Decimal(0)
    layout = _money_layout(currency)
    if layout is not None:
        negative, positive, suffix, places = layout
        shown = max(-amount.as_tuple().exponent, 0)
        if exact or shown <= places:
            # What Babel writes, without its per-call pattern machinery: the amount with
            # grouping and at least the minor units, between the prefix and suffix Babel
            # gives this currency (checked against Babel by the tests).
            text = f"{abs(amount).quantize(Decimal(1).scaleb(-max(shown, places))):,f}"
            return (negative if amount < 0 else positive) + text + suffix
    return _babel_money(amount, currency, exact)


@lru_cache(maxsize=65536)
def _babel_money(amount: Decimal, currency: str, exact: bool) -> str:
    locale, pattern, _ = _locale()
    text = pattern.apply(
        amount, locale, currency=currency, currency_digits=True, decimal_quantization=not exact
    )
    symbol = get_currency_symbol(currency, locale)
    if symbol.isalpha() and symbol.isupper():
        # A currency without a symbol shows its code: keep it apart from the digits.
        text = text.replace(symbol, symbol + "\u00a0", 1)
    return text


@lru_cache(maxsize=512)
def _money_layout(currency: str) -> tuple[str, str, str, int] | None:
    """(negative prefix, prefix, suffix, minor units) of a currency's amounts as Babel
    writes them, read off two probes; None when they do not take that shape."""
    places = minor_units(currency)
    number = f"{Decimal(1234):,.{places}f}"
    positive, negative = (
        _babel_money(Decimal(1234), currency, False),
        _babel_money(Decimal(-1234), currency, False),
    )
    if positive.count(number) != 1 or negative.count(number) != 1:
        return None
    before, after = positive.split(number)
    negative_before, negative_after = negative.split(number)
    if negative_after != after:
        return None
    return negative_before, before, after, places


def day(value: date | None) -> str:
    """A date nobody can misread, whatever their convention: 1 Feb 2026."""
    if value is None:
        return ""
    return f"{value.day} {value:%b %Y}"


def quantity(value: Decimal | None) -> str:
    """A quantity with grouping and every significant decimal: 1,234.5."""
    if value is None:
        return ""
    value = value.normalize() if value else Decimal(0)
    if _plain_quantities():
        return f"{value:,f}"  # what Babel writes for this locale (checked by the tests)
    return _babel_quantity(value)


@lru_cache(maxsize=65536)
def _babel_quantity(value: Decimal) -> str:
    locale, _, pattern = _locale()
    return pattern.apply(value, locale, decimal_quantization=False)


@lru_cache(maxsize=1)
def _plain_quantities() -> bool:
    """Whether the locale writes quantities as Python's `,f` format does."""
    probes = [Decimal("-1234567.125"), Decimal("1000"), Decimal("0.5"), Decimal(0)]
    return all(_babel_quantity(p) == f"{p:,f}" for p in probes)


def period(start: date | None, end: date | None) -> str:
    """A half-open period shown with its inclusive last day: 1 Jan – 31 Jan 2026."""
    if start is None or end is None:
        return ""
    last = end - ONE_DAY
    if start == last:
        return day(start)
    if start.year == last.year:
        return f"{start.day} {start:%b} – {day(last)}"
    return f"{day(start)} – {day(last)}"


def percent(rate: Decimal) -> str:
    return f"{(rate * 100).normalize():f}%"


# --- what a document shows -------------------------------------------------------------


def _section_order(customer_ids: Iterable[str], billed: str, names: dict[str, str]) -> list[str]:
    """The billed customer's own section first, then the others by name."""
    return sorted(set(customer_ids), key=lambda c: (c != billed, names.get(c, c).casefold(), c))


def context(invoice: Any, lines: list[Any], charges: list[Any], identity: dict) -> dict:
    """Everything a document or the terminal shows, grouped and formatted the way finance
    reads it. Only what is frozen with an issued invoice goes in (its lines, charges and
    the identity snapshot taken at issue), so a final document reads the same whenever it
    is rendered."""
    names: dict[str, str] = identity["customers"]
    metric_names: dict[str, str] = identity["metrics"]
    issuer = {k: v for k, v in identity["issuer"].items() if k not in ("id", "invoice_prefix")}
    billed_entry = identity["billed"]
    currency = invoice.currency
    billed = invoice.billed_customer_id
    by_position = {line.position: line for line in lines}
    by_customer: dict[str, list[Any]] = defaultdict(list)
    for line in lines:
        by_customer[line.serviced_customer_id].append(line)
    sections = []
    for customer_id in _section_order(by_customer, billed, names):
        section_lines = by_customer[customer_id]
        taxes: dict[tuple, list[Decimal]] = {}
        rows, credits = [], []
        for line in section_lines:
            if line.kind == "tax":
                taxed = by_position.get(line.taxed_position)
                key = (line.jurisdiction, line.tax_rate)
                base, amount = taxes.setdefault(key, [ZERO, ZERO])
                taxes[key] = [base + (taxed.amount if taxed else ZERO), amount + line.amount]
            elif line.kind == "credit":
                credits.append(
                    {
                        "label": line.description or line.product,
                        "amount": money(line.amount, currency),
                    }
                )
            else:
                itemized = line.kind in ("fixed", "usage", "adjustment")
                rows.append(
                    {
                        "product": line.product or "",
                        "bundle": line.bundle,
                        "kind": line.kind,
                        "note": _note(line),
                        "period": period(line.period_start, line.period_end),
                        "quantity": quantity(line.quantity) if itemized else "",
                        "unit_price": money(line.unit_price, currency, exact=True)
                        if itemized
                        else "",
                        "amount": money(line.amount, currency),
                    }
                )
        sections.append(
            {
                "customer_id": customer_id,
                "name": names.get(customer_id, customer_id),
                "is_billed": customer_id == billed,
                "rows": rows,
                "taxes": [
                    {
                        "label": f"Tax {jurisdiction} {percent(rate)}",
                        "base": money(base, currency),
                        "amount": money(amount, currency),
                    }
                    for (jurisdiction, rate), (base, amount) in sorted(
                        taxes.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
                    )
                ],
                "credits": credits,
                "total": money(sum((x.amount for x in section_lines), ZERO), currency),
            }
        )
    return {
        "invoice": {
            "id": invoice.id,
            "number": invoice.number,
            "draft": invoice.status == "draft",
            "reference": invoice.number or f"Draft {invoice.id}",
            "billing_date": day(invoice.billing_date),
            "currency": currency,
        },
        "issuer": {**issuer, "address": list(issuer.get("address") or [])},
        "billed": {**billed_entry, "id": billed},
        "sections": sections,
        "multiple_sections": len(sections) > 1,
        "totals": _totals(invoice, currency),
        "breakdown": _breakdown(charges, billed, names, metric_names),
    }


def _note(line: Any) -> str | None:
    if line.kind == "adjustment":
        return "Late usage for this period, not billed before"
    if line.kind == "minimum":
        return "Shortfall against the minimum commitment"
    return None


def _totals(invoice: Any, currency: str) -> list[dict]:
    rows = [{"label": "Subtotal", "amount": money(invoice.subtotal, currency), "grand": False}]
    if invoice.discount_total:
        rows.append(
            {
                "label": "Discounts",
                "amount": money(invoice.discount_total, currency),
                "grand": False,
            }
        )
    rows.append({"label": "Tax", "amount": money(invoice.tax_total, currency), "grand": False})
    if invoice.credit_total:
        rows.append(
            {"label": "Credits", "amount": money(invoice.credit_total, currency), "grand": False}
        )
    rows.append(
        {
            "label": f"Total due ({currency})",
            "amount": money(invoice.total, currency),
            "grand": True,
        }
    )
    return rows


def _breakdown(
    charges: list[Any], billed: str, names: dict[str, str], metric_names: dict[str, str]
) -> list[dict]:
    """Usage per serviced customer, then per metric: quantities and service periods."""
    usage: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for charge in charges:
        if charge.kind not in ("usage", "adjustment") or charge.metric_code is None:
            continue
        if charge.quantity == 0:
            continue  # a customer without usage in a period has nothing to break down
        usage[charge.serviced_customer_id][charge.metric_code].append(charge)
    out = []
    for customer_id in _section_order(usage, billed, names):
        metrics = []
        for code in sorted(
            usage[customer_id], key=lambda m: (metric_names.get(m, m).casefold(), m)
        ):
            found = sorted(
                usage[customer_id][code],
                key=lambda c: (c.period_start, c.kind != "usage", c.charge_key),
            )
            rows = [
                {
                    "product": c.product,
                    "period": period(c.period_start, c.period_end),
                    "quantity": quantity(c.quantity),
                    "note": "late usage"
                    if c.kind == "adjustment"
                    else ("pooled" if c.pool else ""),
                }
                for c in found
            ]
            metrics.append(
                {
                    "name": metric_names.get(code, code),
                    "code": code,
                    "rows": rows,
                    "total": quantity(sum((c.quantity for c in found), ZERO))
                    if len(found) > 1
                    else None,
                }
            )
        out.append(
            {
                "customer_id": customer_id,
                "name": names.get(customer_id, customer_id),
                "metrics": metrics,
            }
        )
    return out


def contexts(session: Session, invoices: list[Any], store_name: str = "billing") -> dict[int, dict]:
    """The document context of each invoice, loaded set-based (no query per invoice)."""
    if not invoices:
        return {}
    ids = sorted(i.id for i in invoices)
    lines = lines_of(session, ids)
    ch = Charge.__table__.c
    link = InvoiceCharge.__table__.c
    charges: dict[int, list[Any]] = defaultdict(list)
    for part in chunks(ids):
        for charge in session.execute(
            sa.select(link.invoice_id, *(ch[name] for name in BREAKDOWN_COLUMNS))
            .join_from(Charge.__table__, InvoiceCharge.__table__, link.charge_id == ch.id)
            .where(link.invoice_id.in_(part))
        ):
            charges[charge.invoice_id].append(charge)
    # An issued invoice shows the identity frozen with it; a draft, the catalog's now.
    identities = identity_of(
        session,
        invoices,
        store_name,
        {i.id: mentions_of(lines[i.id], charges[i.id]) for i in invoices},
    )
    return {i.id: context(i, lines[i.id], charges[i.id], identities[i.id]) for i in invoices}


def source_hash(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def render_html(data: dict, env: jinja2.Environment | None = None, inline_css: bool = True) -> str:
    """A document's HTML; pass `env` when rendering many (reading settings is not free).

    The HTML written to disk carries its stylesheet; the HTML a PDF is made from leaves it
    out, and the PDF gets the same stylesheet parsed once per process.
    """
    return (env or environment()).get_template("invoice.html").render(**data, inline_css=inline_css)


PDF_STYLESHEETS = ("fonts.css", "invoice.css")

# The statuses whose invoices get documents (a canceled draft gets none).
RENDERED = ("draft", "issued", "paid", "void")


@lru_cache(maxsize=4)
def _pdf_resources(folder: str, mtime: float) -> tuple[list[Any], Any]:
    """The parsed stylesheets and the font configuration, shared by every PDF a process
    writes (parsing them per document costs more than laying the document out).

    `fonts.css`, where the template folder has one, declares the PDF's own fonts
    (templates/fonts): WeasyPrint subsets every embedded font per PDF, and a small font
    subsets several times faster than the system's full one.
    """
    from weasyprint import CSS
    from weasyprint.text.fonts import FontConfiguration

    fonts = FontConfiguration()
    sheets = [Path(folder) / name for name in PDF_STYLESHEETS]
    return [CSS(filename=str(p), font_config=fonts) for p in sheets if p.exists()], fonts


# The font configuration keeps the @font-face files in a temporary folder it removes when
# it is collected; let go of it before the interpreter tears its modules down.
atexit.register(_pdf_resources.cache_clear)


def pdf_document(html: str, folder: str | None = None) -> Any:
    """WeasyPrint's laid-out document of HTML made with `inline_css=False`, with the
    template folder's stylesheets and fonts."""
    from weasyprint import HTML

    folder = folder or str(templates_dir())
    found = [Path(folder) / n for n in PDF_STYLESHEETS if (Path(folder) / n).exists()]
    sheets, fonts = _pdf_resources(folder, max(p.stat().st_mtime for p in found))
    return HTML(string=html, base_url=folder).render(stylesheets=sheets, font_config=fonts)


def render_pdf(html: str, path: Path, folder: str | None = None) -> str:
    """Write the PDF of a document's HTML made with `inline_css=False`; returns its SHA-256.

    The same HTML gives the same pages, but not always the same bytes: a font subset made
    by fontTools (without HarfBuzz's subsetter) carries the second it was made."""
    content = pdf_document(html, folder).write_pdf()
    outputs.write_file(path, content)
    return hashlib.sha256(content).hexdigest()


def render_pdfs(
    jobs: list[tuple[str, Path]],
    folder: str,
    failed: Callable[[int, OSError], None] | None = None,
) -> list[str | None]:
    """Write PDFs (HTML, path) in order; returns their SHA-256.

    With `failed`, a PDF that cannot be written (an OSError: a full or read-only disk) is
    handed to it with its index, its SHA-256 is None, and the next PDFs are still written;
    without, the OSError is raised.

    One process renders its shard's PDFs one after the other: to use every core, run the
    close on the Dask task runner with several shards (BILLING_TASK_RUNNER=dask), which
    renders each shard in its own worker process.

    A laid-out document is a web of reference cycles (each box points at its parent) that
    only the cyclic collector frees, and the close's steps run with it paused
    (`collector.paused`): each PDF's are collected before the next is laid out, or a
    shard of 6,000 invoices would hold some 6 MB of dead boxes for each.
    """
    shas: list[str | None] = []
    for index, (html, path) in enumerate(jobs):
        try:
            shas.append(render_pdf(html, path, folder))
        except OSError as error:
            if failed is None:
                raise
            failed(index, error)
            shas.append(None)
        gc.collect(0)
    return shas


def document_path(output_dir: Path, invoice: Any, fmt: str) -> Path:
    """Where an invoice's document goes: a folder per billing date, a file named after the
    billed customer and the number (or the draft's id). Ids are made safe as name parts
    (`outputs.name_part`), so the file is always inside `output_dir`."""
    name = outputs.name_part(invoice.number) if invoice.number else f"draft-{invoice.id}"
    customer = outputs.name_part(invoice.billed_customer_id)
    return output_dir / invoice.billing_date.isoformat() / f"{customer}-{name}.{fmt}"


def write_document(
    session: Session, invoice_id: int, path: Path, store_name: str = "billing"
) -> Path:
    """Write one invoice's document to `path` (.html or .pdf), drafts included, without
    recording it: a copy for review, not the invoice's own document."""
    invoice = session.execute(
        sa.select(Invoice.__table__).where(Invoice.__table__.c.id == invoice_id)
    ).first()
    if invoice is None:
        raise InvoiceError(f"no invoice {invoice_id}")
    data = contexts(session, [invoice], store_name)[invoice.id]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".pdf":
        render_pdf(render_html(data, inline_css=False), path)
    else:
        outputs.write_file(path, render_html(data).encode("utf-8"))
    return path


def render(
    session: Session,
    through: date | None = None,
    scope: Scope = ALL,
    invoice_ids: list[int] | None = None,
    store_name: str = "billing",
    now: datetime | None = None,
) -> StepReport:
    """Write the documents that are missing or out of date for the invoices in scope."""
    now = now or datetime.now(UTC)
    settings = get_settings()
    output_dir = Path(settings.output_dir)
    formats = [f for f in ("html", "pdf") if f in settings.formats] or ["html"]
    report = StepReport("render invoices")
    v = Invoice.__table__.c
    stmt = sa.select(Invoice.__table__).where(v.status.in_(RENDERED))
    if through is not None:
        stmt = stmt.where(v.billing_date <= through)
    if invoice_ids is not None:
        stmt = stmt.where(v.id.in_(invoice_ids))
    invoices = list(
        session.execute(
            stmt.where(scope.where(v.family_id)).order_by(v.billing_date, v.billed_customer_id)
        )
    )
    report.read = len(invoices)
    if not invoices:
        return report
    d = InvoiceDocument.__table__.c
    documents = {}
    for part in chunks([i.id for i in invoices]):
        documents.update(
            {
                (r.invoice_id, r.format): r
                for r in session.execute(
                    sa.select(InvoiceDocument.__table__).where(d.invoice_id.in_(part))
                )
            }
        )
    wanted = []
    for invoice in invoices:
        for fmt in formats if invoice.status != "draft" else ["html"]:
            doc = documents.get((invoice.id, fmt))
            if doc is not None and doc.final:
                # Issued documents are written once, never again: a missing file is
                # restored from a backup, not re-rendered from today's catalog.
                if not Path(doc.path).exists():
                    report.warnings.append(
                        f"invoice {invoice.number}: its {fmt} document {doc.path} is missing"
                    )
                continue
            wanted.append((invoice, fmt, doc))
    if not wanted:
        return report
    needed = {invoice.id: invoice for invoice, _, _ in wanted}
    data = contexts(session, list(needed.values()), store_name)
    env, folder = environment(), str(templates_dir())
    digests = {i: source_hash(d) for i, d in data.items()}
    written: list[tuple[Any, str, Any, Path, str]] = []  # invoice, format, doc, path, sha
    pdfs: list[tuple[Any, Any, Path, str]] = []  # invoice, doc, path, html
    failures: list[tuple[Any, str, Any, OSError]] = []  # invoice, format, doc, error
    folders: dict[Path, OSError | None] = {}  # each folder made (or refused) once

    def ready(path: Path) -> OSError | None:
        if path.parent not in folders:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                folders[path.parent] = None
            except OSError as error:
                folders[path.parent] = error
        return folders[path.parent]

    # A document that cannot be written (a full or read-only disk) is reported and left
    # unrecorded, and the others are still written: the next render writes it.
    for invoice, fmt, doc in wanted:
        path = document_path(output_dir, invoice, fmt)
        if doc is not None and doc.source_hash == digests[invoice.id] and Path(doc.path).exists():
            continue
        refused = ready(path)
        if refused is not None:
            failures.append((invoice, fmt, doc, refused))
        elif fmt == "html":
            content = render_html(data[invoice.id], env).encode("utf-8")
            try:
                outputs.write_file(path, content, replace=doc is not None)
            except OSError as error:
                failures.append((invoice, fmt, doc, error))
            else:
                written.append((invoice, fmt, doc, path, hashlib.sha256(content).hexdigest()))
        else:
            pdfs.append((invoice, doc, path, render_html(data[invoice.id], env, inline_css=False)))

    def pdf_failed(index: int, error: OSError) -> None:
        invoice, doc, _, _ = pdfs[index]
        failures.append((invoice, "pdf", doc, error))

    shas = render_pdfs([(html, path) for _, _, path, html in pdfs], folder, pdf_failed)
    written += [
        (invoice, "pdf", doc, path, sha)
        for (invoice, doc, path, _), sha in zip(pdfs, shas, strict=True)
        if sha is not None
    ]
    _report_missing(session, report, failures)
    # Recorded in bulk: new documents in one insert, replaced ones in one executemany.
    inserts, updates, moved = [], [], []
    for invoice, fmt, doc, path, sha in written:
        row = {
            "invoice_id": invoice.id,
            "format": fmt,
            "path": str(path.resolve()),
            "sha256": sha,
            "source_hash": digests[invoice.id],
            "final": invoice.status != "draft",
            "created_at": now,
        }
        if doc is None:
            inserts.append(row)
        else:
            updates.append({"_id": doc.id, **row})
            if doc.path != row["path"]:
                moved.append(doc.path)  # a preview now written under a new name
        report.written += 1
    insert_rows(session, InvoiceDocument, inserts)
    if updates:
        session.execute(
            sa.update(InvoiceDocument.__table__).where(d.id == sa.bindparam("_id")), updates
        )
    unlink_after_commit(session, moved)
    report.details["documents"] = report.written
    return report


def _report_missing(
    session: Session, report: StepReport, failures: list[tuple[Any, str, Any, OSError]]
) -> None:
    """The documents that could not be written, in the step's report: each in
    `details["documents_missing"]` ({invoice, format, reason}), and a warning per invoice.

    Nothing is recorded for them. A draft's preview that was on record stays so while its
    last good file is still there (the file is replaced whole or not at all), and the
    next render, seeing it out of date, writes it again; a record whose file is gone too
    is dropped, so no document row ever points at a missing file.
    """
    if not failures:
        return
    by_invoice: dict[int, list[tuple[Any, str, OSError]]] = defaultdict(list)
    gone = []
    for invoice, fmt, doc, error in failures:
        by_invoice[invoice.id].append((invoice, fmt, error))
        if doc is not None and not doc.final and not Path(doc.path).exists():
            gone.append(doc.id)
    missing = report.details.setdefault("documents_missing", [])
    for entries in by_invoice.values():
        invoice = entries[0][0]
        label = invoice.number or invoice.id
        for _, fmt, error in entries:
            missing.append({"invoice": label, "format": fmt, "reason": outputs.os_reason(error)})
        formats = ", ".join(fmt for _, fmt, _ in entries)
        reason = outputs.os_reason(entries[0][2])
        them = "them" if len(entries) > 1 else "it"
        report.warnings.append(
            f"{invoice_label(invoice)}: {formats} not written ({reason}); "
            f"the next close writes {them}"
        )
    if gone:
        d = InvoiceDocument.__table__.c
        for part in chunks(gone):
            session.execute(sa.delete(InvoiceDocument.__table__).where(d.id.in_(part)))


def invoice_label(invoice: Any) -> str:
    """An invoice as messages name it: its number, or "draft ID"."""
    return f"invoice {invoice.number}" if invoice.number else f"draft {invoice.id}"
