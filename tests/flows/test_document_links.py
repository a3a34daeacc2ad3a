"""Under a real Prefect server: the `close-documents` artifact links each document with a
URL a browser opens (a presigned URL of an object store, or a served folder's URL), and a
close on a Dask cluster whose workers write every document to the object store."""

from __future__ import annotations

import functools
import http.server
import re
import threading
import urllib.request
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)

from flows.period_close import configured_close, period_close
from tests.flows.test_scale_and_locks import FAMILIES, MORE_USAGE
from tests.helpers import import_yaml, ingest_csv
from tests.integration.test_close import POOLED, USAGE

LINK = re.compile(r"\[(html|pdf)\]\(([^)\s]+)\)")
THROUGH = date(2026, 2, 1)


def document_links(flow_run_id) -> list[str]:
    """The links of the flow run's `close-documents` artifact, as the UI shows them."""
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["close-documents"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
    assert len(artifacts) == 1
    return [url for _, url in LINK.findall(artifacts[0].data)]


def fetch(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read(), response.headers["Content-Type"]


def recorded_paths(store) -> list[str]:
    return sorted(p for (p,) in store.rows("SELECT path FROM invoice_documents"))


def closed(flow, **parameters) -> str:
    state = flow(through=THROUGH, issue=True, return_state=True, **parameters)
    assert state.is_completed(), state.message
    return state.state_details.flow_run_id


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_the_documents_links_are_presigned_urls_of_the_objects(
    store, prefect_server, s3_bucket, monkeypatch
):
    monkeypatch.setenv("BILLING_OUTPUT_DIR", f"s3://{s3_bucket.name}/closes")
    monkeypatch.setenv("BILLING_DOCUMENT_FORMATS", "html,pdf")
    import_yaml(POOLED)
    ingest_csv(USAGE)
    links = document_links(closed(period_close))
    objects = s3_bucket.objects()
    assert recorded_paths(store) == s3_bucket.urls() and len(objects) == 4  # html + pdf each
    assert len(links) == len(objects)
    opened = set()
    for link in links:
        assert link.startswith(("http://", "https://")) and "X-Amz-Signature=" in link
        key = next(k for k in objects if unquote(urlsplit(link).path).endswith("/" + k))
        content, kind = fetch(link)
        assert content == s3_bucket.read(key)
        if key.endswith(".pdf"):
            assert content.startswith(b"%PDF") and kind == "application/pdf"
        opened.add(key)
    assert sorted(opened) == objects


@pytest.fixture
def served_folder(tmp_path) -> Iterator[tuple[Path, str]]:
    """The documents folder served over HTTP, as the operator's web server would."""
    folder = tmp_path / "documents"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_the_documents_links_open_the_served_folder(
    store, prefect_server, served_folder, monkeypatch
):
    folder, base = served_folder
    monkeypatch.setenv("BILLING_OUTPUT_DIR", str(folder))
    monkeypatch.setenv("BILLING_DOCUMENTS_BASE_URL", base)
    monkeypatch.setenv("BILLING_DOCUMENT_FORMATS", "html,pdf")
    import_yaml(POOLED)
    ingest_csv(USAGE)
    links = document_links(closed(period_close))
    paths = recorded_paths(store)
    assert len(paths) == 4 and len(links) == len(paths)
    for link in links:
        assert link.startswith(base + "/")
        path = folder.resolve() / unquote(link.removeprefix(base + "/"))
        assert str(path) in paths
        content, _ = fetch(link)
        assert content == path.read_bytes()
    assert any(link.endswith(".pdf") for link in links)


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_a_base_url_with_a_password_is_never_published(store, prefect_server, monkeypatch):
    monkeypatch.setenv("BILLING_DOCUMENTS_BASE_URL", "https://ops:S3cret@billing.example/docs")
    import_yaml(POOLED)
    ingest_csv(USAGE)
    state = period_close(through=THROUGH, return_state=True)
    assert state.is_failed()
    assert "must not carry a user name or password" in state.message
    assert "S3cret" not in state.message
    # The close itself is done and recorded; only its links were not published.
    assert store.scalar("SELECT status FROM close_runs") == "completed"
    assert store.scalar("SELECT count(*) FROM invoice_documents") == 2
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    assert not any("S3cret" in str(a.data) for a in artifacts)


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_a_dask_cluster_writes_every_document_to_the_object_store(
    store, prefect_server, s3_bucket, monkeypatch
):
    monkeypatch.setenv("BILLING_OUTPUT_DIR", f"s3://{s3_bucket.name}/cluster")
    monkeypatch.setenv("BILLING_DOCUMENT_FORMATS", "html,pdf")
    monkeypatch.setenv("BILLING_TASK_RUNNER", "dask")
    monkeypatch.setenv("BILLING_SHARDS", "2")
    monkeypatch.setenv("BILLING_DASK_WORKERS", "2")
    import_yaml(FAMILIES)
    ingest_csv(MORE_USAGE)
    flow_run_id = closed(configured_close())
    paths = recorded_paths(store)
    assert len(paths) >= 6 and paths == s3_bucket.urls()
    pdfs = [key for key in s3_bucket.objects() if key.endswith(".pdf")]
    assert len(pdfs) == len(paths) // 2
    assert all(s3_bucket.read(key).startswith(b"%PDF") for key in pdfs)
    assert not Path("documents").exists()
    # Both shards rendered, each in its own worker process.
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        renders = [
            r
            for r in client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            if r.name.startswith("render-invoices")
        ]
    assert len(renders) == 2
