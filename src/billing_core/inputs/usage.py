"""Usage: streamed, validated, idempotent ingestion.

Files are read row by row (`usage_csv`, `usage_json`), each record validated
(`usage_validate`) and written in batches (`usage_write`: COPY on PostgreSQL, multi-row
inserts on SQLite) inside one transaction, so a refused file leaves nothing behind and
memory does not grow with the file. CSV files are read in blocks instead (`usage_blocks`):
a block every row of which passes the vectorised checks (`usage_vector`) is validated and
written at once, any other block row by row as above. Aggregation is
`store.usage_totals.aggregate`.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlmodel import Session

from billing_core.inputs.usage_blocks import Batch, read_csv_parts
from billing_core.inputs.usage_csv import read_csv
from billing_core.inputs.usage_json import read_jsonl
from billing_core.inputs.usage_validate import load_reference
from billing_core.inputs.usage_write import Writer
from billing_core.store import postgres
from billing_core.store.files import SafeCsvWriter
from billing_core.store.models import UsageLoad
from billing_core.store.postgres import is_deadlock

DEADLOCK_ATTEMPTS = 4


@dataclass(frozen=True)
class Problem:
    """One refused row: where, which field, why."""

    file: str
    row: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: row {self.row}: {self.field}: {self.reason}"


class UsageRefused(ValueError):
    """Usage files refused whole (nothing was written)."""

    def __init__(self, summary: str, problems: list[Problem]):
        super().__init__(summary)
        self.summary = summary
        self.problems = problems


@dataclass
class FileCounts:
    """What one file (one named source) of a load brought: its rows read, new events,
    events already stored (or earlier in the load) and rows rejected."""

    name: str
    read: int = 0
    loaded: int = 0
    duplicates: int = 0
    rejected: int = 0


@dataclass
class IngestResult:
    files: int = 0
    read: int = 0
    loaded: int = 0
    duplicates: int = 0
    rejected: int = 0
    problems: list[Problem] = field(default_factory=list)
    # Files that cannot be read (a refused header, an unclosed quote): the load is refused
    # even when invalid rows may be skipped.
    unreadable: int = 0
    # Each file's own counts, in order; they add up to the totals above.
    per_file: list[FileCounts] = field(default_factory=list)
    # The usage_loads rows `ingest_files` added (one per file, not yet flushed).
    loads: list[UsageLoad] = field(default_factory=list)
    # Of the events loaded, those earlier than `count_before` (the SQL source's late rows).
    loaded_before: int = 0


# Readers yield (row number, record). A record the reader already refuses carries the
# reason under "__invalid__" and the field under "__field__" (default "row"); one with
# "__unreadable__" refuses its whole file. The usual row costs no more than it did before the
# door's checks: a file's bytes are scanned once up front (ASCII, UTF-8, NUL), and only a
# file or line that could hold a problem goes through the slower, careful reading.


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, raw record) pairs; the CSV header is row 1, a JSON line its line."""
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        yield from read_jsonl(path)
    else:
        yield from read_csv(path)


# CSV files are read in blocks (`usage_blocks`), and a block every row of which is valid is
# validated and written at once (`usage_vector`): the same events, counts and messages as
# row by row, at a fraction of the cost. False: every file row by row (`read_rows`).
BATCHES = True


def read_parts(path: Path) -> Iterator[tuple[int, dict[str, Any]] | Batch]:
    """`read_rows`, but with runs of plain CSV rows as one `Batch` each."""
    if not BATCHES or path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        yield from read_rows(path)
    else:
        yield from read_csv_parts(path)


def refresh_statistics(loaded: int) -> None:
    """After a bulk load has committed, let PostgreSQL's planner see the new events.

    Without fresh statistics the planner takes a just-loaded table for a small one and
    rates a period with an index nested loop ten times slower than its hash join. Run
    outside the load's transaction, so that concurrent loads do not queue on its lock.
    """
    if loaded < 10_000:
        return  # autovacuum catches up with small loads soon enough
    from billing_core.store.engine import get_engine

    postgres.analyze(get_engine(), "usage_events, usage_buckets, usage_bucket_values")


def retrying_deadlocks(load, session: Session | None = None):
    """Run `load(session)` in a unit of work of its own and commit it. Two loads that
    share new event ids insert them in different orders and can deadlock on the events'
    key (each waits for a row the other wrote); PostgreSQL then aborts one. That one is
    rolled back whole and run again alone (every load holds LOAD_KEY shared; the retry
    holds it exclusively, after the others), so it cannot deadlock again. Idempotency by
    event id makes the retry count each event once.

    With `session` (a dry run's, never committed): the load runs once inside it, in a
    savepoint that a refused load rolls back, and nothing is committed."""
    from billing_core.store.engine import unit_of_work

    if session is not None:
        with session.begin_nested():
            return load(session)
    for attempt in range(DEADLOCK_ATTEMPTS):
        with unit_of_work() as session:
            session.info["load_alone"] = attempt > 0
            try:
                result = load(session)
                session.commit()
                return result
            except Exception as error:
                if not is_deadlock(error) or attempt == DEADLOCK_ATTEMPTS - 1:
                    raise
    raise AssertionError("unreachable")


def ingest_records(
    session: Session,
    sources: Iterable[tuple[str, Iterable[tuple[int, dict[str, Any]] | Batch]]],
    *,
    skip_invalid: bool = False,
    source: str = "cli",
    rejects: Any = None,
    count_before: datetime | None = None,
) -> IngestResult:
    """Validate and write records from several named sources as one all-or-nothing load.

    With `skip_invalid`, bad rows are left out (and written to `rejects`, a CSV writer);
    otherwise any bad row refuses everything. Each source's own counts are in `per_file`;
    with `count_before`, `loaded_before` counts the new events earlier than it. The caller
    commits. A source may yield a `Batch` (rows read together) in place of its rows: it
    counts, and is refused or written, as its rows one by one would be.
    """
    postgres.lock_usage_load(session)
    validator = load_reference(session)
    writer = Writer(session, source, before=count_before)
    result = IngestResult()
    checks = None  # the validator's checks over a whole batch, once a batch comes
    try:
        for name, records in sources:
            if result.per_file:
                writer.mark()  # the files before are counted apart from this one
            result.files += 1
            counts = FileCounts(name, read=result.read, rejected=result.rejected)
            for item in records:
                if item.__class__ is Batch:  # rows read together (usage_blocks)
                    if checks is None:
                        from billing_core.inputs.usage_vector import VectorChecks

                        checks = VectorChecks(validator)
                    events = checks.events(item)
                    if events is not None:  # every row valid, as the row path would find
                        result.read += events.rows
                        if not result.problems or (skip_invalid and not result.unreadable):
                            writer.add_events(events)
                        continue
                    rows = item.records()  # some row is not: the row path, for them all
                else:
                    rows = (item,)
                for number, record in rows:
                    result.read += 1
                    row, problem = validator.event(record)
                    if problem is not None:
                        _refuse(result, name, number, record, problem, rejects)
                        continue
                    if result.problems and (not skip_invalid or result.unreadable):
                        continue  # refused anyway: keep validating, stop writing
                    writer.add(row)
            counts.read = result.read - counts.read
            counts.rejected = result.rejected - counts.rejected
            result.per_file.append(counts)
    except BaseException:
        writer.abandon()
        raise
    if result.problems and (not skip_invalid or result.unreadable):
        writer.close()
        advice = (
            "fix them; a file that cannot be read is refused even with --skip-invalid"
            if result.unreadable
            else "fix them, or pass --skip-invalid REJECTS_FILE"
        )
        raise UsageRefused(
            f"{len(result.problems)} invalid row(s) in {result.files} file(s); nothing was "
            f"loaded ({advice})",
            result.problems,
        )
    result.loaded = writer.finish()
    result.loaded_before = writer.loaded_before
    result.duplicates = result.read - result.rejected - result.loaded
    # An event in two files of the load is new in the first: the writer counts the events
    # loaded up to each file's end, after the batches before it were written.
    start = 0
    for counts, end in zip(result.per_file, [*writer.marks, result.loaded], strict=True):
        counts.loaded, start = end - start, end
        counts.duplicates = counts.read - counts.rejected - counts.loaded
    return result


def _refuse(
    result: IngestResult,
    name: str,
    number: int,
    record: dict[str, Any],
    problem: tuple[str, str],
    rejects: Any,
) -> None:
    """Count a refused record, name it, and write it to `rejects` (if any)."""
    result.rejected += 1
    if "__unreadable__" in record:
        result.unreadable += 1
    issue = Problem(name, number, problem[0], problem[1])
    result.problems.append(issue)
    if rejects is not None:
        rejects.writerow(
            [
                name,
                number,
                issue.field,
                issue.reason,
                json.dumps(record, default=str),
            ]
        )


# Byte order marks of the Unicode encodings other than UTF-8 that spreadsheets write
# ("Unicode text" is UTF-16), longest first (UTF-32 LE's begins with UTF-16 LE's).
_OTHER_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def other_encoding(start: bytes) -> str | None:
    """The encoding a file's first bytes mark it as, when it is not UTF-8: read as UTF-8
    its every other byte is a NUL, and each row would be refused for it."""
    for bom, name in _OTHER_BOMS:
        if start.startswith(bom):
            return name
    return None


def ingest_files(
    session: Session, paths: list[Path], *, rejects_path: Path | None = None, source: str = "cli"
) -> IngestResult:
    """Ingest CSV or JSON Lines files as one load; see `ingest_records`."""
    for path in paths:
        if path.is_dir():
            raise UsageRefused(f"{path}: is a folder; name the usage files in it", [])
        if not path.is_file():
            raise UsageRefused(f"{path}: no such file", [])
        try:
            with path.open("rb") as handle:
                start = handle.read(4)
        except OSError as error:
            raise UsageRefused(f"{path}: cannot be read ({error.strerror})", []) from None
        encoding = other_encoding(start)
        if encoding is not None:
            raise UsageRefused(
                f"{path}: encoded as {encoding} (it starts with its byte order mark), not "
                "UTF-8; save it as UTF-8 (in a spreadsheet: CSV UTF-8)",
                [],
            )
    handle = None
    rejects = None
    try:
        if rejects_path is not None:
            try:
                handle = rejects_path.open("w", newline="", encoding="utf-8")
            except OSError as error:
                raise UsageRefused(
                    f"{rejects_path}: the rejects file cannot be written ({error.strerror})", []
                ) from None
            rejects = SafeCsvWriter(csv.writer(handle))  # it echoes the files' own text
            rejects.writerow(["file", "row", "field", "reason", "record"])
        result = ingest_records(
            session,
            ((str(p), read_parts(p)) for p in paths),
            skip_invalid=rejects_path is not None,
            source=source,
            rejects=rejects,
        )
    finally:
        if handle is not None:
            handle.close()
    now = datetime.now(UTC)
    for path, counts in zip(paths, result.per_file, strict=True):
        load = UsageLoad(
            source=source,
            key=str(path),
            events_read=counts.read,
            events_loaded=counts.loaded,
            duplicates=counts.duplicates,
            rejected=counts.rejected,
            loaded_at=now,
        )
        session.add(load)
        result.loads.append(load)
    return result
