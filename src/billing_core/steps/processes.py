"""The close's family steps over this machine's cores.

Consolidation and rendering are mostly the interpreter's own work (the invoices and their
lines; Jinja for a preview, WeasyPrint for a PDF), so threads share one core. When the
close's steps run on threads (the default task runner, one shard), such a step with
enough to do splits its families into parts of similar work (customers; for the
documents, what each family has to write: `shards.render_weights`; a family is never
split) and runs every part but the first in a process forked from this one, the first
here, at the same time. (Rating and credits stay in one process: split in two, each part
repeats the reference reads and the usage queries, and rating took longer, 1.8–2.2 s
against 1.5–2.1 s on the benchmark's 10,000 customers; docs/performance.md.)

A forked process starts with the catalog, templates, fonts and settings this one has
loaded (a new process would spend about a second importing them) and runs its part as a
shard does on a Dask worker: in its own unit of work, written in its own commit, fenced
by the close's lock, its failing families isolated; its report comes back through a pipe
and the reports are summed. On PostgreSQL only: a SQLite store
takes one writer at a time, from the start of each unit of work, so the parts would only
take turns.

A forked process takes nothing from this one but memory: it opens its own database
connections (the inherited ones are left untouched, never closed), puts the default
action back on SIGTERM and SIGINT, and ends with `os._exit` once its report is written,
running none of this process's exit handlers. A failure in a part is the step's failure,
as it would be in one process: the error a part raised, or one line saying how a process
ended without a report; if this process's own part fails, the others are stopped.

More machines are Prefect's task runners' business (Dask, BILLING_TASK_RUNNER=dask): each
worker is then a process of its own, and nothing is forked.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterable
from datetime import date

from billing_core.config import get_settings
from billing_core.report import StepReport
from billing_core.steps import collector
from billing_core.steps.shards import DOCUMENT_ROWS, balanced, customer_weights, render_weights
from billing_core.store import engine as engines

# Less work than this stays in one process: a fork and a second connection cost more than
# they save on some 200 previews (in DOCUMENT_ROWS a document plus its rows), or on
# consolidating some 1,000 customers.
DOCUMENTS_FROM = 200 * DOCUMENT_ROWS
CUSTOMERS_FROM = 1_000


class PartFailed(RuntimeError):
    """A forked part of a step ended without a report, or with an error that could not
    be sent back as it was."""


def parts(
    families: Iterable[str] | None,
    weigh: Callable[[list[str] | None], dict[str, int]],
    least: int,
) -> list[list[str] | None]:
    """The families a step runs in each process: one part (`families` as given) unless the
    machine, the store, the task runner and the work make more worth it. `weigh` gives
    each family's work (of the families given, else every one); less than `least` in all
    stays in one part."""
    settings = get_settings()
    count = min(settings.processes, os.cpu_count() or 1)
    given = None if families is None else list(families)
    if count <= 1 or not hasattr(os, "fork") or settings.task_runner != "threads":
        return [given]
    if settings.shards > 1:  # the shards' threads run side by side already
        return [given]
    if not engines.database_url().startswith("postgresql"):
        # SQLite: every unit of work takes the one write lock when it begins (BEGIN
        # IMMEDIATE), so the parts would run one after the other.
        return [given]
    weights = weigh(given)
    if sum(weights.values()) < least:
        return [given]
    split = balanced(weights, count)
    return split if len(split) > 1 else [given]


def render_parts(
    through: date | None, families: Iterable[str] | None, invoice_ids: list[int] | None = None
) -> list[list[str] | None]:
    """The render step's parts, weighed by the documents each family has to write."""
    return parts(
        families, lambda given: render_weights(through, given, invoice_ids), DOCUMENTS_FROM
    )


def customer_parts(through: date | None, families: Iterable[str] | None) -> list[list[str] | None]:
    """Consolidation's parts, weighed by customers."""
    return parts(families, customer_weights, CUSTOMERS_FROM)


def forked(work: list[Callable[[], StepReport]]) -> StepReport:
    """Run `work[0]` here and every other in a process forked from this one, at the same
    time; their reports summed. Raises the first failure (this process's first)."""
    children: list[_Child] = []
    try:
        for part in work[1:]:
            children.append(_Child.start(part))
        report = work[0]()
    except BaseException:
        for child in children:
            child.stop()
        raise
    failure: BaseException | None = None
    for child in children:
        try:
            report = report.merge(child.report())
        except Exception as error:  # noqa: BLE001 - every child is waited for first
            failure = failure or error
    if failure is not None:
        raise failure
    return report


class _Child:
    """A process forked to run one part; its outcome comes back through a pipe."""

    def __init__(self, pid: int, pipe: int) -> None:
        self.pid = pid
        self.pipe = pipe

    @classmethod
    def start(cls, part: Callable[[], StepReport]) -> _Child:
        read, write = os.pipe()
        parent = os.getpid()
        with warnings.catch_warnings():
            # Python 3.12 and later warn of a fork in a process with threads: the child
            # uses none of their locks (the module's docstring says what it resets).
            warnings.filterwarnings("ignore", "This process .* use of fork", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: it never returns from here
            try:
                os.close(read)
                _fresh_start(parent)
                with os.fdopen(write, "wb") as pipe:
                    pipe.write(_outcome(part))
            finally:
                os._exit(0)
        os.close(write)
        return cls(pid, read)

    def report(self) -> StepReport:
        """The part's report, once it has ended; raises what it raised."""
        with os.fdopen(self.pipe, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(self.pid, 0)
        if not data:
            raise PartFailed(f"the process running a part of the step {_ended(status)}")
        kind, value = pickle.loads(data)  # noqa: S301 - written by our own child
        if kind == "error":
            raise value
        return StepReport.from_dict(value)

    def stop(self) -> None:
        """Stop the part (this process's own part failed) and wait for it to end."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        os.close(self.pipe)
        os.waitpid(self.pid, 0)


def _outcome(part: Callable[[], StepReport]) -> bytes:
    """What a part sends back: its report (with the process's peak memory,
    `forked_peak_rss_mb`), or the error it raised (as a `PartFailed` of its text when the
    error itself cannot be pickled)."""
    try:
        report = part()
        # Its peak memory (the pages it shares with this process counted too).
        report.details["forked_peak_rss_mb"] = _peak_rss_mb()
        return pickle.dumps(("report", report.as_dict()))
    except BaseException as error:  # noqa: BLE001 - sent to the parent, raised there
        try:
            return pickle.dumps(("error", error))
        except Exception:  # noqa: BLE001 - an error that does not pickle: its text
            return pickle.dumps(("error", PartFailed(f"{type(error).__name__}: {error}")))


def _fresh_start(parent: int) -> None:
    """In a forked child: its own signals, locks and database connections; stopped with
    its parent (a close stopped by SIGTERM or killed ends at once, without waiting for
    its parts: a part left running could only fail at its commit, the close's lock gone)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _stopped_with_parent()
    if os.getppid() != parent:  # the parent ended before that was asked
        os._exit(1)
    # Locks another thread of the parent may have held at the fork.
    engines._engines_lock = threading.Lock()
    collector._lock = threading.Lock()
    for engine in list(engines._engines.values()):
        # The parent's connections stay the parent's: kept referenced, never closed here.
        _inherited.append(engine.pool)
        engine.dispose(close=False)


_inherited: list[object] = []

PR_SET_PDEATHSIG = 1


def _stopped_with_parent() -> None:
    """Ask Linux for SIGTERM when the parent ends (elsewhere: nothing asked)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    # Without prctl, the part runs to its end.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _peak_rss_mb() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def _ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was stopped by signal {os.WTERMSIG(status)} before it reported"
    return f"ended (exit status {os.waitstatus_to_exitcode(status)}) without a report"
