"""Issued documents, byte for byte (issue 23, points 5 and 6): the same issued invoice
renders to the same bytes whenever and however it is rendered, its recorded SHA-256 is
the hash of what was written, `billing invoices verify` reports documents missing or
altered, and `--repair` or the next close writes them again, identical to the first."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import time
from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

from billing_core.cli.app import app
from billing_core.invoices.documents import templates_dir
from tests.helpers import close, import_yaml, one

# Two billed customers with a flat fee on the 1st: two issued invoices, four documents.
TWO_CUSTOMERS = """
issuer: {name: Acme Cloud Ltd, invoice_prefix: ACME, timezone: America/Chicago}
customers:
  - {id: acme, name: Acme, currency: USD}
  - {id: zenith, name: Zenith GmbH, currency: EUR, locale: de_DE}
prices:
  - {code: platform, product: Platform, currency: USD, model: flat, amount: "100.00"}
  - {code: platform-eur, product: Plattform, currency: EUR, model: flat, amount: "90.00"}
subscriptions:
  - {id: sub-acme, customer: acme, start: 2026-01-01, billing_day: 1,
     items: [{price: platform, timing: in_advance}]}
  - {id: sub-zenith, customer: zenith, start: 2026-01-01, billing_day: 1,
     items: [{price: platform-eur, timing: in_advance}]}
"""


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def output_lines(done) -> list[str]:
    return [line for line in done.output.splitlines() if line]


def recorded(store) -> dict[tuple[str, str], tuple[str, str]]:
    """(billed customer, format) -> (recorded path, recorded SHA-256) of final documents."""
    rows = store.rows(
        "SELECT v.billed_customer_id, d.format, d.path, d.sha256 FROM invoice_documents d "
        "JOIN invoices v ON v.id = d.invoice_id WHERE d.final"
    )
    return {(customer, fmt): (path, sha) for customer, fmt, path, sha in rows}


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def issued(store) -> tuple[dict, dict[tuple[str, str], tuple[str, str]]]:
    """Close and issue January; the invoice numbers by customer, and the records."""
    import_yaml(TWO_CUSTOMERS)
    close("2026-01-01", issue=True)
    numbers = {c: one(billed_customer=c)["number"] for c in ("acme", "zenith")}
    return numbers, recorded(store)


@pytest.fixture(params=["harfbuzz", "fonttools"])
def subsetter(request, monkeypatch) -> str:
    """WeasyPrint subsets fonts with HarfBuzz's subsetter where the system has it
    (libharfbuzz-subset0), else with fontTools, which stamps the subset font with the
    time it was made unless told not to."""
    if request.param == "fonttools":
        import weasyprint.pdf.fonts

        monkeypatch.setattr(weasyprint.pdf.fonts, "harfbuzz_subset", None)
    return request.param


def test_an_issued_invoice_renders_to_the_same_bytes_every_time(store, subsetter, tmp_path):
    numbers, records = issued(store)
    invoice = one(billed_customer="zenith")
    copies = {}
    for attempt in ("first", "second"):
        for fmt in ("html", "pdf"):
            target = tmp_path / f"{attempt}.{fmt}"
            done = run("invoices", "show", numbers["zenith"], "--output", str(target))
            assert done.exit_code == 0, done.output
            copies[attempt, fmt] = target.read_bytes()
        if attempt == "first":
            time.sleep(1.1)  # the clock moves on to another second
    for fmt in ("html", "pdf"):
        assert copies["first", fmt] == copies["second", fmt]
        # ... and they are the bytes the close wrote, whose hash it recorded.
        path, sha = records["zenith", fmt]
        assert Path(path).read_bytes() == copies["first", fmt]
        assert sha256(copies["first", fmt]) == sha
    # The PDF is dated by the invoice's own date (the day it was issued, in the issuer's
    # time zone), not by the clock that rendered it.
    from pypdf import PdfReader

    info = PdfReader(io.BytesIO(copies["first", "pdf"])).metadata
    dated = "D:" + date.fromisoformat(invoice["issue_date"]).strftime("%Y%m%d")
    assert info["/CreationDate"] == dated and info["/ModDate"] == dated


def test_verify_reports_missing_and_altered_documents(store):
    numbers, records = issued(store)
    done = run("invoices", "verify")
    assert done.exit_code == 0, done.output
    assert output_lines(done) == ["4 document(s) of 2 issued invoice(s) checked: all as recorded"]
    acme_html, acme_sha = records["acme", "html"]
    zenith_pdf, zenith_sha = records["zenith", "pdf"]
    tampered = Path(acme_html).read_bytes().replace(b"100.00", b"10.00")
    Path(acme_html).write_bytes(tampered)
    Path(zenith_pdf).unlink()

    done = run("invoices", "verify")
    assert done.exit_code == 1, done.output
    assert output_lines(done) == [
        f"{numbers['acme']} html {acme_html}: altered: sha256 {sha256(tampered)}, "
        f"recorded {acme_sha}",
        f"{numbers['zenith']} pdf {zenith_pdf}: missing",
        "4 document(s) of 2 issued invoice(s) checked: 1 missing, 1 altered",
    ]
    # One invoice, by number or id; nothing is written without --repair.
    done = run("invoices", "verify", numbers["zenith"])
    assert done.exit_code == 1, done.output
    assert output_lines(done) == [
        f"{numbers['zenith']} pdf {zenith_pdf}: missing",
        "2 document(s) of 1 issued invoice(s) checked: 1 missing, 0 altered",
    ]
    acme_id = str(one(billed_customer="acme")["id"])
    assert run("invoices", "verify", acme_id).exit_code == 1
    assert not Path(zenith_pdf).exists() and Path(acme_html).read_bytes() == tampered


def test_verify_repair_writes_them_again_as_issued(store):
    numbers, records = issued(store)
    originals = {key: Path(path).read_bytes() for key, (path, _) in records.items()}
    acme_html, acme_sha = records["acme", "html"]
    zenith_pdf, zenith_sha = records["zenith", "pdf"]
    tampered = originals["acme", "html"].replace(b"100.00", b"10.00")
    Path(acme_html).write_bytes(tampered)
    Path(zenith_pdf).unlink()

    done = run("invoices", "verify", "--repair")
    assert done.exit_code == 0, done.output
    kept = [p for p in Path(acme_html).parent.iterdir() if ".altered-" in p.name]
    assert len(kept) == 1 and re.fullmatch(
        re.escape(Path(acme_html).name) + r"\.altered-\d{8}T\d{6}Z", kept[0].name
    )
    assert output_lines(done) == [
        f"{numbers['acme']} html {acme_html}: altered: sha256 {sha256(tampered)}, "
        f"recorded {acme_sha}; replaced, the altered file kept as {kept[0]}",
        f"{numbers['zenith']} pdf {zenith_pdf}: missing; written again (sha256 {zenith_sha}, "
        "as recorded)",
        "4 document(s) of 2 issued invoice(s) checked: 1 missing, 1 altered; 2 written again",
    ]
    # Byte for byte the documents the close wrote; the altered one kept as evidence.
    assert {key: Path(path).read_bytes() for key, (path, _) in records.items()} == originals
    assert kept[0].read_bytes() == tampered
    assert run("invoices", "verify").exit_code == 0


def test_repair_refuses_a_document_that_would_not_come_back_identical(store, monkeypatch, tmp_path):
    numbers, records = issued(store)
    acme_pdf, acme_sha = records["acme", "pdf"]
    acme_html, _ = records["acme", "html"]
    Path(acme_pdf).unlink()
    tampered = Path(acme_html).read_bytes() + b"<!-- changed -->"
    Path(acme_html).write_bytes(tampered)
    # The templates changed since the invoice was issued: rendered again, it would differ.
    custom = tmp_path / "templates"
    shutil.copytree(templates_dir(), custom)
    page = custom / "invoice.html"
    page.write_text(page.read_text().replace("Billed to", "Invoice to"))
    monkeypatch.setenv("BILLING_TEMPLATES_DIR", str(custom))

    done = run("invoices", "verify", "--repair")
    assert done.exit_code == 1, done.output
    lines = output_lines(done)
    assert len(lines) == 3, done.output
    assert lines[0].startswith(f"{numbers['acme']} html {acme_html}: altered: sha256 ")
    assert lines[1].startswith(f"{numbers['acme']} pdf {acme_pdf}: missing; not written: ")
    for line in lines[:2]:
        assert re.search(
            r"rendered again it would be sha256 [0-9a-f]{64}, recorded [0-9a-f]{64} \(the "
            r"templates, fonts or WeasyPrint changed since it was written\); restore it from "
            r"a backup$",
            line,
        ), line
    assert lines[2] == (
        "4 document(s) of 2 issued invoice(s) checked: 1 missing, 1 altered; 0 written again"
    )
    assert not Path(acme_pdf).exists() and Path(acme_html).read_bytes() == tampered
    assert not [p for p in Path(acme_html).parent.iterdir() if ".altered-" in p.name]


def test_the_next_close_writes_a_deleted_document_again_identical(store):
    numbers, records = issued(store)
    saved = {fmt: Path(records["acme", fmt][0]).read_bytes() for fmt in ("html", "pdf")}
    for fmt in saved:
        Path(records["acme", fmt][0]).unlink()
    time.sleep(1.1)
    reports = close("2026-02-01")
    for fmt, content in saved.items():
        assert Path(records["acme", fmt][0]).read_bytes() == content
    render = next(r for r in reports if r.step == "render invoices")
    assert [w for w in render.warnings if numbers["acme"] in w] == [
        f"invoice {numbers['acme']}: its {fmt} document {records['acme', fmt][0]} was "
        "missing; written again, identical to the one issued"
        for fmt in ("html", "pdf")
    ]
    assert recorded(store) == records  # the records stay as they were
    assert run("invoices", "verify").exit_code == 0


def test_verify_and_the_next_close_in_an_object_store(store, s3_bucket, monkeypatch):
    monkeypatch.setenv("BILLING_OUTPUT_DIR", f"s3://{s3_bucket.name}/docs")
    numbers, records = issued(store)

    def key(url: str) -> str:
        return url.split("/", 3)[3]

    pdf_url, pdf_sha = records["acme", "pdf"]
    html_url, html_sha = records["zenith", "html"]
    saved = {url: s3_bucket.read(key(url)) for url in (pdf_url, html_url)}
    assert run("invoices", "verify").exit_code == 0

    # A deleted object: reported, then written again by --repair.
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key=key(pdf_url))
    done = run("invoices", "verify")
    assert done.exit_code == 1, done.output
    assert output_lines(done)[0] == f"{numbers['acme']} pdf {pdf_url}: missing"
    done = run("invoices", "verify", "--repair")
    assert done.exit_code == 0, done.output
    assert s3_bucket.read(key(pdf_url)) == saved[pdf_url]
    assert s3_bucket.content_type(key(pdf_url)) == "application/pdf"

    # An altered object: reported, replaced, the altered one kept beside it.
    tampered = saved[html_url] + b"<!-- changed -->"
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=key(html_url), Body=tampered)
    done = run("invoices", "verify", "--repair")
    assert done.exit_code == 0, done.output
    assert output_lines(done)[0].startswith(
        f"{numbers['zenith']} html {html_url}: altered: sha256 {sha256(tampered)}, "
        f"recorded {html_sha}; replaced, the altered file kept as {html_url}.altered-"
    )
    assert s3_bucket.read(key(html_url)) == saved[html_url]
    kept = [k for k in s3_bucket.objects() if k.startswith(key(html_url) + ".altered-")]
    assert len(kept) == 1 and s3_bucket.read(kept[0]) == tampered

    # The next close writes a deleted one again.
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key=key(pdf_url))
    close("2026-02-01")
    assert s3_bucket.read(key(pdf_url)) == saved[pdf_url]
    assert run("invoices", "verify").exit_code == 0
