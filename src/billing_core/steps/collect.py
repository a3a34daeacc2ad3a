"""The close's usage-collection step: pull from the configured sources (`SOURCES`).

- Inbox folder (`BILLING_USAGE_INBOX`): every CSV or JSON Lines file is loaded once, then
  moved to `archive/` under a name of its own per arrival (`archive_name`); a file with
  bad rows is moved to `rejected/` under a name of its own per content (`rejected_name`)
  with a `.errors.txt` beside it naming each row, and nothing of it is loaded.
- SQL source (`BILLING_USAGE_SQL_URL` + `BILLING_USAGE_SQL_QUERY`): read incrementally by a
  watermark, a lookback window before it read again for late rows (see `sql_source`).

A dry run collects into its own session, which is never committed: every source is read
and loaded as a close would, but no file moves and no watermark is kept.
"""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.config import Settings, get_settings
from billing_core.inputs.sql_source import SqlQuery
from billing_core.inputs.usage import (
    UsageRefused,
    ingest_files,
    refresh_statistics,
    retrying_deadlocks,
)
from billing_core.report import StepReport
from billing_core.store.models import UsageLoad

INBOX_PATTERNS = ("*.csv", "*.jsonl", "*.ndjson")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# The most bytes a file name may take on common file systems (ext4, APFS, NTFS's 255 units).
NAME_BYTES = 255


def archive_name(load_id: int, digest: str, name: str) -> str:
    """An inbox file's name in archive/: `<load id>-<sha256 prefix>-<name>`, one per
    arrival. A name too long for the file system loses the end of its stem, not its
    extension."""
    return _fitted(f"{load_id}-{digest[:12]}-", name)


def rejected_name(digest: str, name: str) -> str:
    """A refused inbox file's name in rejected/: `<sha256 prefix>-<name>`. Two files of
    one name with other contents are kept apart; the same file refused again is the same
    copy."""
    return _fitted(f"{digest[:12]}-", name)


def _fitted(prefix: str, name: str) -> str:
    room = NAME_BYTES - len(prefix.encode()) - len(".errors.txt")
    if len(name.encode()) > room:
        suffix = Path(name).suffix if len(Path(name).suffix.encode()) < room else ""
        stem = name[: len(name) - len(suffix)] if suffix else name
        cut = room - len(suffix.encode())
        name = stem.encode()[:cut].decode(errors="ignore") + suffix
    return prefix + name


def collect_inbox(
    inbox: Path, close_run_id: int | None, report: StepReport, session: Session | None = None
) -> None:
    """Load each new inbox file once and archive it under a name of its own; reject a bad
    file whole. With a dry run's `session`: loaded into it, and every file left where it
    is."""
    archive, rejected = inbox / "archive", inbox / "rejected"
    files = sorted({p for pattern in INBOX_PATTERNS for p in inbox.glob(pattern)})
    u = UsageLoad.__table__.c
    for path in files:
        digest = _digest(path)
        key = f"{path.name}:{digest}"

        def load(into, path=path, key=key, digest=digest):
            seen = into.execute(sa.select(u.id).where(u.source == "inbox", u.key == key)).first()
            if seen is None:
                result = ingest_files(into, [path], source="inbox")
                [record] = result.loads
            else:
                # Loaded before under its content's key: this arrival is recorded and
                # archived, not read again.
                result = None
                record = UsageLoad(source="inbox", key=key, loaded_at=datetime.now(UTC))
                into.add(record)
            record.key, record.close_run_id = key, close_run_id
            into.flush()  # its id names the archived copy
            record.archived_as = archive_name(record.id, digest, path.name)
            return result, record.archived_as

        try:
            result, archived_as = retrying_deadlocks(load, session)
        except UsageRefused as refused:
            if session is not None:
                report.warnings.append(
                    f"inbox file {path.name} would be refused ({len(refused.problems)} bad "
                    f"row(s)): {refused.summary}"
                )
                report.details["rejected_files"] = report.details.get("rejected_files", 0) + 1
                continue
            rejected.mkdir(parents=True, exist_ok=True)
            target = rejected / rejected_name(digest, path.name)
            shutil.move(str(path), target)
            reasons = [refused.summary, *map(str, refused.problems)]
            target.with_name(target.name + ".errors.txt").write_text(
                "\n".join(reasons) + "\n", encoding="utf-8"
            )
            report.warnings.append(
                f"inbox file {path.name} refused ({len(refused.problems)} bad row(s)); "
                f"moved to {target}; reasons in {target.name}.errors.txt"
            )
            report.details["rejected_files"] = report.details.get("rejected_files", 0) + 1
            report.details["refused_rows"] = report.details.get("refused_rows", 0) + len(
                refused.problems
            )
            continue
        details = report.details
        if result is not None:
            report.read += result.read
            report.written += result.loaded
            details["duplicates"] = details.get("duplicates", 0) + result.duplicates
        else:
            details["files_already_loaded"] = details.get("files_already_loaded", 0) + 1
        if session is not None:
            details["files"] = details.get("files", 0) + 1
            continue
        archive.mkdir(parents=True, exist_ok=True)
        # After the commit: a failed load leaves the file in the inbox for the next collect.
        shutil.move(str(path), archive / archived_as)
        details["files"] = details.get("files", 0) + 1


class Inbox:
    """The inbox folder, as the collect step lists it."""

    def configured(self, settings: Settings) -> bool:
        return settings.usage_inbox is not None

    def collect(
        self,
        settings: Settings,
        close_run_id: int | None,
        report: StepReport,
        session: Session | None = None,
    ) -> None:
        inbox = Path(settings.usage_inbox)
        if inbox.is_dir():
            collect_inbox(inbox, close_run_id, report, session)
        else:
            report.warnings.append(f"usage inbox {inbox} does not exist: nothing collected")


class Source(Protocol):
    """A usage source: whether the settings name it, and one collect from it (into a dry
    run's `session` when one is given: loaded there, nothing committed, nothing moved)."""

    def configured(self, settings: Settings) -> bool: ...

    def collect(
        self,
        settings: Settings,
        close_run_id: int | None,
        report: StepReport,
        session: Session | None = None,
    ) -> None: ...


# Every usage source, in the order a collect reads them.
SOURCES: dict[str, Source] = {"inbox": Inbox(), "sql": SqlQuery()}


def collect(close_run_id: int | None = None, session: Session | None = None) -> StepReport:
    """Pull usage from every configured source; returns what each brought. With a dry
    run's `session`, into that session (see the module's docstring)."""
    settings = get_settings()
    report = StepReport("collect usage")
    configured = [source for source in SOURCES.values() if source.configured(settings)]
    for source in configured:
        source.collect(settings, close_run_id, report, session)
    if session is None:
        refresh_statistics(report.written)
    if not configured:
        report.details["sources"] = "none configured (usage arrives by `billing usage ingest`)"
    report.details.setdefault("collected_at", datetime.now(UTC).isoformat())
    return report
