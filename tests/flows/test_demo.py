"""`billing demo` from the installed command: a summary and real documents, each issued
invoice one a finance team can send and a customer can check (SPEC §7.1).

The demo runs once for the module; the expected identities, terms, tax names and notes
are read from the sample catalog itself, the invoices and their serviced customers from
the demo's store, and the PDFs are read as text (`pdftotext -layout`, else pypdf).
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

SAMPLE_CATALOG = (
    Path(__file__).resolve().parents[2] / "src" / "billing_core" / "sample" / "catalog.yaml"
)
ISSUED = 20  # invoices the demo issues: three closes of the sample catalog
DRAFTS = 5  # and the drafts of a fourth


@dataclass(frozen=True)
class Demo:
    folder: Path
    stdout: str


@pytest.fixture(scope="module")
def demo(tmp_path_factory, prefect_server) -> Demo:
    """`billing demo` once, through the installed command, against the test server."""
    cwd = tmp_path_factory.mktemp("demo-run")
    billing = Path(sys.executable).parent / "billing"
    # No store or output settings from the caller; the templates under test, if given.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BILLING_") or k == "BILLING_TEMPLATES_DIR"
    }
    env["PREFECT_API_URL"] = prefect_server
    done = subprocess.run(
        [str(billing), "demo", "--folder", str(cwd / "demo")],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return Demo(cwd / "demo", done.stdout)


@pytest.mark.slow
def test_demo_writes_issued_documents_and_prints_the_summary(demo):
    assert "Demo invoices" in demo.stdout
    documents = demo.folder / "documents"
    html = sorted(documents.rglob("*.html"))
    pdf = sorted(documents.rglob("*.pdf"))
    issued_html = [p for p in html if "draft" not in p.name]
    assert len(issued_html) == ISSUED and len(pdf) == ISSUED
    assert len(html) - len(issued_html) == DRAFTS
    assert all(p.read_bytes().startswith(b"%PDF") for p in pdf)
    assert (
        "Global Industries"
        in (documents / "2026-02-01")
        .joinpath(next(p.name for p in (documents / "2026-02-01").glob("global-industries-*.html")))
        .read_text()
    )
    assert any("DRAFT" in p.read_text() for p in html if "draft" in p.name)


# --- the issued PDFs as text ---------------------------------------------------------


def pdf_text(path: Path) -> str:
    """A PDF's text laid out as on the page: pdftotext when installed, else pypdf."""
    if shutil.which("pdftotext"):
        return subprocess.run(
            ["pdftotext", "-layout", str(path), "-"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    from pypdf import PdfReader

    return "\f".join(page.extract_text(extraction_mode="layout") for page in PdfReader(path).pages)


def text_lines(text: str) -> list[str]:
    """Non-empty lines, compatibility-normalised, every run of spaces one space."""
    text = unicodedata.normalize("NFKC", text)
    lines = (" ".join(line.split()) for line in text.splitlines())
    return [line for line in lines if line]


def first_page_lines(lines: list[str]) -> list[str]:
    """The invoice's lines before its usage breakdown page."""
    return lines[: lines.index("Usage breakdown")] if "Usage breakdown" in lines else lines


def index_of(lines: list[str], wanted: str, start: int = 0) -> int:
    """The first line at or after `start` holding `wanted`; -1 if none."""
    return next((i for i in range(start, len(lines)) if wanted in lines[i]), -1)


def assert_in_order(lines: list[str], wanted: list[str], after: int, what: str) -> int:
    """Each of `wanted` on a line of its own order after line `after`; the last index."""
    at = after
    for item in wanted:
        found = index_of(lines, item, at + 1)
        assert found > at, f"{what}: {item!r} not found after {lines[at]!r}"
        at = found
    return at


def assert_date(lines: list[str], label: str, expected: date, what: str) -> None:
    """`label` followed on its line by a date with the expected day and year (the month
    is written in the document's locale)."""
    found = [m for line in lines if (m := re.search(rf"{label} (.*?\b\d{{4}})\b", line))]
    assert found, f"{what}: no {label!r} with a date"
    shown = found[0].group(1)
    assert re.search(rf"(?<!\d){expected.day}(?!\d)", shown) and str(expected.year) in shown, (
        f"{what}: {label} {shown!r}, expected {expected}"
    )


@dataclass(frozen=True)
class Issued:
    id: int
    number: str
    billed: str
    issued_at: datetime
    pdf: Path
    serviced: tuple[str, ...]
    jurisdictions: tuple[str, ...]
    grants: tuple[str, ...]


def issued_invoices(folder: Path) -> list[Issued]:
    """The demo store's issued invoices with their PDF and what their lines name."""
    db = sqlite3.connect(folder / "billing.db")
    try:
        rows = db.execute(
            "SELECT i.id, i.number, i.billed_customer_id, i.issued_at, d.path"
            " FROM invoices i JOIN invoice_documents d ON d.invoice_id = i.id"
            " WHERE i.status = 'issued' AND d.format = 'pdf' ORDER BY i.number"
        ).fetchall()

        def distinct(column: str, invoice_id: int, where: str = "1 = 1") -> tuple[str, ...]:
            found = db.execute(
                f"SELECT DISTINCT {column} FROM invoice_lines"
                f" WHERE invoice_id = ? AND {column} IS NOT NULL AND {where}",
                (invoice_id,),
            )
            return tuple(sorted(r[0] for r in found))

        return [
            Issued(
                id=invoice_id,
                number=number,
                billed=billed,
                issued_at=datetime.fromisoformat(issued_at).replace(tzinfo=UTC),
                pdf=Path(path),
                serviced=distinct("serviced_customer_id", invoice_id),
                jurisdictions=distinct("jurisdiction", invoice_id, "kind = 'tax'"),
                grants=distinct("grant_id", invoice_id, "kind = 'credit'"),
            )
            for invoice_id, number, billed, issued_at, path in rows
        ]
    finally:
        db.close()


def assert_summary(lines: list[str], invoice: Issued, customers: dict[str, dict]) -> None:
    """A roll-up of several serviced customers opens with a summary: its header, then
    one row per serviced customer, in the order of the sections below it."""
    what = f"{invoice.number} ({invoice.billed})"
    header = next(
        (i for i, line in enumerate(lines) if re.match(r"CUSTOMER SUBTOTAL\b.* TOTAL$", line)),
        -1,
    )
    table = next(
        (i for i, line in enumerate(lines) if re.match(r"ITEM SERVICE PERIOD\b", line)), -1
    )
    assert 0 <= header < table, f"{what}: no summary header before the lines"
    rows, heads = {}, {}
    for cid in invoice.serviced:
        label = f"{customers[cid]['name']} {cid}"
        rows[cid] = index_of(lines[:table], label, header + 1)
        assert rows[cid] > header, f"{what}: no summary row for {cid}"
        assert re.search(r"\d", lines[rows[cid]].removeprefix(label)), f"{what}: {cid} amounts"
        heads[cid] = index_of(lines, label, table + 1)
        assert heads[cid] > table, f"{what}: no section for {cid}"
    assert sorted(rows, key=rows.get) == sorted(heads, key=heads.get), (
        f"{what}: summary rows not in section order"
    )


@pytest.mark.slow
def test_each_issued_pdf_has_what_a_finance_team_needs(demo):
    catalog = yaml.safe_load(SAMPLE_CATALOG.read_text(encoding="utf-8"))
    issuer = catalog["issuer"]
    customers = {c["id"]: c for c in catalog["customers"]}
    rates = {r["jurisdiction"]: r for r in catalog["tax_rates"]}
    grants = {g["id"]: g for g in catalog["credits"]}
    billed_ids = {
        cid for cid, c in customers.items() if not c.get("parent") or c.get("bill_to") == "self"
    }
    issued = issued_invoices(demo.folder)
    assert len(issued) == ISSUED
    # Every billed customer is invoiced, and the catalog gives each what §7.1 prints.
    assert {i.billed for i in issued} == billed_ids
    for cid in billed_ids:
        assert customers[cid].get("address") and customers[cid].get("tax_id"), cid
        assert customers[cid].get("email"), cid
    assert issuer.get("tax_id") and issuer.get("payment_instructions")

    summarised, reverse_charged, german = set(), 0, 0
    for invoice in issued:
        customer = customers[invoice.billed]
        what = f"{invoice.number} ({invoice.billed})"
        lines = first_page_lines(text_lines(pdf_text(invoice.pdf)))
        assert invoice.number in " ".join(lines), what

        # Dates and terms: issued in the issuer's time zone, due after the customer's terms.
        issue_date = invoice.issued_at.astimezone(ZoneInfo(issuer["timezone"])).date()
        terms = customer.get("payment_terms_days", issuer.get("payment_terms_days", 30))
        assert_date(lines, "Invoice date", issue_date, what)
        assert_date(lines, "Due date", issue_date + timedelta(days=terms), what)
        assert any(re.search(rf"\bNet {terms}$", line) for line in lines), f"{what}: Net {terms}"

        # Seller: name, address, tax id and email before the buyer; payment instructions.
        billed_to = next((i for i, line in enumerate(lines) if line.upper() == "BILLED TO"), -1)
        assert billed_to > 0, f"{what}: no 'Billed to'"
        seller = [issuer["name"], *issuer["address"], issuer["tax_id"], issuer["email"]]
        assert_in_order(lines[:billed_to], seller, -1, what)
        assert_in_order(lines, issuer["payment_instructions"], billed_to, what)

        # Buyer: name, address lines, tax id and email, in that order under "Billed to".
        buyer = [customer["name"], *customer["address"], customer["tax_id"], customer["email"]]
        assert_in_order(lines, buyer, billed_to, what)

        # Tax by its name and jurisdiction; credits by the grant's name.
        for jurisdiction in invoice.jurisdictions:
            name = rates[jurisdiction].get("name") or "Tax"
            assert any(
                line.startswith(f"{name} ") and f"({jurisdiction})" in line for line in lines
            ), f"{what}: no {name} ({jurisdiction}) line"
        for grant in invoice.grants:
            assert index_of(lines, grants[grant]["name"]) >= 0, f"{what}: credit {grant}"

        if len(invoice.serviced) > 1:
            assert_summary(lines, invoice, customers)
            summarised.add(invoice.billed)

        jurisdiction = customer.get("jurisdiction")
        if jurisdiction and rates.get(jurisdiction, {}).get("note"):
            rate = rates[jurisdiction]
            assert any(
                line.startswith(f"{rate['name']} 0") and f"({jurisdiction})" in line
                for line in lines
            ), f"{what}: no rate-0 {rate['name']} row"
            assert rate["note"] in lines, f"{what}: no note {rate['note']!r}"
            reverse_charged += 1
        if customer.get("locale") == "de_DE":
            # German amounts: dot grouping, comma decimals, the euro sign after.
            page = "\n".join(lines)
            assert re.search(r"\b\d{1,3}(\.\d{3})*,\d{2} €", page), f"{what}: no 1.234,56 €"
            assert not re.search(r"€\d|\d\.\d{2}\b", page), f"{what}: English amounts"
            german += 1

    assert summarised == {"global-industries", "northwind"}
    assert reverse_charged and german
