"""`billing demo` from the installed command: a summary and real documents."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_writes_issued_documents_and_prints_the_summary(tmp_path, prefect_server):
    billing = Path(sys.executable).parent / "billing"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env["PREFECT_API_URL"] = prefect_server
    done = subprocess.run(
        [str(billing), "demo", "--folder", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Demo invoices" in done.stdout
    documents = tmp_path / "demo" / "documents"
    html = sorted(documents.rglob("*.html"))
    pdf = sorted(documents.rglob("*.pdf"))
    issued_html = [p for p in html if "draft" not in p.name]
    assert len(issued_html) == 20 and len(pdf) == 20
    assert all(p.read_bytes().startswith(b"%PDF") for p in pdf)
    assert (
        "Global Industries"
        in (documents / "2026-02-01")
        .joinpath(next(p.name for p in (documents / "2026-02-01").glob("global-industries-*.html")))
        .read_text()
    )
    assert any("DRAFT" in p.read_text() for p in html if "draft" in p.name)
