"""Usage events from a CSV file in blocks: runs of plain lines parsed at once by pyarrow
(`Batch`), anything else read row by row exactly as `usage_csv` reads it carefully.

A block is about a mebibyte of whole lines. It is parsed by pyarrow when nothing in it
can make pyarrow and the csv module disagree: quotes only around whole fields of one
line, no carriage return but in CRLF line ends, no NUL, valid UTF-8, no blank line (one
row per line, so the lines number the rows), every row as wide as the header and every
cell within the store's 64 KiB. Any other block (a quoted field over several lines, a
stray quote, a blank line, a row too narrow, a long cell...) is read by the csv module
with the careful reading's checks (`usage_csv._careful_rows`: the same records, the same
row numbers, the same refusals), from its first line until the csv reader stands at a row
boundary at or past the block's end (a quoted field may run on), and the next block
starts there. The careful reading gives the records the fast reading gives wherever the
fast one applies (an ASCII file without NUL), so one reading serves every file.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from billing_core.domain.limits import TEXT_BYTES
from billing_core.inputs import usage_csv
from billing_core.inputs.usage_csv import Lines, _first_row, careful_record, quote_left_open
from billing_core.inputs.usage_text import CSV_COLUMNS

BLOCK_BYTES = 1 << 20  # about 18,000 rows of the benchmark's events
# A quoted field as both readers read it alike: the whole field between quotes (a quote
# inside it doubled), right after a comma or a line's start and right before a comma or
# the line's end, on one line.
_QUOTED = re.compile(rb'(?<![^,\n])"(?:[^"\r\n]|"")*"(?=[,\r\n]|\Z)')


@dataclass
class Batch:
    """Rows parsed together: `table` holds one string column per header name, in order;
    its first row is the file's row `first` (the lines number the rows)."""

    table: Any  # pyarrow.Table
    first: int
    names: list[str]
    extra: list[str]

    @property
    def rows(self) -> int:
        return self.table.num_rows

    def column(self, name: str) -> Any:
        return self.table.column(self.names.index(name))

    def records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(row number, record) as `usage_csv.read_csv` yields the same rows."""
        columns = [c.to_pylist() for c in self.table.columns]
        known = [(h, columns[i]) for i, h in enumerate(self.names) if h not in self.extra]
        others = [(h, columns[i]) for i, h in enumerate(self.names) if h in self.extra]
        for j in range(self.rows):
            record: dict[str, Any] = {h: cells[j] for h, cells in known}
            record["properties"] = {h: cells[j] for h, cells in others if cells[j] != ""}
            yield self.first + j, record


class _Lines(Lines):
    """A text file's lines from a byte offset (csv's own splitting: newline=""), as
    `usage_csv.Lines` gives them, counting the bytes handed out so far."""

    def __init__(self, handle: Any):
        super().__init__(handle)
        self.bytes = 0

    def __next__(self) -> str:
        line = super().__next__()
        self.bytes += len(line) if line.isascii() else len(line.encode("utf-8", "surrogateescape"))
        return line


@dataclass
class _Place:
    offset: int  # bytes from the file's start
    line: int  # physical lines read before it
    done: bool = False  # the end of the file, or a refusal that ends its reading
    names: list[str] | None = None  # the header's, once read


def _careful(
    path: Path, place: _Place, until: int, names: list[str] | None, extra: list[str]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """The rows from `place` until the reading has passed `until` bytes more (or the
    header, when `names` is None), read as `usage_csv` reads carefully; `place` is moved
    to where the reading stopped."""
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as handle:
        handle.seek(place.offset)
        lines = _Lines(handle)
        reader = csv.reader(lines)
        try:
            if names is None:
                yield from _header(reader, place)
            else:
                record_of = careful_record(names, extra)
                while lines.bytes < until:
                    before = reader.line_num
                    values = next(reader, None)
                    if values is None:
                        place.done = True
                        break
                    if lines.ended:
                        place.done = True
                        yield place.line + before + 1, quote_left_open(values, names)
                        break
                    record = record_of(values)
                    if record is not None:
                        yield place.line + reader.line_num, record
        except csv.Error as error:
            place.done = True
            yield (
                place.line + reader.line_num,
                {
                    "__invalid__": f"not readable as CSV ({error}); the rest of the "
                    "file is not read (an unclosed quote?)",
                    "__unreadable__": True,
                },
            )
        place.offset += lines.bytes
        place.line += reader.line_num


def _header(reader: Any, place: _Place) -> Iterator[tuple[int, dict[str, Any]]]:
    first = _first_row(reader, True)
    header, problems = first if first is not None else (None, [])
    for where, reason in problems:
        yield 1, {"__invalid__": reason, "__field__": where, "__unreadable__": True}
    if problems or header is None:
        place.done = True
    else:
        place.names = header


def read_csv_parts(path: Path) -> Iterator[tuple[int, dict[str, Any]] | Batch]:
    """The rows of a CSV file, as `usage_csv.read_csv` yields them, but runs of plain
    rows come as one `Batch` each."""
    previous_limit = csv.field_size_limit()
    csv.field_size_limit(usage_csv.CAREFUL_FIELD_LIMIT)
    try:
        with path.open("rb") as raw:
            start = len(codecs.BOM_UTF8) if raw.read(3) == codecs.BOM_UTF8 else 0
        place = _Place(start, 0)
        yield from _careful(path, place, 0, None, [])
        names = place.names
        if place.done or names is None:
            return
        extra = [h for h in names if h not in CSV_COLUMNS]
        parse = _parser(len(names))
        with path.open("rb") as raw:
            while not place.done:
                raw.seek(place.offset)
                block = raw.read(BLOCK_BYTES)
                if not block:
                    return
                end = block.rfind(b"\n") + 1
                if end and len(block) == BLOCK_BYTES:
                    block = block[:end]
                elif not end and len(block) == BLOCK_BYTES:  # a line longer than a block
                    yield from _careful(path, place, len(block), names, extra)
                    continue
                table = parse(block)
                if table is None:
                    yield from _careful(path, place, len(block), names, extra)
                    continue
                yield Batch(table, place.line + 1, names, extra)
                place.offset += len(block)
                place.line += table.num_rows
    finally:
        csv.field_size_limit(previous_limit)


def _parser(width: int) -> Any:
    """A function from a block of bytes to its table of strings, or None when the block is
    not one pyarrow reads as the csv module would (see the module's docstring)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv as arrow_csv

    names = [f"c{i}" for i in range(width)]
    read_options = arrow_csv.ReadOptions(column_names=names, use_threads=False)
    parse_options = arrow_csv.ParseOptions(
        quote_char='"', double_quote=True, newlines_in_values=False, ignore_empty_lines=True
    )
    convert_options = arrow_csv.ConvertOptions(
        column_types={n: pa.string() for n in names},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )

    def parse(block: bytes) -> Any:
        if b"\x00" in block:
            return None
        if b'"' in block and b'"' in _QUOTED.sub(b"", block):
            return None  # a quote that is not around a whole field of one line
        if b"\r" in block and block.count(b"\r") != block.count(b"\r\n"):
            return None  # a carriage return that does not end a line with its line feed
        lines = block.count(b"\n") + (not block.endswith(b"\n"))
        read_options.block_size = len(block) + 1
        try:
            table = arrow_csv.read_csv(
                pa.BufferReader(block),
                read_options=read_options,
                parse_options=parse_options,
                convert_options=convert_options,
            )
        except pa.ArrowException:  # a row of another width, bytes that are not UTF-8...
            return None
        if table.num_rows != lines:  # a blank line
            return None
        for column in table.columns:
            if len(column) and pc.max(pc.binary_length(column)).as_py() > TEXT_BYTES:
                return None
        return table.combine_chunks()

    return parse
