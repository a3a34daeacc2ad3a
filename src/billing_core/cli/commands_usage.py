"""`billing usage`: metered usage into the store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from billing_core.cli.common import fail, out, require_store

usage_app = typer.Typer(no_args_is_help=True, help="Load metered usage.")


@usage_app.command("ingest")
def usage_ingest(
    files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="CSV or JSON Lines files")],
    skip_invalid: Annotated[
        Path | None,
        typer.Option(
            "--skip-invalid",
            metavar="REJECTS_FILE",
            help="load the valid rows and write the invalid ones to this CSV",
        ),
    ] = None,
) -> None:
    """Load usage events; the same event_id is counted once, whatever the file."""
    from billing_core.inputs.usage import (
        UsageRefused,
        ingest_files,
        refresh_statistics,
        retrying_deadlocks,
    )

    require_store()
    try:
        result = retrying_deadlocks(
            lambda session: ingest_files(session, files, rejects_path=skip_invalid)
        )
    except UsageRefused as refused:
        fail(refused.summary, *map(str, refused.problems))
    refresh_statistics(result.loaded)
    out.print(
        f"read {result.read} event(s) from {result.files} file(s): {result.loaded} new, "
        f"{result.duplicates} already loaded, {result.rejected} rejected"
        + (f" (written to {skip_invalid})" if result.rejected and skip_invalid else "")
    )
