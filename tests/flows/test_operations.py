"""Operating the close through a real Prefect server, work pool and worker: `prefect deploy`
accepts the deployments file, and a run whose render step failed resumes there when retried
(what the UI's Retry does), without redoing the steps that completed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_store
from tests.flows.test_period_close_flow import STEPS
from tests.helpers import import_yaml, ingest_csv, invoices
from tests.integration.test_close import POOLED, USAGE

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrefectServer:
    """`prefect server start` in a subprocess with a home of its own."""

    def __init__(self, home: Path):
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BILLING_"))
        }
        self.env.update(
            PREFECT_HOME=str(home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="false",
            PREFECT_LOGGING_LEVEL="INFO",
        )
        self.processes: list[subprocess.Popen] = []

    def start(self) -> None:
        log = (self.home / "server.log").open("w")
        self.processes.append(
            subprocess.Popen(
                [
                    str(BIN / "prefect"),
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(
            "prefect server did not start: " + (self.home / "server.log").read_text()[-2000:]
        )

    def client_env(self, **extra: str) -> dict:
        return {**self.env, "PREFECT_API_URL": self.url, "PWD": str(REPO), **extra}

    def cli(self, *args: str, env: dict | None = None, timeout: int = 180) -> str:
        done = subprocess.run(
            [str(BIN / "prefect"), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            env=env or self.client_env(),
            timeout=timeout,
        )
        assert done.returncode == 0, f"prefect {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout + done.stderr

    def spawn(self, args: list[str], env: dict, name: str) -> None:
        log = (self.home / f"{name}.log").open("w")
        self.processes.append(
            subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        )

    def api(self, method: str, path: str, **kwargs):
        response = httpx.request(method, f"{self.url}{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()

    def wait_terminal(self, flow_run_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.api("GET", f"/flow_runs/{flow_run_id}")
            if run["state"] and run["state"]["type"] in (
                "COMPLETED",
                "FAILED",
                "CRASHED",
                "CANCELLED",
            ):
                return run
            time.sleep(1)
        logs = "".join(p.read_text()[-3000:] for p in self.home.glob("*.log"))
        raise AssertionError(f"flow run {flow_run_id} did not finish: {logs}")

    def task_runs(self, flow_run_id: str) -> list[dict]:
        return self.api(
            "POST", "/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}}
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    server = PrefectServer(tmp_path_factory.mktemp("prefect-server"))
    server.start()
    yield server
    server.stop()


def test_prefect_deploy_accepts_the_deployments_file(prefect_api):
    prefect_api.cli("work-pool", "create", "billing", "--type", "process")
    out = prefect_api.cli(
        "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"
    )
    assert "monthly-close" in out
    deployments = prefect_api.api("POST", "/deployments/filter", json={})
    by_name = {d["name"]: d for d in deployments}
    assert set(by_name) >= {"monthly-close", "backfill", "render-documents"}
    close = by_name["monthly-close"]
    assert close["entrypoint"] == "flows/period_close.py:period_close"
    assert close["schedules"][0]["schedule"]["cron"] == "0 6 1 * *"
    assert close["concurrency_limit"] == 1 or close.get("global_concurrency_limit")
    assert close["work_pool_name"] == "billing"
    # A dry run from the UI: the parameter is there, off by default, on both closes.
    for name in ("monthly-close", "backfill"):
        assert by_name[name]["parameters"]["dry_run"] is False
        assert "dry_run" in by_name[name]["parameter_openapi_schema"]["properties"]


def _export_without_ids() -> list[dict]:
    return [{k: v for k, v in i.items() if k not in ("id", "issued_at")} for i in invoices()]


def _deploy_with_worker(prefect_api, store, tmp_path, pool: str, templates=None) -> None:
    """The monthly close deployed to a pool of its own, and a worker for it on `store`."""
    prefect_api.cli("work-pool", "create", pool, "--type", "process")
    prefect_api.cli(
        "--no-prompt",
        "deploy",
        "--prefect-file",
        "deployments/prefect.yaml",
        "--name",
        "monthly-close",
        "--pool",
        pool,
    )
    scratch = tmp_path / "tmp"  # the worker's runner storage, not the machine's /tmp
    scratch.mkdir()
    worker_env = prefect_api.client_env(
        TMPDIR=str(scratch),
        BILLING_DATABASE_URL=store.url,
        BILLING_OUTPUT_DIR=str(tmp_path / "documents"),
        BILLING_TASK_RETRIES="0",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
        **({"BILLING_TEMPLATES_DIR": str(templates)} if templates else {}),
    )
    prefect_api.spawn(
        [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
        worker_env,
        f"worker-{pool}",
    )


def _clean_export(store, tmp_path, request, catalog: str, usage: str) -> list[dict]:
    """The invoices one close that never failed leaves, on a fresh store."""
    from billing_core.store.engine import dispose_engines
    from tests.helpers import close

    (tmp_path / "clean").mkdir()
    clean = make_store(
        store.backend,
        tmp_path / "clean",
        request.getfixturevalue("sqlite_template"),
        request.getfixturevalue("postgres_template") if store.backend == "postgres" else None,
        request.getfixturevalue("pg_databases") if store.backend == "postgres" else None,
    )
    os.environ["BILLING_DATABASE_URL"] = clean.url
    try:
        import_yaml(catalog, folder=tmp_path / "clean")
        ingest_csv(usage, folder=tmp_path / "clean")
        close("2026-02-01")
        return _export_without_ids()
    finally:
        os.environ["BILLING_DATABASE_URL"] = store.url
        dispose_engines()


def test_retry_resumes_at_the_failed_render_step(
    prefect_api, store, tmp_path, sqlite_template, request
):
    import_yaml(POOLED)
    ingest_csv(USAGE)
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    good = (templates / "invoice.html").read_text()
    (templates / "invoice.html").write_text("{% for broken %}")  # a template error

    _deploy_with_worker(prefect_api, store, tmp_path, f"retry-{store.backend}", templates)

    out = prefect_api.cli(
        "deployment", "run", "period-close/monthly-close", "--param", "through=2026-02-01"
    )
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    failed = prefect_api.wait_terminal(flow_run_id)
    assert failed["state"]["type"] == "FAILED"
    first = prefect_api.task_runs(flow_run_id)
    assert {r["name"].rsplit("-", 1)[0]: r["state"]["type"] for r in first} == {
        **dict.fromkeys(STEPS[:5], "COMPLETED"),
        "render-invoices": "FAILED",
    }

    (templates / "invoice.html").write_text(good)  # the operator fixes the cause
    prefect_api.cli("flow-run", "retry", flow_run_id)  # what the UI's Retry does
    done = prefect_api.wait_terminal(flow_run_id)
    assert done["state"]["type"] == "COMPLETED", done["state"]

    runs = prefect_api.task_runs(flow_run_id)
    states: dict[str, list[str]] = {}
    for run in sorted(runs, key=lambda r: r["expected_start_time"] or ""):
        states.setdefault(run["name"].rsplit("-", 1)[0], []).append(run["state"]["name"])
    for name in STEPS[:5]:
        # Executed once (the first attempt); on the retry the step was a cache hit.
        assert states[name].count("Completed") == 1, (name, states[name])
        assert "Cached" in states[name], (name, states[name])
    assert states["render-invoices"][-1] == "Completed"
    assert store.scalar("SELECT count(*) FROM close_runs") == 1
    assert store.scalar("SELECT status FROM close_runs") == "completed"
    retried = _export_without_ids()
    assert (tmp_path / "documents").exists()

    # The same invoices as a close that never failed, on a fresh store.
    assert _clean_export(store, tmp_path, request, POOLED, USAGE) == retried


def test_a_failed_family_is_named_the_others_closed_and_retry_completes_it(
    prefect_api, store, tmp_path, request
):
    from tests.integration.test_family_isolation import FAMILIES, execute

    import_yaml(FAMILIES)
    ingest_csv(USAGE)
    execute(store, """UPDATE prices SET terms = '{"amount": "1e400"}' WHERE code = 'fee-b'""")
    _deploy_with_worker(prefect_api, store, tmp_path, f"families-{store.backend}")

    out = prefect_api.cli(
        "deployment", "run", "period-close/monthly-close", "--param", "through=2026-02-01"
    )
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    failed = prefect_api.wait_terminal(flow_run_id)
    assert failed["state"]["type"] == "FAILED"
    assert "solo-b" in failed["state"]["message"]
    first = {
        r["name"].rsplit("-", 1)[0]: r["state"]["type"] for r in prefect_api.task_runs(flow_run_id)
    }
    assert first == {**dict.fromkeys(STEPS, "COMPLETED"), "rate-usage": "FAILED"}
    # Named in close_runs, in the task log and in an artifact.
    status, failures = store.rows("SELECT status, failures FROM close_runs")[0]
    failures = failures if isinstance(failures, dict) else json.loads(failures)
    assert status == "failed"
    assert set(failures) == {"solo-b"} and failures["solo-b"]["step"] == "rate"
    assert "InvalidOperation" in failures["solo-b"]["reason"]
    logs = prefect_api.api("POST", "/logs/filter", json={"logs": {"level": {"ge_": 40}}})
    assert any("family solo-b failed" in log["message"] for log in logs), logs
    artifacts = prefect_api.api(
        "POST", "/artifacts/filter", json={"artifacts": {"key": {"any_": ["close-failures"]}}}
    )
    assert any(a["flow_run_id"] == flow_run_id and "solo-b" in a["data"] for a in artifacts), (
        artifacts
    )
    # Every other family was closed.
    assert {i["billed_customer"] for i in invoices()} == {"hq", "solo-a"}

    # the fix
    execute(store, """UPDATE prices SET terms = '{"amount": "20.00"}' WHERE code = 'fee-b'""")
    prefect_api.cli("flow-run", "retry", flow_run_id)
    done = prefect_api.wait_terminal(flow_run_id)
    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert store.rows("SELECT status, failures FROM close_runs") == [("completed", None)]
    assert _clean_export(store, tmp_path, request, FAMILIES, USAGE) == _export_without_ids()
