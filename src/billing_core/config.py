"""Settings read from the environment (one object, read when a command starts)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from pydantic import ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def normalize_database_url(url: str) -> str:
    """Make every PostgreSQL URL use the psycopg 3 driver; leave others alone."""
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


# The documents a close can write (BILLING_DOCUMENT_FORMATS).
DOCUMENT_FORMATS = frozenset({"html", "pdf"})
# The least value of each count and wait the settings hold.
MINIMUM = {
    "shards": 1,
    "processes": 1,
    "dask_workers": 1,
    "task_retries": 0,
    "task_retry_delay": 0,
    "close_lock_timeout": 0,
}


class Settings(BaseSettings):
    """Everything the product reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")

    database_url: str = "sqlite:///billing.db"
    # Where documents go: a folder, or an object store (`s3://bucket/prefix`) that every
    # worker writes to (docs/operations.md, "Documents in a shared store").
    output_dir: str = "documents"
    # An S3-compatible server's endpoint; else botocore's own (AWS_ENDPOINT_URL, or AWS).
    s3_endpoint_url: str | None = None
    # The URL at which the operator's web server serves the output folder: the documents'
    # links in the Prefect UI (else `file://` links, which the UI does not open).
    documents_base_url: str | None = None
    # How long a presigned link to a document in an object store works, in seconds.
    documents_link_expiry: int = 7 * 24 * 3600
    # Invoice templates; the ones shipped with the package unless this names a folder.
    templates_dir: Path | None = None
    # Documents: html always; pdf adds a WeasyPrint rendering of the same HTML.
    document_formats: str = "html,pdf"
    # Scale-out: customers are split into this many shards (a family is never split).
    shards: int = 1
    # Task runner for sharded steps: "threads" (default) or "dask".
    task_runner: str = "threads"
    dask_address: str | None = None
    dask_workers: int = 2
    # Processes consolidation and the documents use on this machine with the threads task
    # runner, on PostgreSQL (at most its cores; 1: none forked).
    # See billing_core/steps/processes.py.
    processes: int = 2
    # Usage sources pulled by the close's collect step (see docs/usage-sources.md).
    usage_inbox: Path | None = None
    usage_sql_url: str | None = None
    usage_sql_query: str | None = None
    # How far before its watermark each collect reads the SQL source again, for rows that
    # reach it late (ISO 8601 `P1D`, `PT6H`, or seconds; `0`: none).
    usage_sql_lookback: timedelta = timedelta(days=1)
    # How long a close waits for another close over the same store before giving up.
    close_lock_timeout: float = 0.0
    # "Today" for a close without --through: the business's time zone.
    timezone: str = "UTC"
    # Retries of each close step (a database hiccup, a file not yet there).
    task_retries: int = 2
    task_retry_delay: float = 10.0
    # The Prefect server of a CLI flow run when no Prefect API is configured: "reuse" one
    # kept in the background between commands, or a "temporary" one per command
    # (billing_core/cli/prefect_server.py, docs/operations.md).
    prefect_server: str = "reuse"
    # How long a reused server waits unused before it stops (ISO 8601 or seconds).
    prefect_server_idle: timedelta = timedelta(minutes=30)

    @field_validator("database_url")
    @classmethod
    def _normalize(cls, value: str) -> str:
        return normalize_database_url(value)

    @field_validator("documents_link_expiry")
    @classmethod
    def _expiry(cls, value: int) -> int:
        if not 1 <= value <= 7 * 24 * 3600:
            raise ValueError("a presigned link lasts 1 second to 7 days (604800 seconds)")
        return value

    @field_validator("output_dir", mode="before")
    @classmethod
    def _output_dir(cls, value: object) -> str:
        return str(value)

    @field_validator("prefect_server")
    @classmethod
    def _prefect_server(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in ("reuse", "temporary", "prefect"):
            raise ValueError(
                "reuse (a server kept between commands), temporary (one per command) or "
                "prefect (Prefect's own temporary server, one per command)"
            )
        return value

    @field_validator("prefect_server_idle")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("a reused server waits some time unused before it stops")
        return value

    @field_validator("usage_sql_lookback", "prefect_server_idle", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> object:
        """A number of seconds as the environment gives it (text) is a duration too."""
        if isinstance(value, str) and value.strip().removeprefix("-").isdigit():
            return int(value.strip())
        return value

    @field_validator("usage_sql_lookback")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("the lookback cannot be negative")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("not a time zone (an IANA name: UTC, Europe/Paris)") from None
        return value

    @field_validator("task_runner")
    @classmethod
    def _runner(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in ("threads", "dask"):
            raise ValueError("threads or dask")
        return value

    @field_validator("document_formats")
    @classmethod
    def _formats(cls, value: str) -> str:
        unknown = _format_names(value) - DOCUMENT_FORMATS
        if unknown:
            raise ValueError(f"html and pdf, comma-separated; not {', '.join(sorted(unknown))}")
        return value

    @field_validator(*MINIMUM)
    @classmethod
    def _minimum(cls, value: float, info: ValidationInfo) -> float:
        low = MINIMUM[info.field_name]
        if value < low:
            raise ValueError(f"{low} or more")
        return value

    @field_validator("templates_dir")
    @classmethod
    def _templates(cls, value: Path | None) -> Path | None:
        if value is not None and not (value / "invoice.html").is_file():
            raise ValueError(
                "no invoice.html in that folder (a copy of the shipped templates/ folder)"
            )
        return value

    @property
    def formats(self) -> set[str]:
        return _format_names(self.document_formats)


def _format_names(value: str) -> set[str]:
    """The formats a BILLING_DOCUMENT_FORMATS value names, lower case."""
    return {f.strip().lower() for f in value.split(",") if f.strip()}


class SettingsError(ValueError):
    """A setting in the environment that cannot be used: one line per variable, naming it,
    its value (not for URLs, which may hold a password) and the reason."""


PREFIX = Settings.model_config["env_prefix"]


def get_settings() -> Settings:
    """Read the settings now (not cached: tests and the CLI change the environment)."""
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError("\n".join(_reasons(error))) from None


def _reasons(error: ValidationError) -> list[str]:
    lines = []
    for problem in error.errors():
        field = str(problem["loc"][0]) if problem["loc"] else "?"
        name = PREFIX + field.upper()
        reason = str(problem["msg"]).removeprefix("Value error, ")
        # As the environment gave it (a validator may have converted it already).
        value = os.environ.get(name, problem.get("input"))
        shown = "" if field.endswith("_url") else f"={value!s}"
        lines.append(f"{name}{shown}: {reason}")
    return lines
