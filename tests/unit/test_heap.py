"""The command line's imports run with the garbage collector paused, and what they built is
frozen; the collector is back as it was afterwards."""

from __future__ import annotations

import gc
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from billing_core.cli.heap import collector_paused, import_quietly

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def collector():
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_paused_inside_frozen_after_and_enabled_again(collector) -> None:
    gc.enable()
    gc.unfreeze()
    with collector_paused():
        assert not gc.isenabled()
        built = [[n] for n in range(1_000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(built)


def test_a_disabled_collector_stays_disabled(collector) -> None:
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


def test_enabled_again_when_an_import_fails(collector) -> None:
    gc.enable()
    with pytest.raises(ModuleNotFoundError):
        import_quietly("billing_core.no_such_module")
    assert gc.isenabled()


def test_the_console_script_enters_through_the_paused_imports() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["billing"] == "billing_core.cli.entry:main"
    # What the script runs: the app imported while paused, the collector back on for the
    # command, and the command's own output.
    code = (
        "import gc, sys; sys.argv = ['billing', '--help']\n"
        "import billing_core.cli.app as app\n"
        "seen = []\n"
        "app.app = lambda: seen.append((gc.isenabled(), gc.get_freeze_count()))\n"
        "from billing_core.cli.entry import main\n"
        "main(); print(seen)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    [(enabled, frozen)] = eval(done.stdout.strip())  # noqa: S307 - our own list
    assert enabled and frozen > 0
