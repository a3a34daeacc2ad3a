"""What a step did: rows read and written, warnings, details for the operator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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

    def merge(self, other: StepReport) -> StepReport:
        """Sum of two shards' reports of the same step."""
        details = dict(self.details)
        for key, value in other.details.items():
            if isinstance(value, int | float) and isinstance(details.get(key), int | float):
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
