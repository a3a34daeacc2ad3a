"""The close's steps are listed once (`billing_core.steps.close.STEPS`): the flow, the close
in this process and the preview follow that list.

The period-close flow calls its tasks one by one rather than looping over the list: each
step is called differently (recalculation over the whole store, collection with the
close's record, three steps fanned out over shards, issuing only when asked, rendering
over shards weighed by documents), and each task must keep a function of its own. Prefect
caches a step's result by its inputs and its function's source (`STEP_CACHE`): tasks
made by one factory would share a source, so rating and consolidation of the same shard
would share a cache key. This test holds the explicit calls to the list instead.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from billing_core.steps import close
from billing_core.steps import preview as preview_module
from flows import period_close, render_documents

FLOW_FILE = Path(period_close.__file__)


def _tasks(tree: ast.Module) -> dict[str, str]:
    """Module-level functions decorated with @step("name"): function -> task name."""
    out = {}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            if (
                isinstance(decorator, ast.Call)
                and isinstance(decorator.func, ast.Name)
                and decorator.func.id == "step"
            ):
                out[node.name] = decorator.args[0].value
    return out


def _called_in_order(function: ast.FunctionDef, names: set[str]) -> list[str]:
    """The names among `names` the function's body mentions, in the order they appear."""
    found = [
        (node.lineno, node.col_offset, node.id)
        for node in ast.walk(function)
        if isinstance(node, ast.Name) and node.id in names
    ]
    seen: list[str] = []
    for _, _, name in sorted(found):
        if name not in seen:
            seen.append(name)
    return seen


def test_the_flow_runs_the_listed_steps_in_order_under_their_task_names():
    tree = ast.parse(FLOW_FILE.read_text(encoding="utf-8"))
    tasks = _tasks(tree)
    assert sorted(tasks.values()) == sorted(step.task for step in close.STEPS)
    flow = next(
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == "period_close"
    )
    order = [tasks[name] for name in _called_in_order(flow, set(tasks))]
    assert order == [step.task for step in close.STEPS]


def test_each_task_calls_its_step_and_carries_its_name():
    tasks = _tasks(ast.parse(FLOW_FILE.read_text(encoding="utf-8")))
    runners = {
        close.RECALCULATE: close.recalculate,
        close.COLLECT: close.collect,
        close.RATE: close.rate,
        close.CONSOLIDATE: close.consolidate,
        close.CREDITS: close.apply_credits,
        close.ISSUE: close.issue,
        close.RENDER: close.render,
    }
    assert set(runners) == set(close.STEPS)
    by_task = {task: function for function, task in tasks.items()}
    for step, runner in runners.items():
        task = getattr(period_close, by_task[step.task])
        assert task.name == step.task
        assert f"steps.{runner.__name__}(" in inspect.getsource(task.fn)
    assert render_documents.render.name == close.RENDER.task


def test_a_local_close_and_a_preview_follow_the_list():
    # A close in this process: every step but collection (issuing only when asked).
    assert [s.name for s in close.STEPS if s.local] == [
        "recalculate schedules",
        "rate",
        "consolidate roll-ups",
        "apply credits",
        "issue invoices",
        "render invoices",
    ]
    # A preview: the steps that build the drafts.
    assert [s.name for s in close.STEPS if s.builds] == [
        "recalculate schedules",
        "rate",
        "consolidate roll-ups",
        "apply credits",
    ]
    assert "STEPS" in inspect.getsource(preview_module.preview)
    assert "STEPS" in inspect.getsource(close.close_locally)


def test_every_step_is_named_by_its_function():
    for step in close.STEPS:
        assert callable(step.run)
        assert close.STEP_NAMES[step.run] == step.name
