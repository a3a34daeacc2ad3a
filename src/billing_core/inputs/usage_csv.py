"""Usage events from CSV files, read row by row (see `usage.read_rows`)."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from billing_core.domain.limits import TEXT_BYTES
from billing_core.inputs.usage_text import CSV_COLUMNS, clip, column_name, scan_file, text_problem

# The careful CSV reading still stops somewhere: a field this long (an unclosed quote,
# most likely) makes the rest of the file unreadable, in bounded memory.
CAREFUL_FIELD_LIMIT = 64 * 2**20


def _csv_header(cells: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The header's column names, and its problems as (field, reason) pairs."""
    problems = []
    for i, cell in enumerate(cells):
        reason = text_problem(cell)
        if reason is not None:
            problems.append((f"column {i + 1}", reason))
    names = [h.strip() for h in cells]
    if problems:
        return names, problems
    seen: set[str] = set()
    reported: set[str] = set()
    for i, name in enumerate(names):
        if name in seen and name not in reported:
            problems.append((column_name(names, i), "the header names this column twice"))
            reported.add(name)
        seen.add(name)
    missing = [c for c in ("event_id", "customer", "metric", "timestamp") if c not in names]
    if missing:
        problems.append(
            (
                "header",
                f"lacks {', '.join(missing)} (expected {','.join(CSV_COLUMNS)}, other "
                "columns become properties)",
            )
        )
    return names, problems


class Lines:
    """A text file's lines for a csv reader, noting whether the reader asked past the
    file's end (`ended`). The csv module reads a line more only while a record is
    unfinished, so a record returned once `ended` is set ran into the end of the file
    inside a quoted field: the csv module gives it as it stands, with the rows after the
    opening quote in that field (`quote_left_open`)."""

    def __init__(self, handle: Any):
        self.handle = handle
        self.ended = False

    def __iter__(self) -> Lines:
        return self

    def __next__(self) -> str:
        line = self.handle.readline()
        if not line:
            self.ended = True
            raise StopIteration
        return line


def quote_left_open(values: list[str], names: list[str]) -> dict[str, Any]:
    """The refusal of a record whose last field's quote is still open at the end of the
    file: where the row was meant to end cannot be told, so the file is not read."""
    return {
        "__invalid__": "a quoted field is still open at the end of the file (its closing "
        "quote is missing); the file is not read",
        "__field__": column_name(names, len(values) - 1),
        "__unreadable__": True,
    }


def read_csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a CSV file.

    A file of plain ASCII without NUL bytes is read fast: the csv module's own field limit
    (64 KiB, which is then 64 KiB of bytes) stops at an oversized field. The file is then
    read again, carefully, from the row after the last one read: each cell checked (NUL,
    UTF-8, size in bytes), the oversized field named, and no row inside a long quoted field
    taken for an event. Any other file is read carefully from the start. A field over
    CAREFUL_FIELD_LIMIT even there ends the reading: the file is refused whole.
    """
    scan = scan_file(path)
    careful = not scan.ascii or scan.nul
    header: list[str] | None = None
    done = 0  # the physical line where the last row yielded ends
    previous_limit = csv.field_size_limit()
    try:
        while True:  # at most twice: fast, then careful
            csv.field_size_limit(CAREFUL_FIELD_LIMIT if careful else TEXT_BYTES)
            with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
                lines = Lines(handle)
                reader = csv.reader(lines)
                if header is None:
                    first = _first_row(reader, careful)
                    if first is None:
                        careful = True  # a header cell over the limit: read carefully
                        continue
                    header, problems = first
                    for where, reason in problems:
                        yield 1, {"__invalid__": reason, "__field__": where, "__unreadable__": True}
                    if problems or header is None:
                        return
                    done = reader.line_num
                names = header
                extra = [h for h in names if h not in CSV_COLUMNS]
                if careful:
                    yield from _careful_rows(reader, lines, names, extra, done)
                    return
                width = len(names)
                known = [(h, i) for i, h in enumerate(names) if h not in extra]
                others = [(h, i) for i, h in enumerate(names) if h in extra]
                try:  # the fast reading, kept inline: it is the cost of every usual row
                    for values in reader:
                        if lines.ended:
                            yield done + 1, quote_left_open(values, names)
                            return
                        if len(values) == width:  # the usual row: straight from its cells
                            record: dict[str, Any] = {h: values[i] for h, i in known}
                            record["properties"] = {
                                h: values[i] for h, i in others if values[i] != ""
                            }
                            done = reader.line_num
                            yield done, record
                            continue
                        done = reader.line_num
                        if not values or (len(values) == 1 and not values[0].strip()):
                            continue
                        yield done, _odd_row(values, names, extra)
                    return
                except csv.Error:
                    careful = True  # a field over the limit: read again, carefully
    finally:
        csv.field_size_limit(previous_limit)


def _first_row(reader: Any, careful: bool) -> tuple[list[str] | None, list[tuple[str, str]]] | None:
    """The header's names (None for an empty file or an unreadable header) and its
    problems; None when a cell is over the fast reading's limit (read it carefully)."""
    try:
        cells = next(reader, None)
    except csv.Error as error:
        if not careful:
            return None
        return None, [("header", f"not readable as CSV ({error})")]
    if cells is None:
        return None, []
    return _csv_header(cells)


def careful_record(names: list[str], extra: list[str]) -> Callable[[list[str]], dict | None]:
    """How the careful reading turns a row's cells into its record, each cell checked
    before it is taken: None for a blank row (skipped), a refused record for a cell that
    cannot be stored, a row as wide as the header split into its columns and properties,
    any other as `_odd_row` (the validator refuses it)."""
    width = len(names)
    known = [(h, i) for i, h in enumerate(names) if h not in extra]
    others = [(h, i) for i, h in enumerate(names) if h in extra]

    def record(values: list[str]) -> dict[str, Any] | None:
        if not values or (len(values) == 1 and not values[0].strip()):
            return None
        refused = _cells_problem(values, names)
        if refused is not None:
            return refused
        if len(values) != width:
            return _odd_row(values, names, extra)
        out: dict[str, Any] = {h: values[i] for h, i in known}
        out["properties"] = {h: values[i] for h, i in others if values[i] != ""}
        return out

    return record


def _careful_rows(
    reader: Any, lines: Lines, names: list[str], extra: list[str], done: int
) -> Iterator[tuple[int, dict[str, Any]]]:
    """The rows after physical line `done`, each cell checked before it is taken."""
    record_of = careful_record(names, extra)
    try:
        for values in reader:
            if reader.line_num <= done:
                continue  # read before, on the fast path
            if lines.ended:
                yield done + 1, quote_left_open(values, names)
                return
            done = reader.line_num
            record = record_of(values)
            if record is not None:
                yield done, record
    except csv.Error as error:
        # Where the record ends cannot be told: nothing after it is read, and
        # the file is refused even with --skip-invalid.
        yield (
            reader.line_num,
            {
                "__invalid__": f"not readable as CSV ({error}); the rest of the "
                "file is not read (an unclosed quote?)",
                "__unreadable__": True,
            },
        )


def _cells_problem(values: list[str], names: list[str]) -> dict[str, Any] | None:
    """A refused record for the first cell that cannot be stored, or None."""
    for i, cell in enumerate(values):
        reason = text_problem(cell)
        if reason is not None:
            return {
                **{column_name(names, j): clip(v) for j, v in enumerate(values)},
                "__invalid__": reason,
                "__field__": column_name(names, i),
            }
    return None


def _odd_row(values: list[str], names: list[str], extra: list[str]) -> dict[str, Any]:
    """A row with more or fewer cells than the header (refused by the validator)."""
    record: dict[str, Any] = dict(zip(names, values, strict=False))
    record["__width__"] = len(values)
    props = {k: record.pop(k) for k in extra if record.get(k, "") != ""}
    for k in extra:
        record.pop(k, None)
    record["properties"] = props
    return record
