"""What a step did: rows read and written, warnings, details for the operator.

Money a step handled is kept in `details["money"]`: {label: {currency: amount}}, the
amounts as decimal strings (the report is stored as JSON), summed when shards merge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

# Details that say when a report was made, not how much was done: shards keep the latest.
LATEST = frozenset({"attempt"})


def add_money(totals: dict[str, Decimal], currency: str, amount: Decimal) -> None:
    """Add an amount to a running total per currency."""
    totals[currency] = totals.get(currency, Decimal(0)) + amount


def _money_sum(
    ours: dict[str, dict[str, str]], theirs: dict[str, dict[str, str]]
) -> dict[str, dict[str, str]]:
    out = {label: dict(amounts) for label, amounts in ours.items()}
    for label, amounts in theirs.items():
        target = out.setdefault(label, {})
        for currency, amount in amounts.items():
            target[currency] = str(Decimal(target.get(currency, "0")) + Decimal(amount))
    return out


@dataclass
class StepReport:
    step: str
    read: int = 0
    written: int = 0
    deleted: int = 0
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    # Families the step could not finish: family id -> the reason, in one line.
    failures: dict[str, str] = field(default_factory=dict)

    def money(self, label: str, totals: dict[str, Decimal]) -> None:
        """Record amounts per currency under `label` (added to what it holds)."""
        if not totals:
            return
        money = self.details.setdefault("money", {})
        money.update(_money_sum(money, {label: {c: str(a) for c, a in sorted(totals.items())}}))

    def merge(self, other: StepReport) -> StepReport:
        """Sum of two shards' reports of the same step."""
        details = dict(self.details)
        for key, value in other.details.items():
            if key in LATEST and key in details:
                details[key] = max(details[key], value)
            elif key == "money":
                details[key] = _money_sum(details.get(key, {}), value)
            elif isinstance(value, int | float) and isinstance(details.get(key), int | float):
                details[key] += value
            elif isinstance(value, list):
                details[key] = list(details.get(key, [])) + value
            else:
                details.setdefault(key, value)
        return StepReport(
            self.step,
            self.read + other.read,
            self.written + other.written,
            self.deleted + other.deleted,
            self.warnings + [w for w in other.warnings if w not in self.warnings],
            details,
            {**self.failures, **other.failures},
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "read": self.read,
            "written": self.written,
            "deleted": self.deleted,
            "warnings": list(self.warnings),
            "details": dict(self.details),
            "failures": dict(self.failures),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepReport:
        return cls(
            data["step"],
            data.get("read", 0),
            data.get("written", 0),
            data.get("deleted", 0),
            list(data.get("warnings", [])),
            dict(data.get("details", {})),
            dict(data.get("failures", {})),
        )

    def summary(self) -> str:
        text = f"{self.step}: read {self.read}, wrote {self.written}, removed {self.deleted}"
        if self.warnings:
            text += f", {len(self.warnings)} warning(s)"
        if self.failures:
            text += (
                f", {len(self.failures)} famil{'y' if len(self.failures) == 1 else 'ies'} failed"
            )
        return text
