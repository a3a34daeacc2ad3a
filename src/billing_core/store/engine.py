"""Engine, sessions and the unit of work; migrations run through Alembic."""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session

from billing_core.config import get_settings, normalize_database_url
from billing_core.store.types import DecimalTotal

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


class StoreError(RuntimeError):
    """The store cannot be used as asked (missing, not migrated, locked)."""


def database_url(url: str | None = None) -> str:
    """The store's URL: the one given, else BILLING_DATABASE_URL, else ./billing.db."""
    return normalize_database_url(url) if url else get_settings().database_url


def get_engine(url: str | None = None) -> Engine:
    """One engine per URL per process."""
    url = database_url(url)
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _make_engine(url)
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    """Close every pooled connection (tests and forks)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def dispose_engine(url: str) -> None:
    """Close one URL's pooled connections and forget its engine (a throwaway store)."""
    with _engines_lock:
        engine = _engines.pop(database_url(url), None)
    if engine is not None:
        engine.dispose()


@contextmanager
def scratch_copy(url: str | None = None) -> Iterator[str | None]:
    """A private copy of a SQLite store, for work that is thrown away (a dry run): its URL,
    the copy deleted after the block. SQLite's online backup copies a consistent picture
    without the write lock, so readers and writers of the store go on meanwhile; the copy
    sits beside the store (same disk), in a folder named `.<store>.scratch-…`.

    None for PostgreSQL: a database cannot be copied while others are connected to it;
    the caller works in a transaction it rolls back instead."""
    import shutil
    import sqlite3
    import tempfile

    url = database_url(url)
    if not url.startswith("sqlite:///"):
        yield None
        return
    source = Path(url.removeprefix("sqlite:///"))
    folder = Path(tempfile.mkdtemp(prefix=f".{source.stem}.scratch-", dir=source.parent))
    copy = f"sqlite:///{folder / source.name}"
    try:
        reading = sqlite3.connect(source, timeout=60)
        try:
            writing = sqlite3.connect(folder / source.name)
            try:
                reading.backup(writing)
            finally:
                writing.close()
        finally:
            reading.close()
        yield copy
    finally:
        dispose_engine(copy)
        shutil.rmtree(folder, ignore_errors=True)


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
        _configure_sqlite(engine)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling defers BEGIN and cannot take the write lock
    # up front; take it ourselves so two writers queue instead of failing mid-way.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()
        dbapi_connection.create_aggregate("decimal_sum", 1, DecimalTotal)

    @event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def is_postgres(session_or_engine) -> bool:
    """Whether the store behind a session or engine is PostgreSQL."""
    bind = (
        session_or_engine.get_bind()
        if isinstance(session_or_engine, Session)
        else (session_or_engine)
    )
    return bind.dialect.name == "postgresql"


@contextmanager
def unit_of_work(url: str | None = None) -> Iterator[Session]:
    """A session whose work is rolled back unless the caller commits it."""
    session = Session(get_engine(url), expire_on_commit=False, autoflush=False)
    try:
        yield session
    finally:
        session.rollback()
        session.close()


def alembic_config(url: str | None = None):
    """Alembic's configuration for the store, from the migrations shipped in the package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url(url).replace("%", "%%"))
    return config


def upgrade(url: str | None = None, revision: str = "head") -> str:
    """Create or migrate the store to `revision`; returns the revision reached."""
    from alembic import command

    url = database_url(url)
    _ensure_sqlite_folder(url)
    reachable(url)
    command.upgrade(alembic_config(url), revision)
    return current_revision(url) or ""


def current_revision(url: str | None = None) -> str | None:
    """The store's Alembic revision, or None when it was never migrated: read from
    Alembic's own table, as Alembic reads it, without importing Alembic (about a
    tenth of a second every command spent before it did anything)."""
    with get_engine(url).connect() as connection:
        if not sa.inspect(connection).has_table(VERSION_TABLE):
            return None
        rows = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    if len(rows) > 1:  # several heads: as Alembic says it
        from alembic.runtime.migration import MigrationContext

        with get_engine(url).connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    return rows[0][0] if rows else None


VERSION_TABLE = "alembic_version"
_REVISION = re.compile(r"^(down_revision|revision)\s*(?::[^=]*)?=\s*(.+?)\s*$", re.M)


@functools.cache
def head_revision() -> str:
    """The code's last migration: the revision no migration file names as the one it
    follows, read from the files' `revision` and `down_revision` lines (Alembic's
    ScriptDirectory loads every migration as a module to say the same, a third of a
    second every command). When the files do not say one head plainly, Alembic does."""
    revisions, follows = set(), set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for name, value in _REVISION.findall(path.read_text(encoding="utf-8")):
            if name == "revision":
                revisions.add(value.strip("\"'"))
            elif value != "None":
                follows.add(value.strip("\"'"))
    heads = revisions - follows
    if len(heads) == 1 and all(v.isalnum() for v in revisions | follows):
        return heads.pop()
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def require_current(url: str | None = None) -> None:
    """Refuse to work on a store that is missing or behind the code's migrations."""
    url = database_url(url)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise StoreError(f"no store at {url}: run `billing db upgrade` first")
    reachable(url)
    revision = current_revision(url)
    if revision != head_revision():
        raise StoreError(
            f"store at {safe_url(url)} is at revision {revision or 'none'}, "
            f"the code needs {head_revision()}: run `billing db upgrade`"
        )


def reachable(url: str | None = None) -> None:
    """Connect to the store once; StoreError in one line if it is missing or unreachable."""
    url = database_url(url)
    try:
        engine = get_engine(url)
    except (sa.exc.ArgumentError, ImportError) as error:
        # Not a URL this product can open (the URL itself is not repeated: it may hold a
        # password in a form that cannot be parsed to hide it).
        raise StoreError(
            f"BILLING_DATABASE_URL is not a store URL this product can open ({error}): use "
            "sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE"
        ) from None
    try:
        with engine.connect():
            pass
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as error:
        raise StoreError(
            f"the store at {safe_url(url)} does not exist or cannot be reached "
            f"({_connect_reason(url, error)}): check BILLING_DATABASE_URL and that the server "
            "is running; a new store's database must be created first, then "
            "`billing db upgrade` creates its tables"
        ) from None


def _connect_reason(url: str, error: Exception) -> str:
    """The driver's reason for a failed connection, on one line and without the password."""
    text = str(getattr(error, "orig", None) or error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0] if lines else type(error).__name__
    reason = reason.rsplit(" failed: ", 1)[-1].removeprefix("FATAL:").strip()
    reason = " ".join(reason.split())
    password = sa.engine.make_url(url).password
    if password:
        reason = reason.replace(str(password), "***")
    return reason


def safe_url(url: str) -> str:
    """A URL for messages, without its password (masked too in a URL that does not
    parse)."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return re.sub(r"(//[^:/@]*:).*@", r"\1***@", url)


def store_name(url: str | None = None) -> str:
    """A short name for the store: the SQLite file's stem or the database's name."""
    parsed = sa.engine.make_url(database_url(url))
    if parsed.drivername.startswith("sqlite"):
        return Path(parsed.database or "billing").stem or "billing"
    return parsed.database or "billing"


def _ensure_sqlite_folder(url: str) -> None:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
