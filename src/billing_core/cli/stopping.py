"""SIGTERM stops a command that runs a close promptly and cleanly: the close stops where it
is (its flow run ends Crashed, `close_runs` records it as stopped, the store's close lock
is given back), the command says so in one line and exits with 143 (128 + SIGTERM).

Prefect's engine turns a SIGTERM during a flow run into a crash of the run, then sends the
signal again to the handler that was there before it: this one, which raises `Stopped`.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from billing_core.cli.common import err

EXIT_CODE = 128 + signal.SIGTERM


class Stopped(KeyboardInterrupt):
    """The command was sent SIGTERM."""


def _raise_stopped(signum, frame) -> None:
    raise Stopped()


@contextmanager
def stops_on_sigterm(what: str) -> Iterator[None]:
    """Run `what` (e.g. "close through 2026-02-01"); on SIGTERM, stop it and exit."""
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        yield
    except Stopped:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop is enough
        err.print(
            f"{what} stopped (SIGTERM): the steps that finished are kept, the store's close "
            "lock is released and the close is recorded as stopped; close again to finish it"
        )
        _exit_now(EXIT_CODE)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_now(code: int) -> None:
    """Exit with `code` without waiting for threads that are still asleep (a step's retry
    delay in a task runner's thread): they hold nothing the close needs. What exiting
    normally would do for Prefect is done first: its log lines sent to the API, a
    temporary Prefect server stopped."""
    sys.stdout.flush()
    sys.stderr.flush()
    main = threading.main_thread()
    waiting = [t for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]
    if not waiting:
        raise SystemExit(code)
    try:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)
    except Exception:  # noqa: BLE001, S110 - the logs are a courtesy; the exit is not
        pass
    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
