"""Ids, names and reasons from the store go into the operator's markdown artifacts as
literal text: a crafted customer id cannot add a link, markup or a table cell."""

from __future__ import annotations

import re

from flows.runtime import md


def test_markdown_from_the_store_is_literal():
    crafted = "[pay here](https://evil.example) | *urgent* <img src=x>\n# heading"
    cell = md(crafted)
    assert "\n" not in cell
    assert not re.search(r"(?<!\\)[\[\]()|*<>#]", cell), cell
    # What is left reads as the original once the escapes are taken away.
    assert re.sub(r"\\(.)", r"\1", cell) == " ".join(crafted.split())


def test_plain_ids_are_unchanged():
    assert md("solo-b") == "solo-b"
    assert md("INV-2026-000001") == "INV-2026-000001"
