"""Shared fixtures: a migrated store on SQLite and on PostgreSQL, and one Prefect server.

Store tests take the `store` fixture and run once per backend. PostgreSQL is found through
BILLING_TEST_POSTGRES_URL (default: the local server); when it is unreachable the
PostgreSQL cases skip with the reason, unless BILLING_REQUIRE_POSTGRES=1 makes that a
failure (CI).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.object_store import s3_bucket, s3_server  # noqa: F401 - fixtures

# Isolate Prefect before it is imported anywhere: its own home, no telemetry.
_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="billing-tests-prefect-"))
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)


def _stop_kept_prefect_server() -> None:
    """The Prefect server the `billing` commands of the tests kept (BILLING_PREFECT_SERVER
    =reuse) stops with the session (it would also notice its home gone)."""
    from billing_core.cli.prefect_server import stop

    with contextlib.suppress(Exception):
        stop(_PREFECT_HOME, force=True)


atexit.register(_stop_kept_prefect_server)  # before the home is removed (last in, first out)
os.environ["PREFECT_HOME"] = str(_PREFECT_HOME)
os.environ["DASK_TEMPORARY_DIRECTORY"] = str(_PREFECT_HOME / "dask")  # local clusters' scratch
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# As `billing` itself sets it (cli.app.main, which CliRunner does not run): the Prefect
# server a test's command starts may take longer than Prefect's 20 s on a busy machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("BILLING_DATABASE_URL", None)

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@localhost:5432/postgres"
TABLES_IN_DELETE_ORDER = None  # filled lazily from the metadata


def postgres_admin_url() -> str:
    from billing_core.config import normalize_database_url

    return normalize_database_url(os.environ.get("BILLING_TEST_POSTGRES_URL", DEFAULT_POSTGRES))


def postgres_required() -> bool:
    return os.environ.get("BILLING_REQUIRE_POSTGRES") == "1"


_postgres_reason: str | None = None
_postgres_checked = False


def postgres_unavailable() -> str | None:
    """None when the test PostgreSQL answers, else why not."""
    global _postgres_checked, _postgres_reason
    if not _postgres_checked:
        _postgres_checked = True
        try:
            engine = sa.create_engine(postgres_admin_url(), connect_args={"connect_timeout": 3})
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
            engine.dispose()
        except Exception as error:  # noqa: BLE001 - any failure means "not available"
            _postgres_reason = f"PostgreSQL at {postgres_admin_url()} unavailable: {error}"
    return _postgres_reason


def need_postgres() -> None:
    reason = postgres_unavailable()
    if reason:
        if postgres_required():
            pytest.fail(f"{reason} (BILLING_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)


class PostgresDatabases:
    """Creates throwaway databases on the test server and drops them at the end."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def create(self, template: str | None = None) -> str:
        name = "billing_test_" + uuid.uuid4().hex[:10]
        admin = sa.create_engine(postgres_admin_url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            suffix = f' TEMPLATE "{template}"' if template else ""
            connection.execute(sa.text(f'CREATE DATABASE "{name}"{suffix}'))
        admin.dispose()
        self.created.append(name)
        return postgres_admin_url().rsplit("/", 1)[0] + "/" + name

    def drop_all(self) -> None:
        from billing_core.store.engine import dispose_engines

        dispose_engines()
        admin = sa.create_engine(postgres_admin_url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            for name in reversed(self.created):
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases()
    yield databases
    if databases.created:
        databases.drop_all()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """A migrated SQLite store, copied for each test."""
    from billing_core.store.engine import dispose_engines, upgrade

    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    dispose_engines()
    return path


@pytest.fixture(scope="session")
def postgres_template(pg_databases) -> str | None:
    """A migrated PostgreSQL database used as the template of each test's database."""
    if postgres_unavailable():
        return None
    from billing_core.store.engine import dispose_engines, upgrade

    url = pg_databases.create()
    upgrade(url)
    dispose_engines()
    return url.rsplit("/", 1)[1]


@dataclass
class Store:
    """A fresh, migrated store for one test; BILLING_DATABASE_URL points at it."""

    backend: str
    url: str
    workdir: Path

    def session(self):
        from billing_core.store.engine import unit_of_work

        return unit_of_work(self.url)

    def scalar(self, sql: str, **params):
        from billing_core.store.engine import get_engine

        with get_engine(self.url).connect() as connection:
            return connection.execute(sa.text(sql), params).scalar()

    def rows(self, sql: str, **params) -> list:
        from billing_core.store.engine import get_engine

        with get_engine(self.url).connect() as connection:
            return list(connection.execute(sa.text(sql), params))


def make_store(
    backend: str, tmp_path: Path, sqlite_template: Path, postgres_template, pg_databases
) -> Store:
    if backend == "sqlite":
        path = tmp_path / "billing.db"
        shutil.copy(sqlite_template, path)
        return Store("sqlite", f"sqlite:///{path}", tmp_path)
    need_postgres()
    return Store("postgres", pg_databases.create(template=postgres_template), tmp_path)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path, monkeypatch, sqlite_template) -> Iterator[Store]:
    """A fresh store per test, once on SQLite and once on PostgreSQL."""
    postgres_template = (
        request.getfixturevalue("postgres_template") if request.param == "postgres" else None
    )
    pg_databases = request.getfixturevalue("pg_databases") if request.param == "postgres" else None
    if request.param == "postgres":
        need_postgres()
    made = make_store(request.param, tmp_path, sqlite_template, postgres_template, pg_databases)
    monkeypatch.setenv("BILLING_DATABASE_URL", made.url)
    monkeypatch.setenv("BILLING_OUTPUT_DIR", str(tmp_path / "documents"))
    monkeypatch.chdir(tmp_path)
    yield made
    from billing_core.store.engine import dispose_engines

    dispose_engines()


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """One Prefect API server for the whole session; returns its URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield PREFECT_API_URL.value()


@pytest.fixture
def another_store(request, tmp_path, sqlite_template):
    """Make more fresh stores of the same backend as `store` (for clean comparisons)."""

    def make(name: str) -> Store:
        backend = request.getfixturevalue("store").backend
        folder = tmp_path / name
        folder.mkdir()
        if backend == "postgres":
            return make_store(
                backend,
                folder,
                sqlite_template,
                request.getfixturevalue("postgres_template"),
                request.getfixturevalue("pg_databases"),
            )
        return make_store(backend, folder, sqlite_template, None, None)

    return make


@contextlib.contextmanager
def using_store(store: Store):
    """Point BILLING_DATABASE_URL at another store for a block."""
    from billing_core.store.engine import dispose_engines

    before = os.environ.get("BILLING_DATABASE_URL")
    os.environ["BILLING_DATABASE_URL"] = store.url
    try:
        yield store
    finally:
        if before is None:
            os.environ.pop("BILLING_DATABASE_URL", None)
        else:
            os.environ["BILLING_DATABASE_URL"] = before
        dispose_engines()
