"""Documents in a shared store, on each billing store: an object store (`s3://`, a real
S3-compatible server) written once per document and read back by what reads documents,
keys the product refuses, and the links a browser opens."""

from __future__ import annotations

import urllib.request
from datetime import date
from pathlib import Path

import pytest

from billing_core.steps import close as steps
from billing_core.steps.documents import documents_problem
from billing_core.store import document_store, recorded_documents
from billing_core.store.document_store import UnsafeKey, split_object_url
from billing_core.store.recorded_documents import document_linker
from tests.helpers import close, import_yaml

# Two billed customers with a flat fee on the 1st (two invoices a billing date).
TWO_CUSTOMERS = """
customers:
  - {id: acme, name: Acme, currency: USD}
  - {id: zenith, name: Zenith, currency: USD}
prices:
  - {code: platform, product: Platform, currency: USD, model: flat, amount: "100.00"}
subscriptions:
  - {id: sub-acme, customer: acme, start: 2026-01-01, billing_day: 1,
     items: [{price: platform, timing: in_advance}]}
  - {id: sub-zenith, customer: zenith, start: 2026-01-01, billing_day: 1,
     items: [{price: platform, timing: in_advance}]}
"""


def recorded(store) -> dict[tuple[str, str], str]:
    """(billed customer, format) -> recorded path of the current documents."""
    rows = store.rows(
        "SELECT v.billed_customer_id, d.format, d.path FROM invoice_documents d "
        "JOIN invoices v ON v.id = d.invoice_id"
    )
    return {(customer, fmt): path for customer, fmt, path in rows}


def test_a_close_writes_each_document_to_the_object_store_once(store, s3_bucket, monkeypatch):
    monkeypatch.setenv("BILLING_OUTPUT_DIR", f"s3://{s3_bucket.name}/docs")
    monkeypatch.setenv("BILLING_DOCUMENT_FORMATS", "html,pdf")
    import_yaml(TWO_CUSTOMERS)
    close("2026-01-01")  # drafts: an HTML preview each
    previews = recorded(store)
    assert sorted(previews) == [("acme", "html"), ("zenith", "html")]
    assert sorted(previews.values()) == s3_bucket.urls()
    assert all(
        url.startswith(f"s3://{s3_bucket.name}/docs/2026-01-01/") for url in s3_bucket.urls()
    )
    key = previews[("acme", "html")].split("/", 3)[3]
    assert s3_bucket.content_type(key) == "text/html; charset=utf-8"
    assert b"DRAFT" in s3_bucket.read(key)
    assert not Path("documents").exists()  # nothing on the local disk

    # A second close over unchanged drafts rewrites nothing (no new object version).
    versions = s3_bucket.versions()
    close("2026-01-01")
    assert s3_bucket.versions() == versions and recorded(store) == previews

    # A changed draft's preview is written again, and only that one.
    import_yaml(
        "customers:\n  - {id: zenith, name: Zenith Renamed, currency: USD}\n", name="r.yaml"
    )
    steps.render(date(2026, 1, 1))
    assert s3_bucket.versions() == versions + 1
    assert b"Zenith Renamed" in s3_bucket.read(previews[("zenith", "html")].split("/", 3)[3])

    # Issuing: the previews go (deleted from the bucket), the final HTML and PDF come.
    close("2026-01-01", issue=True)
    final = recorded(store)
    assert sorted(final) == [
        ("acme", "html"),
        ("acme", "pdf"),
        ("zenith", "html"),
        ("zenith", "pdf"),
    ]
    assert sorted(final.values()) == s3_bucket.urls()
    for (_, fmt), url in final.items():
        key = url.split("/", 3)[3]
        if fmt == "pdf":
            assert s3_bucket.read(key).startswith(b"%PDF")
            assert s3_bucket.content_type(key) == "application/pdf"
    # Issued documents are written once: a later close finds them and writes nothing.
    versions = s3_bucket.versions()
    report = steps.render(date(2026, 1, 1))
    assert report.written == 0 and report.warnings == []
    assert s3_bucket.versions() == versions
    # A lost one is written again, identical to the first, and reported, as a lost file
    # is (issue 23).
    lost = final[("acme", "pdf")].split("/", 3)[3]
    before = s3_bucket.read(lost)
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key=lost)
    report = steps.render(date(2026, 1, 1))
    assert report.written == 1 and s3_bucket.read(lost) == before
    assert [w for w in report.warnings if "written again" in w and final[("acme", "pdf")] in w]


def test_draft_previews_follow_the_output_store(store, s3_bucket, monkeypatch, tmp_path):
    import_yaml(TWO_CUSTOMERS)
    close("2026-01-01")
    local = recorded(store)
    assert all(Path(path).is_file() for path in local.values())
    # To the object store: each preview is written there and its file removed.
    monkeypatch.setenv("BILLING_OUTPUT_DIR", f"s3://{s3_bucket.name}/docs")
    close("2026-01-01")
    moved = recorded(store)
    assert sorted(moved.values()) == s3_bucket.urls() and len(moved) == 2
    assert not any(Path(path).exists() for path in local.values())
    # And back to a folder: the objects are removed (a delete marker each).
    monkeypatch.setenv("BILLING_OUTPUT_DIR", str(tmp_path / "again"))
    close("2026-01-01")
    back = recorded(store)
    assert all(Path(path).is_file() and "again" in path for path in back.values())
    assert s3_bucket.objects() == []


def test_a_review_copy_is_a_local_file_whatever_the_output_store(store, s3_bucket, monkeypatch):
    from typer.testing import CliRunner

    from billing_core.cli.app import app

    monkeypatch.setenv("BILLING_OUTPUT_DIR", f"s3://{s3_bucket.name}/docs")
    import_yaml(TWO_CUSTOMERS)
    close("2026-01-01", issue=True)
    done = CliRunner().invoke(app, ["invoices", "show", "1", "--output", "copy.pdf"])
    assert done.exit_code == 0, done.output
    assert Path("copy.pdf").read_bytes().startswith(b"%PDF")
    url = f"s3://{s3_bucket.name}/docs/copy.pdf"
    done = CliRunner().invoke(app, ["invoices", "show", "1", "--output", url])
    assert done.exit_code == 2
    assert "--output writes a local file" in done.output
    assert not Path("s3:").exists() and url not in s3_bucket.urls()


def test_the_object_store_refuses_unsafe_keys_with_one_line(store, s3_bucket, monkeypatch):
    for url, why in [
        (f"s3://{s3_bucket.name}/docs/../other", "'..'"),
        (f"s3://{s3_bucket.name}//etc", "absolute"),
        (f"s3://{s3_bucket.name}/docs/./x", "'.'"),
        (f"s3://{s3_bucket.name}/a\\b", "backslash"),
        (f"s3://{s3_bucket.name}/a\nb", "control character"),
        ("s3://user:secret@bucket/docs", "bucket name"),
    ]:
        with pytest.raises(UnsafeKey) as refused:
            split_object_url(url, prefix=True)
        line = str(refused.value)
        assert "\n" not in line.replace(url, "") and why in line, line
        assert line.startswith("unsafe object key (")
    assert split_object_url(f"s3://{s3_bucket.name}/docs/", prefix=True) == (s3_bucket.name, "docs")
    assert split_object_url(f"s3://{s3_bucket.name}", prefix=True) == (s3_bucket.name, "")

    # A close into an unsafe prefix writes nothing and says why in one line.
    monkeypatch.setenv("BILLING_OUTPUT_DIR", f"s3://{s3_bucket.name}/docs/../other")
    import_yaml(TWO_CUSTOMERS)
    problem = documents_problem(close("2026-01-01"))
    assert problem is not None and "\n" not in problem
    assert "unsafe object key (an empty, '.' or '..' part)" in problem
    assert s3_bucket.objects() == [] and recorded(store) == {}

    # What reads a recorded document back refuses an unsafe one too.
    tampered = f"s3://{s3_bucket.name}/docs/../../etc/passwd"
    with pytest.raises(UnsafeKey):
        recorded_documents.remove(tampered)
    with pytest.raises(UnsafeKey):
        document_linker()(tampered)
    assert not document_store.document_store().exists(tampered)


def test_links_of_local_documents(tmp_path, monkeypatch):
    folder = tmp_path / "docs"
    (folder / "2026-01-01").mkdir(parents=True)
    inside = folder / "2026-01-01" / "acme-INV-2026-000001.pdf"
    outside = tmp_path / "elsewhere" / "x y.pdf"
    monkeypatch.setenv("BILLING_OUTPUT_DIR", str(folder))
    monkeypatch.delenv("BILLING_DOCUMENTS_BASE_URL", raising=False)
    assert document_linker()(str(inside)) == inside.as_uri()
    monkeypatch.setenv("BILLING_DOCUMENTS_BASE_URL", "https://billing.example/docs")
    link = document_linker()
    assert link(str(inside)) == "https://billing.example/docs/2026-01-01/acme-INV-2026-000001.pdf"
    # A document outside the served folder (an older output folder) keeps its file:// link.
    assert link(str(outside)) == outside.as_uri() and "x%20y.pdf" in link(str(outside))
    for base in ("https://user:secret@billing.example/docs", "ftp://billing.example/"):
        monkeypatch.setenv("BILLING_DOCUMENTS_BASE_URL", base)
        with pytest.raises(ValueError) as refused:
            document_linker()
        assert "secret" not in str(refused.value)


def test_a_store_that_refuses_the_documents_gets_them_at_the_next_close(
    store, s3_bucket, monkeypatch
):
    monkeypatch.setenv("BILLING_OUTPUT_DIR", f"s3://{s3_bucket.name}-later/docs")
    monkeypatch.setenv("BILLING_DOCUMENT_FORMATS", "html,pdf")
    import_yaml(TWO_CUSTOMERS)
    problem = documents_problem(close("2026-01-01", issue=True))
    assert problem is not None and "\n" not in problem
    assert problem.startswith("documents not written: 4 document(s) of 2 invoice(s)")
    assert "The specified bucket does not exist" in problem
    assert f"output folder s3://{s3_bucket.name}-later/docs can be written" in problem
    assert recorded(store) == {}
    s3_bucket.client.create_bucket(Bucket=f"{s3_bucket.name}-later")
    assert documents_problem(close("2026-01-01")) is None
    assert len(recorded(store)) == 4


def test_presigned_links_open_the_object(s3_server, s3_bucket, monkeypatch):
    # The endpoint from the product's own setting, not botocore's variable.
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("BILLING_S3_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("BILLING_OUTPUT_DIR", f"s3://{s3_bucket.name}/docs")
    monkeypatch.setenv("BILLING_DOCUMENTS_LINK_EXPIRY", "3600")
    s3_bucket.client.put_object(
        Bucket=s3_bucket.name, Key="docs/a b.pdf", Body=b"%PDF-1.7 x", ContentType="application/pdf"
    )
    link = document_linker()(f"s3://{s3_bucket.name}/docs/a b.pdf")
    assert link.startswith("http://") and "X-Amz-Expires=3600" in link
    with urllib.request.urlopen(link, timeout=10) as response:
        assert response.read() == b"%PDF-1.7 x"
        assert response.headers["Content-Type"] == "application/pdf"
    monkeypatch.setenv("BILLING_DOCUMENTS_LINK_EXPIRY", str(8 * 24 * 3600))
    with pytest.raises(ValueError, match="7 days"):
        document_linker()
