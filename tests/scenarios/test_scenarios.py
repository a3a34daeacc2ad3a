"""The public acceptance scenarios, run through the `billing` CLI on both stores.

In-process (Typer's runner) for speed; `test_scenarios_via_binary` drives the installed
command in subprocesses with the scenario runner itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from billing_core.cli.app import app

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import compare  # noqa: E402  (the scenario runner's own comparison)

SCENARIOS = sorted(p.parent.name for p in HERE.glob("*/scenario.json"))


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario(name, store, prefect_server, tmp_path, monkeypatch):
    spec = json.loads((HERE / name / "scenario.json").read_text())
    work = tmp_path / "scenario"
    shutil.copytree(HERE / name, work)
    monkeypatch.chdir(work)
    runner = CliRunner()
    for step in spec["steps"]:
        step = step if isinstance(step, dict) else {"run": step}
        result = runner.invoke(app, step["run"])
        shown = " ".join(step["run"])
        if step.get("fails"):
            assert result.exit_code != 0, f"`{shown}` should have been refused"
            needle = step.get("stderr_contains")
            if needle:
                assert needle.lower() in (result.stderr + result.stdout).lower(), result.stderr
        else:
            assert result.exit_code == 0, f"`{shown}` failed: {result.stderr}{result.exception}"
    result = runner.invoke(app, ["invoices", "export", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    problem = compare(spec["expect"], json.loads(result.stdout))
    assert problem is None, problem


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_scenarios_via_binary(backend, prefect_server):
    """The scenario runner exactly as an operator runs it, on the installed command."""
    from tests.conftest import need_postgres, postgres_admin_url

    billing = Path(sys.executable).parent / "billing"
    args = [
        sys.executable,
        str(HERE / "run.py"),
        "--billing",
        str(billing),
        "--timeout",
        "120",
        "-k",
        "m3ter-pooled-breakdown",
    ]
    if backend == "postgres":
        need_postgres()
        args += ["--postgres", postgres_admin_url()]
    env = dict(os.environ, PREFECT_API_URL=prefect_server)
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 0 failed" in done.stdout
