"""What the `billing` command prints when a close cannot finish: one line per problem and a
non-zero exit, never a traceback (the temporary Prefect server that does not start, a
family that fails, an unexpected error)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from billing_core.cli import app as cli

BIN = Path(sys.executable).parent


def _billing(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    environment.update(env)
    return subprocess.run(
        [str(BIN / "billing"), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["reuse", "temporary", "prefect"])
def test_a_server_that_does_not_start_is_one_line_saying_what_to_do(store, mode, tmp_path):
    home = tmp_path / "prefect-home"
    done = _billing(
        "close",
        "--through",
        "2026-02-01",
        cwd=store.workdir,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1",
        PREFECT_HOME=str(home),
        BILLING_PREFECT_SERVER=mode,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    ours = [line for line in done.stderr.splitlines() if "did not start within 1 s" in line]
    assert len(ours) == 1, done.stderr
    assert "prefect server start" in ours[0] and "PREFECT_API_URL" in ours[0]
    assert not (home / "billing-prefect-server.json").exists()  # nothing left half started


def test_the_cli_waits_generously_for_the_temporary_server(monkeypatch):
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    monkeypatch.setattr(cli, "app", lambda: None)
    cli.main()
    assert int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]) >= 120
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")


def test_an_unexpected_error_is_one_line_without_the_password(monkeypatch, capsys):
    url = "postgresql+psycopg://billing:s3cret@db.example:5432/billing"
    monkeypatch.setenv("BILLING_DATABASE_URL", url)
    monkeypatch.delenv("BILLING_DEBUG", raising=False)

    def boom():
        raise RuntimeError(f"could not use {url}\nsecond line")

    monkeypatch.setattr(cli, "app", boom)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: RuntimeError: could not use ")
    assert "s3cret" not in err and "second line" in err


@pytest.mark.slow
def test_a_failed_family_is_named_one_line_each_and_the_exit_is_non_zero(store):
    from tests.integration.test_family_isolation import FAMILIES, execute

    (store.workdir / "catalog.yaml").write_text(FAMILIES)
    assert _billing("import", "catalog.yaml", cwd=store.workdir).returncode == 0
    execute(store, """UPDATE prices SET terms = '{"amount": "1e400"}' WHERE code = 'fee-b'""")
    done = _billing("close", "--through", "2026-02-01", cwd=store.workdir)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("close through"))
    assert "failed for 1 customer family" in lines[start]
    assert lines[start + 1].strip().startswith("family solo-b: rate failed: InvalidOperation")
    assert "solo-a" in done.stdout  # the other families' invoices


@pytest.mark.slow
def test_a_step_the_store_refuses_is_one_line_naming_the_step_and_the_reason(store, prefect_server):
    from tests.flows.refusals import refuse_inserts
    from tests.integration.test_close import POOLED

    (store.workdir / "catalog.yaml").write_text(POOLED)
    assert _billing("import", "catalog.yaml", cwd=store.workdir).returncode == 0
    refuse_inserts(store, "charges")
    done = _billing(
        "close",
        "--through",
        "2026-02-01",
        cwd=store.workdir,
        PREFECT_API_URL=prefect_server,
        BILLING_TASK_RETRIES="0",
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "INSERT" not in done.stderr, done.stderr
    ours = [line for line in done.stderr.splitlines() if line.startswith("close through")]
    assert len(ours) == 1, done.stderr
    assert ours[0].startswith("close through 2026-02-01: rate-usage failed: ")
    assert ours[0].endswith("the steps before it are done: fix the cause and close again")
