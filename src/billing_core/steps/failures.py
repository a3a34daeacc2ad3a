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


class StepFailed(RuntimeError):
    """A step stopped on an error of the store (or one whose message runs over several
    lines): one line naming the step and the database's own reason, for the task's and
    the flow run's state. The statement and its parameters go to the debug log."""

    def __init__(self, step: str, reason: str):
        super().__init__(step, reason)
        self.step = step
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.step} failed: {self.reason}"


def step_failed(step: str, error: Exception) -> StepFailed | None:
    """The one-line error a step's task fails with in place of `error`: for a database
    error (whose text carries the whole statement and its parameters) or any error of
    several lines; None for the others (kept as they are)."""
    if isinstance(error, sa.exc.StatementError) or "\n" in str(error).strip():
        return StepFailed(step, reason(error))
    return None


def statement_of(error: BaseException, limit: int = 4000) -> str | None:
    """The statement a database error ran, and its parameters (cut at `limit`)."""
    if not isinstance(error, sa.exc.StatementError) or error.statement is None:
        return None
    params = repr(error.params)
    if len(params) > limit:
        params = params[:limit] + f"… ({len(params)} characters)"
    return f"{error.statement}\nparameters: {params}"


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


# SQLSTATEs of the store refusing the close's role (a privilege taken away): no family's
# data causes them, so they are not split up family by family.
STORE_REFUSALS = frozenset({"42501"})


def isolatable(error: Exception) -> bool:
    """Whether an error may be one family's (its data) rather than the store's or the
    machine's: those are retried or stop the close as a whole."""
    if isinstance(error, LockLost | CloseLocked | OSError | MemoryError):
        return False
    if isinstance(error, sa.exc.OperationalError | sa.exc.InterfaceError):
        return False
    if getattr(getattr(error, "orig", None), "sqlstate", None) in STORE_REFUSALS:
        return False
    return not (isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated)
