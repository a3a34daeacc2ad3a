"""What the product writes for others to open: CSV cells a spreadsheet will not run, file
names that stay in their folder, and documents written whole or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# --- CSV -------------------------------------------------------------------------------

# A spreadsheet reads a cell that starts with one of these as a formula (or, for a tab or
# carriage return, strips it and reads what follows).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# A plain decimal number: a spreadsheet reads it as a number, and it cannot hold a formula.
PLAIN_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell: text that a spreadsheet would read as a formula gets a
    leading `'`; plain decimal numbers (`-50.00`, negative discount and credit amounts)
    and anything that is not text are left as they are."""
    if (
        isinstance(value, str)
        and value.startswith(FORMULA_STARTS)
        and PLAIN_NUMBER.fullmatch(value) is None
    ):
        return "'" + value
    return value


def csv_row(values: Iterable[Any]) -> list[Any]:
    return [csv_cell(v) for v in values]


class SafeCsvWriter:
    """A `csv.writer` whose every row goes through `csv_row`."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._writer.writerow(csv_row(row))


# --- file names ------------------------------------------------------------------------

# Characters a name part keeps: ASCII letters and digits, '.', '-' and '_' (the same on
# every file system, and never a path separator).
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
NAME_PART_LIMIT = 80
# Names Windows keeps for devices, whatever follows a dot (CON, con.txt, COM1.html).
WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{d}{n}" for d in ("COM", "LPT") for n in "123456789"]
)


def name_part(text: str, limit: int = NAME_PART_LIMIT) -> str:
    """An id as part of a file name, recognisable and never a path of its own.

    A plain id (ASCII letters, digits, '.', '-' and '_', not starting with a dot, not a
    name Windows reserves, at most `limit` characters) is kept as it is. Any other id
    keeps its safe characters (the others become '_'), cut to `limit`, behind a '_' when
    it would start with a dot or a reserved name, and gets '~' and 12 hex digits of the
    id's SHA-256: '~' never appears in a kept id, so two different ids never share a name
    part.
    """
    if (
        text
        and len(text) <= limit
        and _UNSAFE.search(text) is None
        and not text.startswith(".")
        and text.split(".", 1)[0].upper() not in WINDOWS_RESERVED
    ):
        return text
    shown = _UNSAFE.sub("_", text[:limit])
    if shown.startswith(".") or shown.split(".", 1)[0].upper() in WINDOWS_RESERVED:
        shown = "_" + shown
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{shown}~{digest}"


# --- writing files ---------------------------------------------------------------------


def write_file(path: Path, content: bytes, replace: bool = True) -> None:
    """Write a file whole or not at all; the OSError reaches the caller.

    With `replace`, into a hidden file beside it, then renamed over it: a full disk never
    leaves a half-written file in place of the last good one. Without (a file nothing
    points to yet, the common case, which then costs no rename), straight to its place,
    and a part written before a failure is removed.
    """
    if not replace:
        try:
            path.write_bytes(content)
        except BaseException:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            raise
        return
    temporary = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        temporary.write_bytes(content)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise


def os_reason(error: OSError) -> str:
    """An OSError as an operator reads it: 'Permission denied: /srv/documents/2026-02-01'."""
    reason = error.strerror or str(error) or type(error).__name__
    return f"{reason}: {error.filename}" if error.filename else reason
