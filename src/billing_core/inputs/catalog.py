"""Catalog files: parse, validate whole against the store, then upsert by id.

A catalog is YAML or JSON with the keys `issuer`, `tax_rates`, `customers`, `metrics`,
`prices`, `subscriptions` and `credits`. Nothing is written unless every entry of the
file, merged with what the store already holds, is valid.

Reading an entry's fields is billing_core.inputs.catalog_entry's, each section's
validation catalog_parse's, the checks against the store catalog_check's and the
upserts catalog_write's.
"""

from __future__ import annotations

from pathlib import Path

from sqlmodel import Session

from billing_core.inputs.catalog_check import check, pool_warnings
from billing_core.inputs.catalog_entry import SECTIONS, CatalogError, text_problem
from billing_core.inputs.catalog_files import FileRefused, load_data
from billing_core.inputs.catalog_parse import Catalog, parse
from billing_core.inputs.catalog_write import ImportResult, write

__all__ = [
    "Catalog",
    "CatalogError",
    "ImportResult",
    "import_catalog",
    "load_file",
    "parse",
    "pool_warnings",
    "text_problem",
]


def load_file(path: Path) -> dict:
    """A catalog file's content: JSON by extension, YAML otherwise. What cannot be read
    safely (aliases, nesting deeper than 32 levels, not UTF-8 as a whole) is refused."""
    try:
        data = load_data(path)
    except FileRefused as refused:
        raise CatalogError(refused.problems) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CatalogError(["a catalog must be a mapping with the keys " + ", ".join(SECTIONS)])
    return data


def import_catalog(session: Session, catalog: Catalog) -> ImportResult:
    """Validate the catalog merged with the store, then upsert it (the caller commits).

    Every problem is reported at once: those of single entries (`parse`) and those
    against the other entries and the store. Nothing is written if there is any."""
    merged = check(session, catalog)
    warnings = pool_warnings(merged.hierarchy, merged.subscriptions, merged.items, merged.prices)
    return write(session, catalog, merged, warnings)
