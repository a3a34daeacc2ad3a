"""What the usage readers share: the columns of an event, a file's bytes scanned once, and
the checks and shortening of the text a message quotes."""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from billing_core.domain.limits import TEXT_BYTES

CSV_COLUMNS = ("event_id", "customer", "metric", "timestamp", "quantity")


@dataclass(frozen=True)
class Scan:
    ascii: bool  # every byte below 0x80 (a leading UTF-8 byte order mark aside)
    utf8: bool  # the whole file decodes as UTF-8
    nul: bool  # some byte is 0


def scan_file(path: Path) -> Scan:
    """What a file's bytes hold, read in large blocks (a small fraction of parsing it)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    ascii, utf8, nul = True, True, False
    with path.open("rb") as handle:
        block = handle.read(1 << 20).removeprefix(codecs.BOM_UTF8)
        while block:
            nul = nul or b"\x00" in block
            if ascii and block.isascii():
                pass
            else:
                ascii = False
                if utf8:
                    try:
                        decoder.decode(block)
                    except UnicodeDecodeError:
                        utf8 = False
            block = handle.read(1 << 20)
    if utf8:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            utf8 = False
    return Scan(ascii, utf8, nul)


def text_problem(value: str) -> str | None:
    """Why a text cannot be stored: a NUL, bytes that were not UTF-8, or over 64 KiB."""
    if "\x00" in value:
        return "contains a NUL character"
    if value.isascii():
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:  # a byte that was not UTF-8, kept as a lone surrogate
            return "not UTF-8 text"
    if size > TEXT_BYTES:
        return f"longer than 64 KiB ({size:,} bytes)"
    return None


def clip(value: Any, limit: int = 200) -> Any:
    """A value as the rejects file shows a refused row: long text cut short."""
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"… ({len(value):,} characters)"
    return value


def shown(value: Any) -> str:
    """A value as a reason quotes it: long text cut short."""
    text = str(value).strip()
    return text if len(text) <= 40 else text[:20] + f"… ({len(text):,} characters)"


def column_name(names: list[str], index: int) -> str:
    """A CSV column as a message names it."""
    name = names[index] if index < len(names) else ""
    return name if name and name.isprintable() else f"column {index + 1}"
