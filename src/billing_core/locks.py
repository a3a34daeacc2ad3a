"""One close at a time per store: a PostgreSQL advisory lock, or a file lock beside the
SQLite file. Either is released by the database or the OS if the holder dies.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from .db import database_url, get_engine, safe_url
from .models import StoreLock

# pg_advisory_lock key: the bytes of "billclos" as a signed 64-bit integer.
ADVISORY_KEY = int.from_bytes(b"billclos", "big", signed=True)
POLL_SECONDS = 1.0


class CloseLocked(RuntimeError):
    """Another close holds the store."""


def describe_holder(holder: dict | None) -> str:
    if not holder:
        return "another close"
    return (
        f"{holder.get('holder', 'another close')} on {holder.get('host', '?')} "
        f"(pid {holder.get('pid', '?')}, since {holder.get('since', '?')})"
    )


@contextmanager
def close_lock(holder: str, timeout: float = 0.0, url: str | None = None) -> Iterator[None]:
    """Hold the store's close lock; wait up to `timeout` seconds, then refuse clearly."""
    url = database_url(url)
    me = {
        "holder": holder,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if url.startswith("sqlite"):
        with _file_lock(url, me, timeout):
            yield
    else:
        with _advisory_lock(url, me, timeout):
            yield


def _refuse(url: str, holder: dict | None, timeout: float) -> CloseLocked:
    waited = f"after waiting {timeout:g} s" if timeout else "without waiting"
    return CloseLocked(
        f"another close is running on store {safe_url(url)}: {describe_holder(holder)}. "
        f"This close stops {waited}; retry it when that one has finished "
        "(set BILLING_CLOSE_LOCK_TIMEOUT to wait longer)."
    )


@contextmanager
def _file_lock(url: str, me: dict, timeout: float) -> Iterator[None]:
    path = Path(url.removeprefix("sqlite:///") + ".close-lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    try:
                        holder = json.loads(handle.read() or "null")
                    except json.JSONDecodeError:
                        holder = None
                    raise _refuse(url, holder, timeout) from None
                time.sleep(POLL_SECONDS)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(me))
        handle.flush()
        yield
    finally:
        try:
            fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            handle.close()


@contextmanager
def _advisory_lock(url: str, me: dict, timeout: float) -> Iterator[None]:
    engine = get_engine(url)
    table = StoreLock.__table__
    connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    deadline = time.monotonic() + timeout
    try:
        while not connection.execute(
            sa.select(sa.func.pg_try_advisory_lock(ADVISORY_KEY))
        ).scalar():
            if time.monotonic() >= deadline:
                row = connection.execute(
                    sa.select(table.c.holder).where(table.c.name == "close")
                ).scalar()
                raise _refuse(url, json.loads(row) if row else None, timeout)
            time.sleep(POLL_SECONDS)
        try:
            from sqlalchemy.dialects.postgresql import insert

            stmt = insert(table).values(
                name="close", holder=json.dumps(me), acquired_at=datetime.now(UTC)
            )
            connection.execute(
                stmt.on_conflict_do_update(
                    index_elements=["name"],
                    set_={"holder": stmt.excluded.holder, "acquired_at": stmt.excluded.acquired_at},
                )
            )
            yield
        finally:
            connection.execute(sa.delete(table).where(table.c.name == "close"))
            connection.execute(sa.select(sa.func.pg_advisory_unlock(ADVISORY_KEY)))
    finally:
        connection.close()
