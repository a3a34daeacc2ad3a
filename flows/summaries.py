"""What the operator reads of each step of a close, as the step finishes: a markdown
artifact per step (money per currency first, then counts, warnings, families that failed),
keyed by its task's name in step order (`1-recalculate-schedules` … `7-render-invoices`),
and the step's report recorded on the close's row in `close_runs`.

A step a Retry found cached says so, and from which attempt: its figures are that
attempt's, the step did not run again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from prefect.artifacts import create_markdown_artifact
from prefect.states import State

from billing_core.domain.money import money_str
from billing_core.steps.close import STEPS
from flows.runtime import attempt, md

# Each step's artifact key: its position in the close, then its task's name. Issuing keeps
# its number when a close does not issue, so a step's key never changes.
KEYS = {step.name: f"{n}-{step.task}" for n, step in enumerate(STEPS, start=1)}
TASKS = {step.task: step.name for step in STEPS}

# Money rows, in the order they show: the row's title and the detail that counts it.
MONEY_ROWS = {
    "rated": ("rated", "charges"),
    "adjustments": ("of which late-usage adjustments", "adjustments"),
    "created": ("invoices created", "invoices_created"),
    "changed": ("invoices changed: new total", "invoices_changed"),
    "changed_from": ("invoices changed: previous total", None),
    "unchanged": ("invoices unchanged", "invoices_unchanged"),
    "removed": ("invoices removed", "invoices_removed"),
    "applied": ("credit applied to drafts", None),
    "issued": ("invoices issued", None),
}

# What the counts of each step are, in words: (detail, or the report's read, written or
# deleted; its label). A count the money table shows is not repeated.
FACTS: dict[str, list[tuple[str, str]]] = {
    "recalculate schedules": [
        ("read", "subscriptions read"),
        ("slots", "billing slots due"),
        ("waiting", "of which waiting for a later billing date"),
        ("written", "slots written"),
        ("deleted", "slots removed"),
    ],
    "collect usage": [
        ("sources", "sources"),
        ("files", "inbox files loaded"),
        ("read", "events read"),
        ("written", "events loaded"),
        ("duplicates", "duplicates skipped"),
        ("rejected_files", "inbox files refused"),
        ("refused_rows", "rows refused"),
        ("sql_watermark", "SQL source read up to"),
    ],
    "rate": [
        ("read", "billing slots rated"),
        ("windows", "usage windows aggregated"),
        ("written", "charges written"),
        ("deleted", "charges removed"),
    ],
    "consolidate roll-ups": [("read", "charges read")],
    "apply credits": [
        ("read", "drafts read"),
        ("drafts_credited", "drafts whose credit changed"),
    ],
    "issue invoices": [("written", "invoices issued")],
    "render invoices": [
        ("read", "invoices read"),
        ("documents", "documents written"),
        ("documents_unchanged", "documents unchanged"),
    ],
}
# Consolidation's outcomes show even when none of that kind happened (a zero says so).
_OUTCOMES = {"created", "changed", "unchanged", "removed"}
SHOWN = 20  # warnings and issued numbers listed; the rest counted


def artifact_key(step: str) -> str:
    """A step's artifact key, from its report's name or its task's name."""
    return KEYS[TASKS.get(step, step)]


def cached(state: State | None, report: dict, now: int) -> bool:
    """Whether a step's result came from an earlier attempt's cache."""
    made = report["details"].get("attempt") or 0
    return (state is not None and state.name == "Cached") or 0 < made < now


def summary(report: dict, through: date | str) -> str:
    """A step's summary in markdown."""
    details = report["details"]
    key = artifact_key(report["step"])
    number, task = key.split("-", 1)
    lines = [f"### {number}. {task} (through {through})", ""]
    lines += _cached_line(details)
    lines += _money_table(details)
    facts = [
        f"{label}: {_count(report, name)}"
        for name, label in FACTS.get(report["step"], [])
        if _count(report, name) is not None
    ]
    lines += [f"- {md(fact)}" for fact in facts]
    issued = details.get("issued") or []
    if issued:
        more = f" and {len(issued) - SHOWN} more" if len(issued) > SHOWN else ""
        lines.append(f"- numbers: {md(', '.join(map(str, issued[:SHOWN])))}{more}")
    missing = details.get("documents_missing") or []
    if missing:
        lines.append(f"- **documents not written: {len(missing)}** (see the warnings)")
    lines += ["", _footer(report)]
    lines += _warnings(report["warnings"])
    if report.get("failures"):
        lines += ["", "**Families left as they were**", "", "| family | reason |", "|---|---|"]
        lines += [f"| {md(f)} | {md(why)} |" for f, why in sorted(report["failures"].items())]
    return "\n".join(lines)


def failed_summary(task: str, error: BaseException, through: date | str, now: int) -> str:
    number, _ = artifact_key(task).split("-", 1)
    return "\n".join(
        [
            f"### {number}. {task} (through {through})",
            "",
            f"**Failed on attempt {now}:** {md(error)}",
            "",
            "The steps before it are done and kept. Fix the cause, then Retry this flow "
            "run: the completed steps are cached, this one runs again.",
        ]
    )


def _cached_line(details: dict) -> list[str]:
    source = details.get("cached_from")
    if source is None:
        return []
    attempt_text = f"attempt {source}" if source else "an earlier attempt"
    shards = details.get("cached_shards")
    if shards:
        return [
            f"**{shards} of {details.get('shards', shards)} shards cached from "
            f"{attempt_text} (not run again)**; the others ran on attempt "
            f"{details.get('attempt')}.",
            "",
        ]
    return [f"**Cached from {attempt_text} (not run again):** the figures are that attempt's.", ""]


def _money_table(details: dict) -> list[str]:
    money: dict[str, dict[str, str]] = details.get("money") or {}
    rows = [
        (label, title, count)
        for label, (title, count) in MONEY_ROWS.items()
        if label in money or (count is not None and count in details and label in _OUTCOMES)
    ]
    if not rows:
        return []
    currencies = sorted({c for amounts in money.values() for c in amounts})
    counted = any(count is not None for _, _, count in rows)
    head = ["", *(["count"] if counted else []), *currencies]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for label, title, count in rows:
        cells = [title]
        if counted:
            cells.append(str(details.get(count, "")) if count else "")
        amounts = money.get(label, {})
        cells += [money_str(Decimal(amounts[c]), c) if c in amounts else "" for c in currencies]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _count(report: dict, name: str) -> Any:
    if name in ("read", "written", "deleted"):
        return report[name]
    return report["details"].get(name)


def _footer(report: dict) -> str:
    details = report["details"]
    parts = []
    if details.get("attempt"):
        parts.append(f"computed on attempt {details['attempt']}")
    if "seconds" in details:
        parts.append(f"{details['seconds']} s")
    if (details.get("shards") or 1) > 1:
        parts.append(f"{details['shards']} shards")
    if (details.get("processes") or 1) > 1:
        parts.append(f"{details['processes']} processes")
    parts.append(
        f"rows read {report['read']}, written {report['written']}, removed {report['deleted']}"
    )
    return "_" + " · ".join(parts) + "_"


def _warnings(warnings: list[str]) -> list[str]:
    if not warnings:
        return []
    lines = ["", f"**Warnings ({len(warnings)})**", ""]
    lines += [f"- {md(w)}" for w in warnings[:SHOWN]]
    if len(warnings) > SHOWN:
        lines.append(
            f"- … and {len(warnings) - SHOWN} more (in the step's log and `close_runs.steps`)"
        )
    return lines


@dataclass
class StepLog:
    """A close's steps as they finish: each report is recorded on the close's row in
    `close_runs` and published as its step's artifact, at once, so that a run that fails
    later still shows what the steps before did."""

    through: date
    run_id: int | None = None
    now: int = field(default_factory=attempt)
    reports: list[dict] = field(default_factory=list)

    def done(self, report: dict, states: list[State | None], parts: list[dict] | None = None):
        """A step finished: `states` are its task runs' (one per shard), `parts` the
        shards' own reports (when `report` merges them)."""
        parts = parts or [report]
        from_cache = [
            p["details"].get("attempt") or 0
            for state, p in zip(states, parts, strict=True)
            if cached(state, p, self.now)
        ]
        if from_cache:
            report["details"]["cached_from"] = min(from_cache)
            if len(from_cache) < len(parts):
                report["details"]["cached_shards"] = len(from_cache)
        if self.run_id is not None:
            from billing_core.steps import close_runs

            close_runs.record_steps(self.run_id, [report])
        create_markdown_artifact(
            key=artifact_key(report["step"]),
            markdown=summary(report, self.through),
            description=f"{report['step']} through {self.through}: what the step did",
        )
        self.reports.append(report)
        return report

    def failed(self, task: str, error: BaseException) -> None:
        """A step failed: its artifact says so, in one line."""
        create_markdown_artifact(
            key=artifact_key(task),
            markdown=failed_summary(task, error, self.through, self.now),
            description=f"{task} through {self.through}: failed",
        )
