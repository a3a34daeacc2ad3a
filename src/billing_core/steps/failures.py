"""How a close reports the families it could not finish: the errors a step's runner may
isolate to one family, the reason it gives for each, and the failures a close ends with.
"""

from __future__ import annotations

import decimal
from datetime import date

import sqlalchemy as sa

from billing_core.report import StepReport
from billing_core.store.locks import CloseLocked, LockLost


class FamilyFailures(RuntimeError):
    """A step finished every family of its scope but some; carries the step's report
    (what it did for the others, and each failed family's reason)."""

    def __init__(self, report: dict):
        super().__init__(report)
        self.report = report

    def __str__(self) -> str:
        return describe_failures({self.report["step"]: self.report.get("failures", {})})


class CloseFailed(RuntimeError):
    """A close finished every family it could and failed the others."""

    def __init__(
        self,
        failures: dict[str, dict[str, str]],
        through: date | str,
        documents: str | None = None,
    ):
        super().__init__(failures, str(through), documents)
        self.failures = failures
        self.through = str(through)
        # One line on documents that could not be written, if any were not.
        self.documents = documents

    def __str__(self) -> str:
        return (
            f"the close through {self.through} finished every other family and failed "
            f"{len(self.failures)}: "
            + describe_failures(
                {
                    step: {f: r["reason"] for f, r in self.failures.items() if r["step"] == step}
                    for step in dict.fromkeys(r["step"] for r in self.failures.values())
                }
            )
        )

    def lines(self) -> list[str]:
        """One line per failed family, for a terminal."""
        return [
            f"family {family}: {r['step']} failed: {r['reason']}"
            for family, r in sorted(self.failures.items())
        ] + ([self.documents] if self.documents else [])


class Failures(dict):
    """Families a close could not finish: family -> {"step", "reason"} (the first failure
    of each)."""

    def note(self, report: StepReport | dict) -> StepReport | dict:
        data = report if isinstance(report, dict) else report.as_dict()
        for family, why in data.get("failures", {}).items():
            self.setdefault(family, {"step": data["step"], "reason": why})
        return report


def describe_failures(by_step: dict[str, dict[str, str]]) -> str:
    return "; ".join(
        f"{family} ({step}: {reason})"
        for step, failures in by_step.items()
        for family, reason in sorted(failures.items())
    )


def reason(error: BaseException) -> str:
    """An error in one line, without the SQL statement a database error carries."""
    inner = getattr(error, "orig", None) or error
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    name = type(inner).__name__
    if isinstance(inner, decimal.DecimalException) and text.startswith("[<class"):
        text = (
            "an amount could not be computed (a price, discount, credit or quantity of this "
            "family beyond what can be billed, such as 1E+400)"
        )
    return (f"{name}: {text}" if text else name)[:300]


def isolatable(error: Exception) -> bool:
    """Whether an error may be one family's (its data) rather than the store's or the
    machine's: those are retried or stop the close as a whole."""
    if isinstance(error, LockLost | CloseLocked | OSError | MemoryError):
        return False
    if isinstance(error, sa.exc.OperationalError | sa.exc.InterfaceError):
        return False
    return not (isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated)
