"""The `billing` console script: the command line's modules imported with the garbage
collector paused (`cli.heap`), then `cli.app.main`."""

from __future__ import annotations


def main() -> None:
    from billing_core.cli.heap import collector_paused

    with collector_paused():
        from billing_core.cli.app import main as run
    run()
