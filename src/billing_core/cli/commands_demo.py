"""`billing demo`: the main job on a fresh SQLite store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from billing_core.cli.common import fail, out


def demo(
    folder: Annotated[
        Path, typer.Option(metavar="FOLDER", help="where the demo store and documents go")
    ] = Path("billing-demo"),
) -> None:
    """The main job on a fresh SQLite store: sample catalog and usage, months closed and
    issued, documents written, a summary printed."""
    from billing_core.cli.demo import run_demo
    from billing_core.steps.documents import DocumentsNotWritten

    try:
        run_demo(folder, out)
    except DocumentsNotWritten as missing:
        fail(str(missing))
