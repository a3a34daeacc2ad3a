"""One close at a time, proven: a close that lost its lock stops without writing more, and
the close that takes over never runs a step while a transaction of the first is open;
closes queue on Prefect's global concurrency limit whichever deployment started them.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import date
from pathlib import Path

import pytest

from billing_core.steps import consolidate as rollup
from billing_core.store.locks import ADVISORY_KEY, LockLost, advisory_key_parts, close_lock
from flows.period_close import period_close
from tests.helpers import import_yaml, ingest_csv, invoices
from tests.integration.test_close import POOLED, USAGE, snapshot


class Blocked:
    """The first consolidation waits, mid-transaction (its rows written, not committed),
    until the test lets it go; later ones run through."""

    def __init__(self, monkeypatch):
        self.inside = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self.starts: list[tuple[str, float]] = []
        real = rollup.consolidate

        def consolidate(session, *args, **kwargs):
            self.calls += 1
            first = self.calls == 1
            report = real(session, *args, **kwargs)
            if first:
                self.inside.set()
                assert self.release.wait(120), "the test never released the first close"
            return report

        monkeypatch.setattr(rollup, "consolidate", consolidate)
        from billing_core.steps import close as steps

        monkeypatch.setitem(steps.STEP_NAMES, consolidate, "consolidate roll-ups")
        real_recalculate = steps.recalculation.recalculate

        def recalculate(session, *args, **kwargs):
            self.starts.append((threading.current_thread().name, time.monotonic()))
            return real_recalculate(session, *args, **kwargs)

        monkeypatch.setattr(steps.recalculation, "recalculate", recalculate)


def _run(name: str, results: dict, **kwargs) -> threading.Thread:
    def target():
        try:
            results[name] = period_close(**kwargs)
        except BaseException as error:  # noqa: BLE001 - the test reads it
            results[name] = error

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def _lose_the_lock(store) -> None:
    """What a dropped connection or a removed lock file does to the running close."""
    if store.backend == "postgres":
        hi, lo = advisory_key_parts(ADVISORY_KEY)
        killed = store.scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' "
            "AND classid = :hi AND objid = :lo AND objsubid = 1 AND granted AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())",
            hi=hi,
            lo=lo,
        )
        assert killed == 1
    else:
        Path(store.url.removeprefix("sqlite:///") + ".close-lock").unlink()


def test_a_close_that_lost_its_lock_stops_and_the_next_never_runs_beside_it(
    store, prefect_server, monkeypatch, tmp_path, another_store
):
    import_yaml(POOLED)
    ingest_csv(USAGE)
    monkeypatch.setenv("BILLING_TASK_RETRIES", "0")
    monkeypatch.setenv("BILLING_CLOSE_LOCK_TIMEOUT", "120")
    blocked = Blocked(monkeypatch)
    results: dict = {}

    first = _run("first", results, through=date(2026, 2, 1))
    assert blocked.inside.wait(120), results
    _lose_the_lock(store)

    second = _run("second", results, through=date(2026, 2, 1))
    time.sleep(3)
    # The second close took the lock, but runs no step while the first's transaction is
    # open (only the first's recalculation has started).
    assert [name for name, _ in blocked.starts] == ["first"], blocked.starts
    assert "second" not in results
    released = time.monotonic()
    blocked.release.set()
    first.join(120)
    second.join(300)

    assert isinstance(results["first"], LockLost), results["first"]
    assert "lost the store's lock" in str(results["first"])
    assert not isinstance(results["second"], BaseException), results["second"]
    assert [name for name, _ in blocked.starts] == ["first", "second"]
    assert blocked.starts[1][1] > released  # the second's first step came after
    statuses = [tuple(r) for r in store.rows("SELECT status, failures FROM close_runs ORDER BY id")]
    assert [s for s, _ in statuses] == ["failed", "completed"]

    # Exactly what one close on a fresh store leaves (ids aside: PostgreSQL's sequences
    # do not give back the values the stopped close's transaction drew).
    after = _without_ids(invoices())
    documents = store.rows(
        "SELECT invoice_id, format, count(*) FROM invoice_documents GROUP BY invoice_id, format"
    )
    clean = another_store("clean")
    os.environ["BILLING_DATABASE_URL"] = clean.url
    try:
        import_yaml(POOLED, folder=tmp_path / "clean")
        ingest_csv(USAGE, folder=tmp_path / "clean")
        from tests.helpers import close

        close("2026-02-01")
        expected = _without_ids(invoices())
        expected_documents = len(clean.rows("SELECT invoice_id, format FROM invoice_documents"))
    finally:
        os.environ["BILLING_DATABASE_URL"] = store.url
        from billing_core.store.engine import dispose_engines

        dispose_engines()
    assert after == expected and len(after) == 2
    assert len(documents) == expected_documents and {n for _, _, n in documents} == {1}


def _without_ids(exported: list[dict]) -> list[dict]:
    return [{k: v for k, v in i.items() if k not in ("id", "issued_at")} for i in exported]


def test_a_commit_after_the_lock_was_lost_is_refused_without_a_second_close(store):
    """Losing the lock is noticed at the next commit even when nobody took it over."""
    import_yaml(POOLED)
    ingest_csv(USAGE)
    from billing_core.steps import close as steps

    with close_lock("a close"):
        steps.recalculate(date(2026, 2, 1))
        _lose_the_lock(store)
        before = snapshot(store.url)
        with pytest.raises(LockLost, match="lost the store's lock"):
            steps.rate(date(2026, 2, 1))
        assert snapshot(store.url) == before


def test_closes_queue_on_the_global_concurrency_limit(store, prefect_server, monkeypatch):
    """A second close waits for the first's slot (from any deployment or the CLI on the
    same server) instead of being refused by the store lock."""
    from prefect.concurrency.sync import concurrency

    from flows.runtime import close_slot, close_slot_name

    import_yaml(POOLED)
    ingest_csv(USAGE)
    monkeypatch.setenv("BILLING_CLOSE_LOCK_TIMEOUT", "0")  # the store lock would refuse
    from prefect import flow

    @flow
    def holder():
        with close_slot():  # creates the limit as a close does
            pass

    holder()
    results: dict = {}
    name = close_slot_name(store.url)
    with concurrency(name, occupy=1, strict=True):
        waiting = _run("queued", results, through=date(2026, 2, 1))
        time.sleep(4)
        assert "queued" not in results  # waiting for the slot, not refused
        assert store.scalar("SELECT count(*) FROM close_runs") == 0
    waiting.join(300)
    assert not isinstance(results["queued"], BaseException), results["queued"]
    assert store.scalar("SELECT status FROM close_runs") == "completed"
