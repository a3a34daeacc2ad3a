"""SIGTERM stops a `billing close` promptly and cleanly, also while it waits out a step's
retry delay: one line saying it was stopped, a non-zero exit, the close lock released, the
close recorded as stopped and its flow run no longer running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.flows.refusals import refuse_inserts
from tests.helpers import import_yaml, ingest_csv
from tests.integration.test_close import POOLED, USAGE

BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _awaiting_retry(api: str) -> list[dict]:
    """The task runs of the server that wait out a retry delay."""
    wanted = {"task_runs": {"state": {"name": {"any_": ["AwaitingRetry"]}}}}
    return httpx.post(f"{api}/task_runs/filter", json=wanted, timeout=10).json()


def _waiting_for_a_retry(api: str, deadline: float, before: set[str]) -> str:
    """The flow run whose step waits out its retry delay (a task run not in `before`)."""
    while time.monotonic() < deadline:
        waiting = [r for r in _awaiting_retry(api) if r["id"] not in before]
        if waiting:
            return waiting[0]["flow_run_id"]
        time.sleep(0.5)
    raise AssertionError("no step ever waited for a retry")


def test_sigterm_stops_a_close_waiting_for_a_retry(store, prefect_server):
    from billing_core.store.locks import close_lock

    import_yaml(POOLED)
    ingest_csv(USAGE)
    refuse_inserts(store, "charges")  # the rate step fails, in a thread of the task runner
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")},
        "PREFECT_API_URL": prefect_server,
        "BILLING_TASK_RETRIES": "2",
        "BILLING_TASK_RETRY_DELAY": "30",
    }
    before = {r["id"] for r in _awaiting_retry(prefect_server)}
    process = subprocess.Popen(
        [str(BIN / "billing"), "close", "--through", "2026-02-01"],
        cwd=store.workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        flow_run_id = _waiting_for_a_retry(prefect_server, time.monotonic() + 180, before)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert took < 5, f"stopped after {took:.1f} s"
    assert process.returncode == 143  # 128 + SIGTERM
    assert "Traceback" not in stderr, stderr
    stopped = [line for line in stderr.splitlines() if "stopped" in line]
    assert len(stopped) == 1, stderr
    assert "close through 2026-02-01" in stopped[0], stopped
    # The store's close lock is free, and the close is recorded as stopped.
    with close_lock("the test", 0):
        pass
    assert store.rows("SELECT status, finished_at IS NOT NULL FROM close_runs") == [
        ("stopped", True)
    ]
    run = httpx.get(f"{prefect_server}/flow_runs/{flow_run_id}", timeout=10).json()
    assert run["state"]["type"] in ("CRASHED", "CANCELLED"), run["state"]
