"""Invoice documents on each store: what the first page and the breakdown page show, in
which order, amounts for their currency, DRAFT marking, and final documents written once."""

from __future__ import annotations

import re
import shutil
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from billing_core.cli.app import app
from billing_core.invoices import markup, weasy
from billing_core.invoices.contexts import contexts
from billing_core.invoices.documents import pdf_document, render_html, templates_dir
from billing_core.invoices.formatting import day, money, period
from billing_core.invoices.lifecycle import transition
from billing_core.steps import close as steps
from billing_core.store.engine import unit_of_work
from billing_core.store.models import Invoice
from tests.helpers import close, import_yaml, ingest_csv, one

D = Decimal


def test_amounts_for_their_currency():
    assert money(D("31700.00"), "USD", "en_US") == "$31,700.00"
    assert money(D("-157.50"), "USD", "en_US") == "-$157.50"
    assert money(D("2856.00"), "EUR", "en_US") == "€2,856.00"
    assert money(D("1746785"), "JPY", "en_US") == "¥1,746,785"  # no minor units
    assert money(D("1.234"), "KWD", "en_US") == "KWD\u00a01.234"  # three, and the code set apart
    # Unit prices keep their precision but show at least the minor units.
    assert money(D("0.00157"), "USD", "en_US", exact=True) == "$0.00157"
    assert money(D("35"), "USD", "en_US", exact=True) == "$35.00"
    assert money(D("-0.00"), "USD", "en_US") == money(D("0"), "USD", "en_US") == "$0.00"


def test_dates_nobody_can_misread():
    assert day(date(2026, 2, 1), "en_US") == "1 Feb 2026"
    # service periods are half-open inside and shown with their inclusive last day
    assert period(date(2026, 1, 1), date(2026, 2, 1), "en_US") == "1 Jan – 31 Jan 2026"
    assert period(date(2025, 12, 15), date(2026, 1, 15), "en_US") == "15 Dec 2025 – 14 Jan 2026"
    assert period(date(2026, 3, 14), date(2026, 3, 15), "en_US") == "14 Mar 2026"


FAMILY = """
issuer: {name: Acme Cloud Ltd, invoice_prefix: ACME, address: [1 Main Street, Springfield]}
tax_rates: [{jurisdiction: US-NY, rate: "0.10"}]
customers:
  - {id: gi, name: Global Industries, currency: USD, jurisdiction: US-NY}
  - {id: gi-na, name: GI North America, currency: USD, parent: gi}
  - {id: gi-eu, name: GI Europe, currency: USD, parent: gi}
  - {id: gi-apac, name: GI Asia Pacific, currency: USD, parent: gi}
metrics:
  - {code: calls, name: API calls, aggregation: sum, field: quantity}
  - {code: seats, name: Active seats, aggregation: max, field: quantity}
prices:
  - {code: license, product: Platform License, bundle: Enterprise, currency: USD, model: flat,
     amount: "5000.00"}
  - {code: calls, product: API usage, currency: USD, model: graduated, metric: calls,
     tiers: [{up_to: 1000, unit_price: "1.00"}, {up_to: null, unit_price: "0.90"}]}
  - {code: seats, product: Seats, currency: USD, model: per_unit, metric: seats,
     unit_price: "20.00"}
subscriptions:
  - {id: s-gi, customer: gi, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: license, timing: in_arrears}, {price: calls, timing: in_arrears,
     pool: breakdown}]}
  - {id: s-eu, customer: gi-eu, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: seats, timing: in_arrears}]}
credits:
  - {id: eu-welcome, customer: gi-eu, amount: "25.00", currency: USD, effective: 2026-01-01}
"""

USAGE = """
event_id,customer,metric,timestamp,quantity
na-1,gi-na,calls,2026-01-03T10:00:00Z,900
eu-1,gi-eu,calls,2026-01-09T12:00:00Z,300
eu-2,gi-eu,calls,2026-01-20T12:00:00Z,200
ap-1,gi-apac,calls,2026-01-11T12:00:00Z,100
eu-s,gi-eu,seats,2026-01-15T00:00:00Z,4
"""


def headings(html: str) -> list[str]:
    """The customer names of the section headings, in order."""
    return [h.strip() for h in re.findall(r'<tr class="section-head"><td[^>]*>([^<]*)<span', html)]


def section(html: str, name: str) -> str:
    """The HTML of the section headed by a customer's name, up to the next heading."""
    parts = [p.split(">", 1)[1] for p in html.split('<tr class="section-head">')[1:]]
    return next(part for part in parts if part.startswith(name + " "))


def pages(html: Path) -> int:
    """How many pages the document's PDF has (laid out as its PDF is)."""
    return len(pdf_document(html.read_text()).pages)


def test_rollup_document_sections_totals_and_breakdown(store):
    import_yaml(FAMILY)
    ingest_csv(USAGE)
    close("2026-02-01", issue=True)
    invoice = one(billed_customer="gi")
    html_path = Path(invoice["number"].join(["documents/2026-02-01/gi-", ".html"]))
    html = html_path.read_text()
    first, breakdown = html.split("Usage breakdown</h1>")
    # The billed customer's section first, then the others by name: Asia Pacific, Europe,
    # North America (each child's share of the pooled usage sits in its own section).
    assert headings(first) == [
        "Global Industries",
        "GI Asia Pacific",
        "GI Europe",
        "GI North America",
    ]
    # Block of 1500 calls: 1000 x 1.00 + 500 x 0.90 = 1450.00, split by usage:
    # na 900 -> 870.00, eu 500 -> 483.33..., apac 100 -> 96.66... ; largest remainders
    # give the last cent: apac 96.67, eu 483.33 (sum 1450.00).
    for text in ("$5,000.00", "$870.00", "$483.33", "$96.67", "$80.00"):
        assert text in first
    # GI Europe's credit sits in its own section, after its lines, before its total:
    # seats 4 x 20.00 = 80.00 and calls 483.33 -> 563.33, tax 10% = 56.33, credit -25.00
    europe = section(first, "GI Europe")
    assert "Credit eu-welcome" in europe and "-$25.00" in europe
    assert "Total for GI Europe" in europe and "$594.66" in europe  # 563.33 + 56.33 - 25.00
    # Totals: subtotal 5000.00 + 1450.00 + 80.00 = 6530.00; tax 653.00 (10% per line,
    # 500.00 + 9.67 + 48.33 + 8.00 + 87.00); credit -25.00; total 7158.00.
    assert invoice["subtotal"] == "6530.00" and invoice["tax_total"] == "653.00"
    assert invoice["total"] == "7158.00"
    assert "Total due (USD)" in first and "$7,158.00" in first
    assert "1 Feb 2026" in first and "1 Jan – 31 Jan 2026" in first
    assert "Acme Cloud Ltd" in first and "1 Main Street" in first
    # The breakdown page: usage per serviced customer (billed first, then by name), then
    # per metric by name, with quantities and service periods.
    assert headings(breakdown) == ["GI Asia Pacific", "GI Europe", "GI North America"]
    europe = section(breakdown, "GI Europe")
    assert europe.index("Active seats") < europe.index("API calls")
    assert "500" in europe and ">4<" in europe and "1 Jan – 31 Jan 2026" in europe
    body = html.split("<body")[1]
    assert "DRAFT" not in body and 'class="watermark"' not in body
    pdf = html_path.with_suffix(".pdf")
    # The summary by customer opens the roll-up, so its totals go over to a second page;
    # the breakdown has its own.
    assert pdf.read_bytes().startswith(b"%PDF") and pages(html_path) == 3
    # Every word of it in the product's own font (templates/fonts), none left to the
    # system's fonts (which differ from machine to machine and cost more to embed).
    document = pdf_document(html)
    document.write_pdf()
    assert {font.family for font in document.fonts.values()} == {"Invoice Sans"}


def _issued_and_drafts() -> tuple[list, dict]:
    """The family's invoices after a close that issues and one that leaves drafts, and
    their contexts."""
    import_yaml(FAMILY)
    ingest_csv(USAGE)
    close("2026-02-01", issue=True)
    close("2026-03-01")
    with unit_of_work() as session:
        invoices = list(session.execute(sa.select(Invoice.__table__)))
        return invoices, contexts(session, invoices)


def test_the_pdf_is_the_same_whichever_parser_reads_its_html(store, monkeypatch):
    """A PDF's HTML is read by the C XML parser when its markup allows (invoices.markup),
    as the invoice template's does, drafts and issued invoices alike: the PDF is the bytes
    WeasyPrint's own HTML5 parser gives, and those the close wrote and recorded."""
    invoices, data = _issued_and_drafts()
    assert {i.status for i in invoices} == {"issued", "draft"}
    for invoice in invoices:
        html = render_html(data[invoice.id], inline_css=False)
        assert markup.tree(html) is not None
        fast = pdf_document(html).write_pdf()
        with monkeypatch.context() as patched:
            patched.setattr(markup, "tree", lambda html: None)
            assert pdf_document(html).write_pdf() == fast
        if invoice.status == "issued":
            written = Path(f"documents/{invoice.billing_date}/gi-{invoice.number}.pdf")
            assert written.read_bytes() == fast


def test_the_pdf_is_the_same_with_weasyprints_own_layout_functions(store, monkeypatch):
    """WeasyPrint functions replaced by faster ones (invoices.weasy.REPLACED) lay out the
    same pages: a roll-up with its breakdown, an issued one-line invoice and a draft give
    the bytes WeasyPrint's own functions give."""
    invoices, data = _issued_and_drafts()
    for invoice in invoices:
        html = render_html(data[invoice.id], inline_css=False)
        fast = pdf_document(html).write_pdf()
        assert weasy.REPLACED
        with monkeypatch.context() as patched:
            for module, name, own in weasy.REPLACED:
                patched.setattr(module, name, own)
            assert pdf_document(html).write_pdf() == fast


def test_contexts_read_the_same_in_one_statement_or_in_chunks(store, monkeypatch):
    """Lines, charges and pool totals of many invoices are read in one statement on
    PostgreSQL (an array of ids) and in IN lists elsewhere or for a few: the same
    contexts either way."""
    import billing_core.store.rows

    import_yaml(FAMILY)
    ingest_csv(USAGE)
    close("2026-02-01", issue=True)
    close("2026-03-01")

    def read() -> dict:
        with unit_of_work() as session:
            invoices = list(session.execute(sa.select(Invoice.__table__)))
            return contexts(session, invoices)

    whole = read()
    assert len(whole) == 2 and any(d["breakdown"] for d in whole.values())
    monkeypatch.setattr(billing_core.store.rows, "CHUNK", 1)  # more ids than a chunk
    assert read() == whole


def test_a_draft_is_marked_and_gets_no_pdf(store):
    import_yaml(FAMILY)
    ingest_csv(USAGE)
    close("2026-02-01")
    draft = one(billed_customer="gi")
    html = Path(f"documents/2026-02-01/gi-draft-{draft['id']}.html").read_text()
    body = html.split("<body")[1]
    assert '<div class="watermark" aria-hidden="true">DRAFT</div>' in body
    assert '<span class="draft-tag">DRAFT</span>' in body and "Not yet issued" in body
    assert not list(Path("documents").rglob("*.pdf"))


def test_issued_documents_are_written_once(store, monkeypatch, tmp_path):
    import_yaml(FAMILY)
    ingest_csv(USAGE)
    close("2026-02-01", issue=True)
    close("2026-03-01")  # a draft beside the issued invoice
    final = sorted(p for p in Path("documents").rglob("*") if p.is_file() and "draft" not in p.name)
    assert [p.suffix for p in final] == [".html", ".pdf"]
    before = {p: p.read_bytes() for p in final}
    draft_path = next(Path("documents").rglob("*draft*.html"))
    # The catalog renames the customer and the templates change: the issued documents stay
    # as they were sent, the draft's preview follows.
    import_yaml(
        "customers:\n  - {id: gi, name: Global Industries Renamed, currency: USD, "
        "jurisdiction: US-NY}\n",
        name="rename.yaml",
    )
    custom = tmp_path / "templates"
    shutil.copytree(templates_dir(), custom)
    page = custom / "invoice.html"
    page.write_text(page.read_text().replace("Billed to", "Invoice to"))
    monkeypatch.setenv("BILLING_TEMPLATES_DIR", str(custom))
    steps.render(date(2026, 3, 1))
    assert {p: p.read_bytes() for p in final} == before
    assert "Invoice to" in draft_path.read_text() and "Renamed" in draft_path.read_text()
    # A lost final document is never rebuilt from today's catalog, nor written again from
    # its frozen invoice when today's templates would not give the bytes it had: reported.
    final[0].unlink()
    report = steps.render(date(2026, 3, 1))
    assert not final[0].exists()
    assert any("is missing; not written: rendered again" in w for w in report.warnings)


def test_a_drafts_preview_is_rendered_again_when_the_templates_change_and_only_then(
    store, monkeypatch, tmp_path
):
    custom = tmp_path / "templates"
    shutil.copytree(templates_dir(), custom)
    monkeypatch.setenv("BILLING_TEMPLATES_DIR", str(custom))
    import_yaml(FAMILY)
    ingest_csv(USAGE)
    close("2026-02-01")
    rendered: list[int] = []

    def counted(data, *args, **kwargs):
        rendered.append(data["invoice"]["id"])
        return render_html(data, *args, **kwargs)

    monkeypatch.setattr("billing_core.steps.render.render_html", counted)
    drafts = sorted(r[0] for r in store.rows("SELECT id FROM invoices WHERE status = 'draft'"))
    assert drafts

    def previews() -> dict:
        return {
            r.invoice_id: (r.sha256, r.source_hash)
            for r in store.rows("SELECT invoice_id, sha256, source_hash FROM invoice_documents")
        }

    # Nothing changed: nothing is rendered, however often the step runs.
    before = previews()
    for _ in range(2):
        report = steps.render(date(2026, 2, 1))
        assert rendered == [] and report.written == 0
    assert previews() == before
    # A file the templates folder holds but no document reads as a template (an editor's
    # swap file) changes nothing either.
    (custom / ".invoice.html.swp").write_text("swap")
    steps.render(date(2026, 2, 1))
    assert rendered == []

    # A template changed: every draft's preview is rendered again, with it.
    page = custom / "invoice.html"
    page.write_text(page.read_text().replace("Billed to", "Invoiced to"))
    report = steps.render(date(2026, 2, 1))
    assert sorted(rendered) == drafts and report.written == len(drafts)
    after = previews()
    assert all(after[i][0] != before[i][0] and after[i][1] != before[i][1] for i in drafts)
    for draft in drafts:
        (preview,) = Path("documents").rglob(f"*-draft-{draft}.html")
        assert "Invoiced to" in preview.read_text()
    # And then nothing again, until the next change (the stylesheet counts too).
    rendered.clear()
    steps.render(date(2026, 2, 1))
    assert rendered == []
    (custom / "invoice.css").write_text((custom / "invoice.css").read_text() + "\n/* v2 */\n")
    steps.render(date(2026, 2, 1))
    assert sorted(rendered) == drafts


def test_a_final_document_reads_the_same_whatever_happens_to_the_invoice_later(store):
    import_yaml(FAMILY)
    ingest_csv(USAGE)
    close("2026-02-01", issue=True)
    invoice_id = one(billed_customer="gi")["id"]

    def document() -> dict:
        with unit_of_work() as session:
            row = session.execute(
                sa.select(Invoice.__table__).where(Invoice.__table__.c.id == invoice_id)
            ).one()
            return contexts(session, [row])[invoice_id]

    issued = document()
    with unit_of_work() as session:
        transition(session, invoice_id, "void")
        session.commit()
    assert document() == issued


def test_a_jpy_invoice_has_no_minor_units(store):
    import_yaml(
        """
    tax_rates: [{jurisdiction: JP, rate: "0.10"}]
    customers:
      - {id: tanaka, name: Tanaka KK, currency: JPY, jurisdiction: JP}
    prices:
      - {code: fee, product: Platform, currency: JPY, model: flat, amount: "98765"}
    subscriptions:
      - {id: s, customer: tanaka, start: 2026-01-01, cadence: monthly, billing_day: 1,
         items: [{price: fee, timing: in_arrears}]}
    """
    )
    close("2026-02-01", issue=True)
    invoice = one()
    html = Path(f"documents/2026-02-01/tanaka-{invoice['number']}.html").read_text()
    # 98,765 x 10% = 9,876.5 -> 9,877 (half up, no minor units); total 108,642
    assert (invoice["tax_total"], invoice["total"]) == ("9877", "108642")
    assert "¥98,765" in html and "¥9,877" in html and "¥108,642" in html
    assert "¥98,765.00" not in html
    assert "Usage breakdown" not in html  # no usage, no breakdown page
    assert pages(Path(f"documents/2026-02-01/tanaka-{invoice['number']}.html")) == 1


def test_invoices_show_groups_like_the_document(store):
    import_yaml(FAMILY)
    ingest_csv(USAGE)
    close("2026-02-01")
    invoice = one(billed_customer="gi")
    done = CliRunner().invoke(app, ["invoices", "show", str(invoice["id"])])
    assert done.exit_code == 0, done.output
    text = done.output
    # The roll-up's summary by customer opens it, then the sections in the same order.
    summary = text.index("Summary by customer")
    sections = text.index("Global Industries (gi) · billed customer")
    order = [
        summary,
        text.index("Global Industries (gi)", summary),
        text.index("GI Asia Pacific (gi-apac)", summary),
        text.index("GI Europe (gi-eu)", summary),
        text.index("GI North America (gi-na)", summary),
        sections,
        text.index("GI Asia Pacific (gi-apac)", sections),
        text.index("GI Europe (gi-eu)", sections),
        text.index("GI North America (gi-na)", sections),
        text.index("Total due (USD)"),
        text.index("Usage breakdown"),
    ]
    assert order == sorted(order)
    assert "DRAFT" in text and "$7,158.00" in text and "Credit eu-welcome" in text
    assert CliRunner().invoke(app, ["invoices", "show", "999"]).exit_code == 1


@pytest.mark.parametrize("suffix", [".html", ".pdf"])
def test_invoices_show_can_write_a_review_copy(store, tmp_path, suffix):
    import_yaml(FAMILY)
    ingest_csv(USAGE)
    close("2026-02-01")
    target = tmp_path / f"review{suffix}"
    done = CliRunner().invoke(
        app, ["invoices", "show", str(one(billed_customer="gi")["id"]), "--output", str(target)]
    )
    assert done.exit_code == 0, done.output
    content = target.read_bytes()
    assert content.startswith(b"%PDF" if suffix == ".pdf" else b"<!DOCTYPE html>")
    # a copy for review: the store records no document for it
    assert store.scalar("SELECT count(*) FROM invoice_documents WHERE path LIKE '%review%'") == 0


_RENDER_ONE = """
import hashlib, sys, weasyprint
if sys.argv[1] != "installed":
    weasyprint.__version__ = sys.argv[1]
from billing_core.invoices import weasy
from billing_core.invoices.documents import pdf_document
html = '<html><body><table class="lines"><tr><td>Fee</td><td class="num">$10.00</td></tr>'
html += '</table><p>1,234.50 · Total due</p></body></html>'
pdf = pdf_document(html).write_pdf()
print(len(weasy.REPLACED), hashlib.sha256(pdf).hexdigest())
"""


def test_an_unchecked_weasyprint_release_runs_its_own_functions(tmp_path):
    """The replaced WeasyPrint functions copy one release's internals: with any other
    release installed none is put in, and the PDF is the one WeasyPrint makes."""
    import subprocess
    import sys

    import weasyprint

    from billing_core.invoices.weasy import CHECKED_RELEASES

    def render(release: str) -> tuple[int, str]:
        done = subprocess.run(
            [sys.executable, "-c", _RENDER_ONE, release],
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
        )
        replaced, digest = done.stdout.split()
        return int(replaced), digest

    unchecked = render("999.0")
    assert unchecked[0] == 0
    if weasyprint.__version__ in CHECKED_RELEASES:
        checked = render("installed")
        assert checked[0] > 0
        assert checked[1] == unchecked[1]
