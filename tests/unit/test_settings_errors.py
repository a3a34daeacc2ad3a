"""A setting in the environment that cannot be used is refused in one line naming the
variable, its value and the reason: never pydantic's report of a field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from billing_core.cli import app as cli
from billing_core.config import SettingsError, _reasons, get_settings

BIN = Path(sys.executable).parent


def test_a_bad_number_names_the_variable_and_its_value(monkeypatch) -> None:
    monkeypatch.setenv("BILLING_PROCESSES", "two")
    with pytest.raises(SettingsError) as refused:
        get_settings()
    [line] = str(refused.value).splitlines()
    assert line.startswith("BILLING_PROCESSES=two: ")
    assert "integer" in line


def test_every_bad_variable_is_a_line_of_its_own(monkeypatch) -> None:
    monkeypatch.setenv("BILLING_SHARDS", "many")
    monkeypatch.setenv("BILLING_PREFECT_SERVER", "sometimes")
    monkeypatch.setenv("BILLING_DOCUMENTS_LINK_EXPIRY", "0")
    with pytest.raises(SettingsError) as refused:
        get_settings()
    lines = str(refused.value).splitlines()
    assert [line.split("=", 1)[0] for line in lines] == [
        "BILLING_DOCUMENTS_LINK_EXPIRY",
        "BILLING_SHARDS",
        "BILLING_PREFECT_SERVER",
    ]
    # A validator's own reason, without pydantic's "Value error, ".
    assert lines[0] == (
        "BILLING_DOCUMENTS_LINK_EXPIRY=0: a presigned link lasts 1 second to 7 days "
        "(604800 seconds)"
    )


def test_a_negative_duration_in_seconds_gets_the_settings_own_reason(monkeypatch) -> None:
    monkeypatch.setenv("BILLING_USAGE_SQL_LOOKBACK", "-5")
    with pytest.raises(SettingsError) as refused:
        get_settings()
    assert str(refused.value) == "BILLING_USAGE_SQL_LOOKBACK=-5: the lookback cannot be negative"


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        # Accepted before and used as something else: a close on the wrong day, on threads,
        # without the documents asked for, one shard, one process, no wait, no retry.
        ("BILLING_TIMEZONE", "Europe/Pariss", "not a time zone (an IANA name: UTC, Europe/Paris)"),
        ("BILLING_TIMEZONE", "../../etc/passwd", "not a time zone"),
        ("BILLING_TASK_RUNNER", "celery", "threads or dask"),
        ("BILLING_DOCUMENT_FORMATS", "html,docx", "html and pdf, comma-separated; not docx"),
        ("BILLING_SHARDS", "0", "1 or more"),
        ("BILLING_PROCESSES", "0", "1 or more"),
        ("BILLING_DASK_WORKERS", "-2", "1 or more"),
        ("BILLING_CLOSE_LOCK_TIMEOUT", "-1", "0 or more"),
        ("BILLING_TASK_RETRIES", "-1", "0 or more"),
        ("BILLING_TASK_RETRY_DELAY", "-0.5", "0 or more"),
        # Found only by the render step, after every other step had run.
        ("BILLING_TEMPLATES_DIR", "/nonexistent", "no invoice.html in that folder"),
    ],
)
def test_a_value_the_close_cannot_use_is_refused(monkeypatch, variable, value, reason) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as refused:
        get_settings()
    assert str(refused.value).startswith(f"{variable}={value}: {reason}")


def test_the_values_a_close_can_use_are_kept(monkeypatch, tmp_path) -> None:
    (tmp_path / "invoice.html").write_text("{{ invoice }}")
    for variable, value in {
        "BILLING_TIMEZONE": "America/New_York",
        "BILLING_TASK_RUNNER": " Dask ",
        "BILLING_DOCUMENT_FORMATS": "HTML, pdf",
        "BILLING_SHARDS": "1",
        "BILLING_PROCESSES": "1",
        "BILLING_CLOSE_LOCK_TIMEOUT": "0",
        "BILLING_TASK_RETRIES": "0",
        "BILLING_TEMPLATES_DIR": str(tmp_path),
    }.items():
        monkeypatch.setenv(variable, value)
    settings = get_settings()
    assert settings.task_runner == "dask"
    assert settings.formats == {"html", "pdf"}
    assert settings.templates_dir == tmp_path


def test_a_url_is_never_shown() -> None:
    class Urls(BaseModel):
        usage_sql_url: int

    with pytest.raises(ValidationError) as error:
        Urls(usage_sql_url="postgresql://billing:s3cret@db.example/usage")
    [line] = _reasons(error.value)
    assert line.startswith("BILLING_USAGE_SQL_URL: ")
    assert "s3cret" not in line


def test_the_command_prints_one_line_and_exits_1(monkeypatch, capsys) -> None:
    monkeypatch.setenv("BILLING_PROCESSES", "two")
    monkeypatch.delenv("BILLING_DEBUG", raising=False)
    monkeypatch.setattr(cli, "app", get_settings)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "refused: the environment's settings: BILLING_PROCESSES=two: "
        "Input should be a valid integer, unable to parse string as an integer"
    ]


def test_a_command_that_reads_the_store_refuses_the_same_way(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env.update(BILLING_DATABASE_URL=f"sqlite:///{tmp_path / 'store.db'}", BILLING_SHARDS="x")
    done = subprocess.run(
        [str(BIN / "billing"), "invoices", "list"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "refused: the environment's settings: BILLING_SHARDS=x: "
        "Input should be a valid integer, unable to parse string as an integer"
    ]
    assert "Traceback" not in done.stderr
