"""A step's summary as the operator reads it: money per currency first, the counts in
words, whether it was cached and from which attempt; keys that are the task names in step
order."""

from __future__ import annotations

from types import SimpleNamespace

from billing_core.report import StepReport
from billing_core.steps.close import STEPS
from flows.summaries import KEYS, artifact_key, cached, failed_summary, summary


def report(step: str = "consolidate roll-ups", **details) -> dict:
    return StepReport(step, read=9, written=2, deleted=1, details=details).as_dict()


def test_keys_are_the_task_names_in_step_order():
    keys = [artifact_key(step.task) for step in STEPS]
    assert keys == sorted(keys) == list(KEYS.values())
    assert keys[2] == "3-rate-usage" and artifact_key("rate") == "3-rate-usage"
    assert all(k.replace("-", "").isalnum() and k == k.lower() for k in keys)


def test_consolidation_shows_each_outcome_with_its_totals_per_currency():
    text = summary(
        report(
            invoices_created=1,
            invoices_changed=1,
            invoices_unchanged=3,
            invoices_removed=0,
            attempt=1,
            seconds=0.5,
            money={
                "created": {"EUR": "20"},
                "changed": {"USD": "1550"},
                "changed_from": {"USD": "1460"},
                "unchanged": {"USD": "120", "EUR": "40.5"},
            },
        ),
        "2026-02-01",
    )
    assert text.startswith("### 4. consolidate-rollups (through 2026-02-01)")
    assert "|  | count | EUR | USD |" in text
    assert "| invoices created | 1 | 20.00 |  |" in text
    assert "| invoices changed: new total | 1 |  | 1550.00 |" in text
    assert "| invoices changed: previous total |  |  | 1460.00 |" in text
    assert "| invoices unchanged | 3 | 40.50 | 120.00 |" in text
    assert "| invoices removed | 0 |  |  |" in text
    assert "computed on attempt 1 · 0.5 s" in text and "Cached" not in text
    assert "processes" not in text


def test_a_step_run_in_two_processes_says_so():
    text = summary(report(attempt=1, seconds=0.5, processes=2), "2026-02-01")
    assert "_computed on attempt 1 · 0.5 s · 2 processes · rows read 9" in text


def test_a_cached_step_says_from_which_attempt():
    whole = report("rate", attempt=1, cached_from=1, money={"rated": {"USD": "1"}}, charges=1)
    assert "**Cached from attempt 1 (not run again):**" in summary(whole, "2026-02-01")
    part = report("rate", attempt=2, cached_from=1, cached_shards=2, shards=3)
    assert (
        "**2 of 3 shards cached from attempt 1 (not run again)**; the others ran on attempt 2"
        in (summary(part, "2026-02-01"))
    )
    done = SimpleNamespace(name="Completed")
    hit = SimpleNamespace(name="Cached")
    assert cached(hit, report(attempt=1), 1)
    assert cached(done, report(attempt=1), 2)  # computed before this attempt
    assert not cached(done, report(attempt=2), 2)
    assert not cached(done, report(), 2)  # attempt unknown, not a cache hit


def test_warnings_and_failed_families_are_listed_as_literal_text():
    data = report("collect usage", refused_rows=3, rejected_files=1)
    data["warnings"] = [f"inbox file bad-{n}.csv refused" for n in range(25)]
    data["failures"] = {"acme": "InvalidOperation: [x](y)"}
    text = summary(data, "2026-02-01")
    assert "- rows refused: 3" in text and "- inbox files refused: 1" in text
    assert "**Warnings (25)**" in text and "… and 5 more" in text
    assert "| acme | InvalidOperation: \\[x\\]\\(y\\) |" in text


def test_a_failed_step_says_why_in_one_line():
    text = failed_summary("rate-usage", RuntimeError("rate-usage failed: boom"), "2026-02-01", 2)
    assert text.startswith("### 3. rate-usage (through 2026-02-01)")
    assert "**Failed on attempt 2:** rate-usage failed: boom" in text
