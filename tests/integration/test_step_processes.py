"""The close's family steps on this machine's cores: on PostgreSQL, with enough to do,
consolidation and the documents run their families in parts, every part but the first
in a forked process. The invoices, the documents and their records are the
ones one process writes; a part that fails fails the step with its own error, and
nothing is left running."""

from __future__ import annotations

import hashlib
import os
import re
import signal
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from billing_core.steps import close as steps
from billing_core.steps import processes
from billing_core.steps import render as rendering
from billing_core.store.locks import LockLost
from tests.conftest import using_store
from tests.helpers import close, import_yaml, ingest_csv

THROUGH = date(2026, 2, 1)


# Six families: three rolled up to their root (one invoice each), three whose children pay
# their own (three invoices each), so that the parts weigh differently.
def _family(n: int) -> str:
    own = ", bill_to: self" if n % 2 else ""
    return f"""  - {{id: f{n}, name: Family {n}, currency: USD}}
  - {{id: f{n}-a, name: Family {n} A, currency: USD, parent: f{n}{own}}}
  - {{id: f{n}-b, name: Family {n} B, currency: USD, parent: f{n}{own}}}
"""


FAMILIES = (
    """
issuer: {name: Acme Cloud Ltd, invoice_prefix: ACME, address: [1 Main Street, Springfield]}
customers:
"""
    + "".join(_family(n) for n in range(6))
    + """
prices:
  - {code: platform, product: Platform, currency: USD, model: flat, amount: "100.00"}
subscriptions:
"""
    + "".join(
        f"""  - {{id: sub-{c}, customer: {c}, start: 2026-01-01, billing_day: 1,
     items: [{{price: platform, timing: in_arrears}}]}}
"""
        for n in range(6)
        for c in (f"f{n}", f"f{n}-a", f"f{n}-b")
    )
)


@pytest.fixture
def forking(monkeypatch) -> list[int]:
    """Every family step forks, however little it has to do; the forked processes' ids."""
    monkeypatch.setenv("BILLING_PROCESSES", "2")
    monkeypatch.setattr(processes, "DOCUMENTS_FROM", 0)
    monkeypatch.setattr(processes, "CUSTOMERS_FROM", 0)
    pids: list[int] = []
    start = processes._Child.start

    def noted(part):
        child = start(part)
        pids.append(child.pid)
        return child

    monkeypatch.setattr(processes._Child, "start", staticmethod(noted))
    return pids


def documents(store) -> dict[tuple[str, str], tuple[str, bool]]:
    """Every document record by (billed customer, format): the digest of its file and
    whether it is final; each file checked against its record. A draft's preview names
    the draft by its id, which differs when two processes created the drafts: it is
    read as "Draft N". (Source hashes are of the contexts, ids included.)"""
    out = {}
    for customer, fmt, path, sha, final in store.rows(
        "SELECT i.billed_customer_id, d.format, d.path, d.sha256, d.final "
        "FROM invoice_documents d JOIN invoices i ON i.id = d.invoice_id"
    ):
        content = Path(path).read_bytes()
        assert hashlib.sha256(content).hexdigest() == sha, path
        if not final:
            content = re.sub(rb"Draft \d+ for review", b"Draft N for review", content)
        digest = hashlib.sha256(content).hexdigest()
        out[(customer, fmt)] = (digest, bool(final))
    return out


def forget_documents(store) -> None:
    from billing_core.store.engine import get_engine

    with get_engine(store.url).begin() as connection:
        connection.execute(sa.text("DELETE FROM invoice_documents"))


def parts_pids(monkeypatch, folder: Path) -> Path:
    """Each part of the render step writes the id of the process it ran in under
    `folder` (a fork inherits this patch)."""
    folder.mkdir()
    own = rendering.render

    def noted(session, through, scope, *rest, **kwargs):
        (folder / str(os.getpid())).write_text(",".join(sorted(scope.families or [])))
        return own(session, through, scope, *rest, **kwargs)

    monkeypatch.setattr(rendering, "render", noted)
    return folder


@pytest.mark.parametrize("issue", [False, True], ids=["previews", "final"])
def test_documents_rendered_in_two_processes_are_those_one_process_writes(
    store, another_store, forking, monkeypatch, tmp_path, issue
):
    import_yaml(FAMILIES)
    pids = parts_pids(monkeypatch, tmp_path / "pids")
    close(THROUGH, issue=issue)
    forked = documents(store)
    # 3 families rolled up (1 invoice each) and 3 whose children pay their own (3 each).
    assert len(forked) == (24 if issue else 12)
    assert {fmt for _, fmt in forked} == ({"html", "pdf"} if issue else {"html"})
    seen = {p.name: p.read_text() for p in pids.iterdir()}
    if store.backend == "postgres":
        # Two processes, this one and a fork, each with families of its own.
        assert len(seen) == 2 and str(os.getpid()) in seen
        parts = [set(v.split(",")) for v in seen.values()]
        assert not parts[0] & parts[1] and parts[0] | parts[1] == {f"f{n}" for n in range(6)}
    else:
        # SQLite takes one writer at a time: the step renders here, in one part.
        assert list(seen) == [str(os.getpid())]
    # The same catalog closed in one process writes the same documents.
    single = another_store("single")
    monkeypatch.setenv("BILLING_PROCESSES", "1")
    with using_store(single):
        monkeypatch.setenv("BILLING_OUTPUT_DIR", str(single.workdir / "documents"))
        import_yaml(FAMILIES, single.workdir)
        reports = close(THROUGH, issue=issue)
        assert "processes" not in reports[-1].details
        assert documents(single) == forked


def test_the_step_reports_every_part(store, forking):
    import_yaml(FAMILIES)
    close(THROUGH)
    forget_documents(store)
    report = steps.render(THROUGH)
    drafts = store.scalar("SELECT count(*) FROM invoices WHERE status = 'draft'")
    assert report.read == report.written == report.details["documents"] == drafts == 12
    assert report.details.get("processes") == (2 if store.backend == "postgres" else None)
    # The forked process's peak memory, for the operator who sets BILLING_PROCESSES.
    assert (report.details.get("forked_peak_rss_mb", 0) > 10) == (store.backend == "postgres")
    assert not report.failures and not report.warnings


def closed_with_a_fork_that(store, monkeypatch, does) -> None:
    """A closed store whose render step, in its forked part, first calls `does(scope)`
    (on PostgreSQL: SQLite renders in one process)."""
    if store.backend != "postgres":
        pytest.skip("SQLite renders in one process")
    import_yaml(FAMILIES)
    close(THROUGH)
    parent = os.getpid()
    own = rendering.render

    def patched(session, through, scope, *rest, **kwargs):
        if os.getpid() != parent:
            does(scope)
        return own(session, through, scope, *rest, **kwargs)

    monkeypatch.setattr(rendering, "render", patched)


def test_a_family_failing_in_a_forked_part_is_reported_and_the_others_written(
    store, forking, monkeypatch
):
    def broken(scope):
        if "f2" in (scope.families or ()):
            raise ValueError("family f2's template data is broken")

    closed_with_a_fork_that(store, monkeypatch, broken)
    forget_documents(store)
    report = steps.render(THROUGH)
    assert list(report.failures) == ["f2"]
    assert "template data is broken" in report.failures["f2"]
    # Every other family's documents are written; f2 has none.
    written = dict(
        store.rows(
            "SELECT i.family_id, count(d.id) FROM invoices i "
            "LEFT JOIN invoice_documents d ON d.invoice_id = i.id GROUP BY i.family_id"
        )
    )
    assert written["f2"] == 0
    assert all(n > 0 for family, n in written.items() if family != "f2")


def test_a_forked_part_that_raises_fails_the_step_with_its_error(store, forking, monkeypatch):
    def lost(scope):
        raise LockLost("the close lost its lock; this step stopped without writing")

    closed_with_a_fork_that(store, monkeypatch, lost)
    with pytest.raises(LockLost, match="lost its lock"):
        steps.render(THROUGH)
    assert_waited_for(forking)


def test_a_forked_part_that_dies_fails_the_step_in_one_line(store, forking, monkeypatch):
    closed_with_a_fork_that(store, monkeypatch, lambda scope: os.kill(os.getpid(), signal.SIGKILL))
    with pytest.raises(processes.PartFailed) as failed:
        steps.render(THROUGH)
    assert str(failed.value) == (
        "the process running a part of the step was stopped by signal 9 before it reported"
    )
    assert_waited_for(forking)


def test_when_this_processs_part_fails_the_forked_one_is_stopped(
    store, forking, monkeypatch, tmp_path
):
    if store.backend != "postgres":
        pytest.skip("SQLite renders in one process")
    import_yaml(FAMILIES)
    close(THROUGH)
    parent = os.getpid()
    started = tmp_path / "child"

    def slow_or_broken(session, through, scope, *rest, **kwargs):
        if os.getpid() != parent:
            started.write_text(str(os.getpid()))
            signal.pause()  # until stopped
        while not started.exists():
            pass
        raise LockLost("the close lost its lock; this step stopped without writing")

    monkeypatch.setattr(rendering, "render", slow_or_broken)
    with pytest.raises(LockLost):
        steps.render(THROUGH)
    assert_waited_for(forking)
    with pytest.raises(ProcessLookupError):
        os.kill(int(started.read_text()), 0)


def assert_waited_for(pids: list[int]) -> None:
    """Every forked process was waited for (none left running, none a zombie)."""
    assert pids
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_the_period_close_flow_renders_in_two_processes(store, forking, prefect_server):
    """Under a Prefect server, from the flow's task threads (Prefect's own threads running
    beside them): the close completes, consolidation and the documents forked once each,
    every invoice has its documents, and the steps' reports say so."""
    from flows.period_close import period_close

    import_yaml(FAMILIES)
    state = period_close(through=THROUGH, issue=True, return_state=True)
    assert state.is_completed()
    steps_done = {r["step"]: r for r in state.result()["steps"]}
    render = steps_done["render invoices"]
    assert render["written"] == 24
    assert render["details"].get("processes") == (2 if store.backend == "postgres" else None)
    consolidated = steps_done["consolidate roll-ups"]["details"]
    assert consolidated.get("processes") == render["details"].get("processes")
    assert len(forking) == (2 if store.backend == "postgres" else 0)
    assert len(documents(store)) == 24


def test_consolidation_in_two_processes_gives_one_processs_invoices(
    store, another_store, forking, monkeypatch
):
    from tests.flows.test_scale_and_locks import FAMILIES as POOLS
    from tests.flows.test_scale_and_locks import MORE_USAGE, exported

    import_yaml(POOLS)
    ingest_csv(MORE_USAGE)
    reports = {r.step: r for r in close("2026-03-01", issue=True)}
    for step in ("consolidate roll-ups", "render invoices"):
        assert reports[step].details.get("processes") == (
            2 if store.backend == "postgres" else None
        ), step
    assert "processes" not in reports["rate"].details
    assert "processes" not in reports["apply credits"].details
    assert not any(r.failures for r in reports.values())
    forked = exported()
    assert len(forked) >= 6

    monkeypatch.setenv("BILLING_PROCESSES", "1")
    with using_store(another_store("single")) as single:
        monkeypatch.setenv("BILLING_OUTPUT_DIR", str(single.workdir / "documents"))
        import_yaml(POOLS, single.workdir)
        ingest_csv(MORE_USAGE, single.workdir)
        reports = {r.step: r for r in close("2026-03-01", issue=True)}
        assert "processes" not in reports["consolidate roll-ups"].details
        assert exported() == forked


PARENT_THAT_DIES = """
import os, sys, time
from billing_core.steps import processes

folder = sys.argv[1]

def child_part():
    open(os.path.join(folder, "child"), "w").write(str(os.getpid()))
    time.sleep(600)

def own_part():
    time.sleep(600)

processes.forked([own_part, child_part])
"""


def test_a_forked_part_ends_when_the_close_that_forked_it_is_killed(tmp_path):
    """A close killed (or stopped, exiting at once) does not leave its fork running."""
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(PARENT_THAT_DIES)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)])
    pid_file = tmp_path / "child"
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert running(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not running(child):
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    pytest.fail(f"the forked part (pid {child}) still ran after its parent was killed")


def running(pid: int) -> bool:
    """Whether a process runs (an ended one not yet reaped, a zombie, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_forked_parts_write_to_the_object_store(store, forking, s3_bucket, monkeypatch):
    """Both parts write to the shared object store, the fork with a client of its own
    (this process's, made before the fork, stays this process's)."""
    from billing_core.store.document_store import filesystem

    monkeypatch.setenv("BILLING_OUTPUT_DIR", f"s3://{s3_bucket.name}/docs")
    import_yaml(FAMILIES)
    filesystem().ls(s3_bucket.name)  # this process's client, before the fork
    reports = {r.step: r for r in close(THROUGH, issue=True)}
    assert reports["render invoices"].details.get("processes") == (
        2 if store.backend == "postgres" else None
    )
    recorded = sorted(path for (path,) in store.rows("SELECT path FROM invoice_documents"))
    assert len(recorded) == 24 and recorded == s3_bucket.urls()
    for url in recorded:
        if url.endswith(".pdf"):
            assert s3_bucket.read(url.split("/", 3)[3]).startswith(b"%PDF")
    versions = s3_bucket.versions()
    filesystem().ls(s3_bucket.name)  # this process's client still answers
    assert steps.render(THROUGH).written == 0
    assert s3_bucket.versions() == versions
