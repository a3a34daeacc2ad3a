"""An issued invoice keeps the identity it was issued with (SPEC §7.1): the issuer, the
billed customer and the serviced customers shown on it are a snapshot taken at issue,
frozen with the invoice, and every document rendered for it later (a final document
written after a failed render, a review copy, the terminal) shows that snapshot, never
the catalog as it is now. Drafts follow the catalog."""

from __future__ import annotations

import contextlib
import json
import re
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from billing_core.cli.app import app
from billing_core.store.engine import get_engine
from tests.helpers import close, import_yaml, ingest_csv, one
from tests.integration.test_documents import FAMILY, USAGE

# What the catalog says at issue, and what a later import renames it to.
RENAMES = {
    "Acme Cloud Ltd": "Zenith Renamed plc",
    "1 Main Street": "99 Other Avenue",
    "Global Industries": "Global Renamed Inc",
    "GI North America": "North Renamed",
    "GI Europe": "Europe Renamed",
    "GI Asia Pacific": "Pacific Renamed",
    "API calls": "Requests Renamed",
}


def renamed_catalog() -> str:
    text = FAMILY
    for before, after in RENAMES.items():
        text = text.replace(before, after)
    return text


def pdf_text(path: Path) -> bytes:
    """The PDF's bytes with every compressed stream inflated (its metadata lives in one)."""
    content = path.read_bytes()
    parts = [content]
    for match in re.finditer(rb"stream\r?\n", content):
        with contextlib.suppress(zlib.error):
            parts.append(zlib.decompressobj().decompress(content[match.end() :]))
    return b"\n".join(parts)


def pdf_says(path: Path, text: str) -> bool:
    """Whether the PDF's metadata (title, author) holds `text`, as a literal string or
    in UTF-16 hex (WeasyPrint writes the title as hex when it is not ASCII)."""
    data = pdf_text(path)
    return text.encode() in data or text.encode("utf-16-be").hex().encode() in data


def assert_issued_names(html: str) -> None:
    for before, after in RENAMES.items():
        assert before in html, before
        assert after not in html, after


def assert_renamed(html: str) -> None:
    """The issuer and the billed customer as the catalog has them now (a draft without
    usage has no section or breakdown for the others)."""
    for before in ("Acme Cloud Ltd", "1 Main Street", "Global Industries"):
        assert RENAMES[before] in html, before
    for before in RENAMES:
        assert before not in html, before


def unwritable(folder: Path, monkeypatch) -> str:
    """Make the output folder unwritable; returns how.

    The folder is made read-only (chmod 0555). Tests may run as root, for whom the mode
    bits do not stop a write: then the documents are pointed at a path under a regular
    file, where no folder can be made whoever asks."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    probe = folder / ".probe"
    try:
        probe.write_text("x")
    except OSError:
        return "chmod"
    probe.unlink()
    blocker = folder.parent / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("BILLING_OUTPUT_DIR", str(blocker / "documents"))
    return "under a regular file"


def writable(folder: Path, monkeypatch) -> None:
    folder.chmod(0o755)
    monkeypatch.setenv("BILLING_OUTPUT_DIR", str(folder))


def test_documents_written_after_a_rename_show_the_identity_at_issue(store, monkeypatch):
    """The reported attack: issue while the output folder is read-only (the documents
    are missing), rename the issuer and the customers by re-importing, make the folder
    writable, close again: the issued invoice's documents, written now, show the names it
    was issued with; the next draft shows the new ones."""
    import_yaml(FAMILY)
    ingest_csv(USAGE)
    folder = Path("documents").resolve()
    unwritable(folder, monkeypatch)
    # The close issues, then fails to write the documents; what it says about that is not
    # what this test checks.
    with contextlib.suppress(Exception):
        close("2026-02-01", issue=True)
    issued = one(status="issued", billed_customer="gi")
    assert (
        store.scalar("SELECT count(*) FROM invoice_documents WHERE invoice_id = :i", i=issued["id"])
        == 0
    )
    assert not [p for p in folder.rglob("*") if p.is_file()]
    import_yaml(renamed_catalog(), name="renamed.yaml")
    writable(folder, monkeypatch)
    close("2026-03-01")

    rows = store.rows(
        "SELECT format, path, source_hash, final FROM invoice_documents WHERE invoice_id = :i",
        i=issued["id"],
    )
    documents = {r.format: r for r in rows}
    assert sorted(documents) == ["html", "pdf"] and all(r.final for r in rows)
    html = Path(documents["html"].path).read_text()
    assert_issued_names(html)
    assert documents["pdf"].source_hash == documents["html"].source_hash
    pdf = Path(documents["pdf"].path)
    assert pdf_says(pdf, "Acme Cloud Ltd") and pdf_says(pdf, "Global Industries")
    assert not pdf_says(pdf, "Zenith Renamed plc")
    # The draft of the next billing date follows the catalog.
    draft = one(status="draft", billed_customer="gi")
    assert_renamed(Path(f"documents/2026-03-01/gi-draft-{draft['id']}.html").read_text())


@pytest.mark.parametrize("suffix", [".html", ".pdf"])
def test_a_copy_and_the_terminal_show_the_identity_at_issue(store, tmp_path, suffix):
    import_yaml(FAMILY)
    ingest_csv(USAGE)
    close("2026-02-01", issue=True)
    invoice = one(status="issued", billed_customer="gi")
    final = Path(f"documents/2026-02-01/gi-{invoice['number']}.html").read_bytes()
    import_yaml(renamed_catalog(), name="renamed.yaml")
    target = tmp_path / f"copy{suffix}"
    done = CliRunner().invoke(
        app, ["invoices", "show", str(invoice["id"]), "--output", str(target)]
    )
    assert done.exit_code == 0, done.output
    for before, after in RENAMES.items():
        if before not in ("1 Main Street", "API calls"):  # the terminal shows no address
            assert before in done.output and after not in done.output, before
    if suffix == ".html":
        assert target.read_bytes() == final  # the copy is the document as it was sent
    else:
        assert pdf_says(target, "Acme Cloud Ltd") and pdf_says(target, "Global Industries")
        assert not pdf_says(target, "Global Renamed Inc")


def test_the_snapshot_is_taken_at_issue_and_frozen_with_the_invoice(store):
    """What the snapshot holds: the issuer's catalog row, the billed customer, the names of
    every serviced customer and metric on the invoice, the tax rates of its jurisdictions;
    nothing for a draft; and no statement can change it once issued."""
    import_yaml(FAMILY)
    ingest_csv(USAGE)
    close("2026-02-01", issue=True)
    close("2026-03-01")
    issued = one(status="issued", billed_customer="gi")
    draft = one(status="draft", billed_customer="gi")
    engine = get_engine(store.url)
    with engine.connect() as connection:
        identity = connection.execute(
            sa.text("SELECT identity FROM invoices WHERE id = :i"), {"i": issued["id"]}
        ).scalar()
        assert (
            connection.execute(
                sa.text("SELECT identity FROM invoices WHERE id = :i"), {"i": draft["id"]}
            ).scalar()
            is None
        )
    snapshot = json.loads(identity) if isinstance(identity, str) else identity
    assert snapshot["issuer"] == {
        "id": "default",
        "name": "Acme Cloud Ltd",
        "invoice_prefix": "ACME",
        "address": ["1 Main Street", "Springfield"],
    }
    assert snapshot["billed"] == {"id": "gi", "name": "Global Industries"}
    assert snapshot["customers"] == {
        "gi": "Global Industries",
        "gi-na": "GI North America",
        "gi-eu": "GI Europe",
        "gi-apac": "GI Asia Pacific",
    }
    assert snapshot["metrics"] == {"calls": "API calls", "seats": "Active seats"}
    assert snapshot["tax_rates"] == {"US-NY": {"rate": "0.10"}}
    for statement in (
        "UPDATE invoices SET identity = NULL WHERE id = :i",
        "UPDATE invoices SET identity = '{}' WHERE id = :i",
    ):
        with pytest.raises(sa.exc.DBAPIError, match="frozen"), engine.begin() as connection:
            connection.execute(sa.text(statement), {"i": issued["id"]})
    # Paying it keeps the snapshot as it was.
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE invoices SET status = 'paid', paid_at = :now WHERE id = :i"),
            {"i": issued["id"], "now": datetime.now(UTC)},
        )
    with engine.connect() as connection:
        again = connection.execute(
            sa.text("SELECT identity FROM invoices WHERE id = :i"), {"i": issued["id"]}
        ).scalar()
    assert (json.loads(again) if isinstance(again, str) else again) == snapshot
