"""The close's usage-collection step: pull from the configured sources (`SOURCES`).

- Inbox folder (`BILLING_USAGE_INBOX`): every CSV or JSON Lines file is loaded once, then
  moved to `archive/`; a file with bad rows is moved to `rejected/` with a `.errors.txt`
  beside it naming each row, and nothing of it is loaded.
- SQL source (`BILLING_USAGE_SQL_URL` + `BILLING_USAGE_SQL_QUERY`): read incrementally by a
  watermark (see `sql_source`).

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


def collect_inbox(
    inbox: Path, close_run_id: int | None, report: StepReport, session: Session | None = None
) -> None:
    """Load each new inbox file once, archive it; reject a bad file whole. With a dry
    run's `session`: loaded into it, and every file left where it is."""
    archive, rejected = inbox / "archive", inbox / "rejected"
    files = sorted({p for pattern in INBOX_PATTERNS for p in inbox.glob(pattern)})
    u = UsageLoad.__table__.c
    for path in files:
        key = f"{path.name}:{_digest(path)}"

        def load(into, path=path, key=key):
            seen = into.execute(sa.select(u.id).where(u.source == "inbox", u.key == key)).first()
            if seen is not None:
                return None
            result = ingest_files(into, [path], source="inbox")
            # Loaded under its content's key: the same file dropped again is skipped.
            # (The session does not autoflush: write the load row before renaming it.)
            into.flush()
            into.execute(
                sa.update(UsageLoad.__table__)
                .where(u.source == "inbox", u.key == str(path))
                .values(key=key, close_run_id=close_run_id)
            )
            return result

        try:
            result = retrying_deadlocks(load, session)
        except UsageRefused as refused:
            if session is not None:
                report.warnings.append(
                    f"inbox file {path.name} would be refused ({len(refused.problems)} bad "
                    f"row(s)): {refused.summary}"
                )
                report.details["rejected_files"] = report.details.get("rejected_files", 0) + 1
                continue
            rejected.mkdir(parents=True, exist_ok=True)
            target = rejected / path.name
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
            continue
        if result is not None:
            report.read += result.read
            report.written += result.loaded
            report.details["duplicates"] = report.details.get("duplicates", 0) + result.duplicates
        report.details["files"] = report.details.get("files", 0) + 1
        if session is not None:
            continue
        archive.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), archive / path.name)


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
