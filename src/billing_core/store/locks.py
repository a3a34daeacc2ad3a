"""One close at a time per store, proven at every commit.

The close lock is a PostgreSQL session advisory lock held on a dedicated connection, or an
OS file lock on `<store>.close-lock` beside a SQLite file; the database or the OS releases
it if the holder dies. A lock can also be lost while its holder runs on: the advisory
lock's connection is terminated, the lock file is deleted. So holding the lock is not
taken on trust:

- **A fencing token.** Every acquisition writes a new random token into the store's
  `store_locks` row. Each write transaction of a close checks, just before it commits and
  inside the same transaction, that the row still carries its token and that its lock is
  still held (PostgreSQL: the recorded backend still holds the advisory lock; SQLite: the
  lock file is still the one it locked). On PostgreSQL the row is read FOR SHARE, so a
  new holder's token cannot land between the check and the commit. A close that fails
  the check raises `LockLost`: that transaction is rolled back and the close stops
  without writing more.
- **A barrier.** On PostgreSQL every transaction of a close holds a shared transaction
  lock on a second advisory key; a close that takes over the lock waits on that key
  until every transaction of the previous holder has ended before it runs a step. On
  SQLite writers queue on the database's own write lock, which the token's write needs.

Together: a second close never runs a step while a transaction of the first is open,
and nothing the first does after the second took over is committed.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.orm import Session

from billing_core.store.engine import database_url, get_engine, safe_url
from billing_core.store.models import StoreLock

# pg_advisory_lock keys: the bytes of "billclos" and "billfenc" as signed 64-bit integers.
ADVISORY_KEY = int.from_bytes(b"billclos", "big", signed=True)
BARRIER_KEY = int.from_bytes(b"billfenc", "big", signed=True)
POLL_SECONDS = 1.0
LOCK_NAME = "close"


class CloseLocked(RuntimeError):
    """Another close holds the store."""


class LockLost(RuntimeError):
    """This close no longer holds the store's lock: it must not write more."""


def describe_holder(holder: dict | None) -> str:
    if not holder:
        return "another close"
    return (
        f"{holder.get('holder', 'another close')} on {holder.get('host', '?')} "
        f"(pid {holder.get('pid', '?')}, since {holder.get('since', '?')})"
    )


@dataclass(frozen=True)
class Fence:
    """What a close's transactions check before they commit."""

    text: str  # the store's URL as configured (its engine's key)
    token: str
    # PostgreSQL: the backend holding the advisory lock. SQLite: the lock file and the
    # inode of the file that was locked.
    backend: int | None = None
    path: str | None = None
    inode: int | None = None

    @cached_property
    def url(self) -> URL:
        return make_url(self.text)

    @property
    def postgres(self) -> bool:
        return self.url.drivername.startswith("postgresql")

    def applies_to(self, session: Session) -> bool:
        bind = session.get_bind()
        return bind.url == self.url

    def check(self, connection: Connection) -> None:
        """Raise LockLost unless the store's lock is still this close's."""
        table = StoreLock.__table__
        stmt = sa.select(table.c.holder).where(table.c.name == LOCK_NAME)
        if self.postgres:
            stmt = stmt.with_for_update(read=True)
        row = connection.execute(stmt).scalar()
        holder = _parse(row)
        if holder.get("token") != self.token:
            raise LockLost(
                "this close lost the store's lock: "
                + (
                    f"{describe_holder(holder)} holds it now"
                    if holder
                    else "no close holds it any more"
                )
                + "; it stopped without writing more"
            )
        if self.postgres:
            hi, lo = advisory_key_parts(ADVISORY_KEY)
            held = connection.execute(
                sa.text(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                    "AND classid = :hi AND objid = :lo AND objsubid = 1 AND granted "
                    "AND pid = :pid AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database()))"
                ),
                {"hi": hi, "lo": lo, "pid": self.backend},
            ).scalar()
            if not held:
                raise LockLost(
                    "this close lost the store's lock (the connection holding it, backend "
                    f"{self.backend}, was closed); it stopped without writing more"
                )
        else:
            try:
                inode = os.stat(self.path).st_ino  # type: ignore[arg-type]
            except OSError:
                inode = None
            if inode != self.inode:
                raise LockLost(
                    f"this close lost the store's lock (its lock file {self.path} was "
                    "removed or replaced); it stopped without writing more"
                )


_current: ContextVar[Fence | None] = ContextVar("billing_close_fence", default=None)


@contextmanager
def fenced(fence: Fence | None) -> Iterator[None]:
    """Check `fence` at every commit of this context's sessions (None: check nothing)."""
    token = _current.set(fence)
    try:
        yield
    finally:
        _current.reset(token)


def unfenced() -> AbstractContextManager[None]:
    """Commit without the check: a close's record of its own failure."""
    return fenced(None)


def check_held() -> None:
    """Raise LockLost now if this context's close has lost its lock (before a step)."""
    fence = _current.get()
    if fence is None:
        return
    with get_engine(fence.text).connect() as connection:
        fence.check(connection)


@event.listens_for(Session, "after_begin")
def _enter_barrier(session: Session, transaction, connection: Connection) -> None:
    fence = _current.get()
    if fence is None or session.info.get("fence") is fence or not fence.applies_to(session):
        return
    session.info["fence"] = fence
    if fence.postgres:
        connection.execute(
            sa.text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": BARRIER_KEY}
        )


@event.listens_for(Session, "after_rollback")
@event.listens_for(Session, "after_commit")
def _leave_barrier(session: Session) -> None:
    session.info.pop("fence", None)


@event.listens_for(Session, "before_commit")
def _check_fence(session: Session) -> None:
    fence = session.info.get("fence")
    if fence is None or _current.get() is not fence:
        return
    fence.check(session.connection())


# --- taking the lock ----------------------------------------------------------------------


def _parse(value: str | None) -> dict:
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def advisory_key_parts(key: int) -> tuple[int, int]:
    """An advisory bigint key as pg_locks shows it: (classid, objid), high and low halves."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


@contextmanager
def close_lock(
    holder: str, timeout: float = 0.0, url: str | None = None, run: str | None = None
) -> Iterator[Fence]:
    """Hold the store's close lock; wait up to `timeout` seconds, then refuse clearly.

    Inside the block, every commit of a session on this store checks the lock is still
    held. `run` (a flow-run id) lets the close's tasks on other processes find the fence.
    """
    url = database_url(url)
    me = {
        "holder": holder[:80],
        "host": socket.gethostname()[:64],
        "pid": os.getpid(),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
        "token": secrets.token_hex(8),
    }
    if run:
        me["run"] = run
    locker = _file_lock if url.startswith("sqlite") else _advisory_lock
    with locker(url, me, timeout) as fence, fenced(fence):
        yield fence


def join_close(run: str | None, url: str | None = None) -> AbstractContextManager[None]:
    """In a close's task: the fence of the close this flow run holds (found in the store
    when the task runs in another process), checked at every commit."""
    if _current.get() is not None or not run:
        return fenced(_current.get())
    url = database_url(url)
    table = StoreLock.__table__
    with get_engine(url).connect() as connection:
        holder = _parse(
            connection.execute(sa.select(table.c.holder).where(table.c.name == LOCK_NAME)).scalar()
        )
    if holder.get("run") != run:
        raise LockLost(
            f"flow run {run} does not hold the store's close lock "
            f"({describe_holder(holder) if holder else 'no close'} holds it); "
            "this step stopped without writing"
        )
    return fenced(
        Fence(
            url,
            holder["token"],
            backend=holder.get("backend"),
            path=holder.get("path"),
            inode=holder.get("inode"),
        )
    )


def _refuse(url: str, holder: dict | None, timeout: float) -> CloseLocked:
    waited = f"after waiting {timeout:g} s" if timeout else "without waiting"
    return CloseLocked(
        f"another close is running on store {safe_url(url)}: {describe_holder(holder)}. "
        f"This close stops {waited}; retry it when that one has finished "
        "(set BILLING_CLOSE_LOCK_TIMEOUT to wait longer)."
    )


def _write_holder(connection: Connection, me: dict, postgres: bool) -> None:
    table = StoreLock.__table__
    values = {"name": LOCK_NAME, "holder": json.dumps(me), "acquired_at": datetime.now(UTC)}
    if postgres:
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(table).values(**values)
    connection.execute(
        stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={"holder": stmt.excluded.holder, "acquired_at": stmt.excluded.acquired_at},
        )
    )


def _release_holder(connection: Connection, token: str) -> None:
    """Remove the row if it is still this close's (a successor's row stays)."""
    table = StoreLock.__table__
    row = connection.execute(sa.select(table.c.holder).where(table.c.name == LOCK_NAME)).scalar()
    if _parse(row).get("token") == token:
        connection.execute(sa.delete(table).where(table.c.name == LOCK_NAME))


@contextmanager
def _file_lock(url: str, me: dict, timeout: float) -> Iterator[Fence]:
    path = Path(url.removeprefix("sqlite:///") + ".close-lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _parse(handle.read() or None)
            handle.close()
            if time.monotonic() >= deadline:
                raise _refuse(url, holder, timeout) from None
            time.sleep(POLL_SECONDS)
            continue
        # The file may have been removed and another made since it was opened: the lock
        # only counts on the file that is at the path now.
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    inode = os.fstat(handle.fileno()).st_ino
    me = {**me, "path": str(path), "inode": inode}
    fence = Fence(url, me["token"], path=str(path), inode=inode)
    engine = get_engine(url)
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(me))
        handle.flush()
        # The new token: queued behind any open write transaction of a previous holder.
        with engine.begin() as connection:
            _write_holder(connection, me, postgres=False)
        yield fence
    finally:
        try:
            with engine.begin() as connection:
                _release_holder(connection, me["token"])
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


@contextmanager
def _advisory_lock(url: str, me: dict, timeout: float) -> Iterator[Fence]:
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
                    sa.select(table.c.holder).where(table.c.name == LOCK_NAME)
                ).scalar()
                raise _refuse(url, _parse(row) or None, timeout)
            time.sleep(POLL_SECONDS)
        backend = connection.execute(sa.select(sa.func.pg_backend_pid())).scalar()
        me = {**me, "backend": backend}
        try:
            # The new token first: a previous holder's transaction that is committing
            # holds the row FOR SHARE, so this waits for it; any later commit of the
            # previous holder fails its check.
            _write_holder(connection, me, postgres=True)
            _barrier(connection, url, timeout)
            yield Fence(url, me["token"], backend=backend)
        finally:
            _release_advisory(connection, me["token"])
    finally:
        with suppress(sa.exc.DBAPIError):
            connection.close()


def _barrier(connection: Connection, url: str, timeout: float) -> None:
    """Wait until every transaction of a previous holder has ended (each holds the barrier
    key shared); then let this close's own transactions take it."""
    deadline = time.monotonic() + timeout
    while not connection.execute(sa.select(sa.func.pg_try_advisory_lock(BARRIER_KEY))).scalar():
        if time.monotonic() >= deadline:
            raise CloseLocked(
                f"a previous close's transaction is still open on store {safe_url(url)} "
                "although that close no longer holds the lock; this close stops rather than "
                "run beside it (set BILLING_CLOSE_LOCK_TIMEOUT to wait for it to end)."
            )
        time.sleep(min(POLL_SECONDS, 0.1))
    connection.execute(sa.select(sa.func.pg_advisory_unlock(BARRIER_KEY)))


def _release_advisory(connection: Connection, token: str) -> None:
    """Give the lock back; a connection that was terminated has given it back already."""
    try:
        _release_holder(connection, token)
        connection.execute(sa.select(sa.func.pg_advisory_unlock(ADVISORY_KEY)))
    except sa.exc.DBAPIError as error:
        if not error.connection_invalidated and not isinstance(error, sa.exc.OperationalError):
            raise
