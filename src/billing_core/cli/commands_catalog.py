"""`billing import`: a catalog into the store, and the drafts it changed recalculated."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from billing_core.cli.common import err, fail, out, require_store


def import_(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="YAML or JSON catalog")],
) -> None:
    """Import a catalog: validated whole, then upserted by id."""
    from billing_core.inputs.catalog import CatalogError, import_catalog, load_file, parse
    from billing_core.store.engine import unit_of_work

    require_store()
    if not file.is_file():
        fail(f"{file}: no such file")
    try:
        catalog = parse(load_file(file))
        with unit_of_work() as session:
            result = import_catalog(session, catalog)
            session.commit()
    except CatalogError as error:
        fail(*(f"{file}: {problem}" for problem in error.problems))
    for warning in result.warnings:
        err.print(f"warning: {warning}")
    counts = ", ".join(
        f"{section} {new} new/{updated} updated"
        for section, (new, updated) in result.counts.items()
        if new or updated
    )
    out.print(f"imported {file}: {counts or 'nothing new'}")
    rebuilt = _rebuild_after_import(result.affected_families)
    if rebuilt:
        out.print(rebuilt)


def _rebuild_after_import(families: set[str]) -> str | None:
    """Recalculate the drafts an import may have changed (hierarchy, roll-up, schedules)."""
    from billing_core.steps.close import close_locally, latest_draft_date

    if not families:
        return None
    from billing_core.store.locks import CloseLocked

    through = latest_draft_date(families)
    if through is None:
        return None
    from billing_core.steps.failures import CloseFailed

    try:
        reports = close_locally(through, families=families)
    except CloseLocked as locked:
        return f"drafts not recalculated now ({locked}); the next close rebuilds them"
    except CloseFailed as failed:
        return (
            f"drafts recalculated through {through} except for "
            + "; ".join(failed.lines())
            + " (those families keep their drafts; the next close retries them)"
        )
    _warn_missing_previews(reports)
    consolidated = next(r for r in reports if r.step == "consolidate roll-ups")
    built = consolidated.details.get("drafts_built", 0)
    dropped = consolidated.details.get("drafts_discarded", 0)
    if not built and not dropped:
        return f"drafts through {through} still match the catalog"
    return (
        f"recalculated drafts through {through} for {len(families)} famil"
        f"{'y' if len(families) == 1 else 'ies'}: {dropped} discarded, {built} rebuilt"
    )


def _warn_missing_previews(reports: list) -> None:
    """The import stands when draft previews cannot be written: one warning line."""
    from billing_core.steps.documents import documents_missing

    missing = documents_missing(reports)
    if missing:
        drafts = all(isinstance(m["invoice"], int) for m in missing)  # drafts have no number
        err.print(
            f"warning: {'draft previews' if drafts else 'documents'} could not be written "
            f"({len(missing)} missing; {missing[0]['reason']}); the next close writes them"
        )
