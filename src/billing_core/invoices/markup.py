"""The HTML a PDF is made from, as the element tree WeasyPrint lays out, without its HTML5
parser when the markup allows.

WeasyPrint parses a document's HTML with tinyhtml5, a pure-Python HTML5 parser: some 7 ms
of an invoice's 110 ms PDF. The invoice template writes markup that any XML parser reads
as the HTML5 parser does, but for a few rules of HTML5's tree construction that this
module applies itself (a `tbody` around a table's rows, where the whitespace around
`<head>` and after `</body>` goes). So a document whose markup keeps to that subset is
read by the C XML parser of the standard library (expat) and given to WeasyPrint as its
tree; anything else (another template's markup, a character XML refuses) goes to
WeasyPrint's own parser, as before. Both give the same tree, hence the same PDF bytes
(tests/unit/test_rendering_markup.py compares them, and the PDFs).

The subset, checked on every document before its tree is used:

- the document starts with `<!DOCTYPE html>` and has no comments, processing
  instructions or CDATA sections; its `meta` and `col` elements are the only empty ones;
- the elements are among `ALLOWED` and each is inside a parent that HTML5 nests it in
  as written (`CHILDREN`): no `div` inside a `p` (HTML5 would close the `p`), no
  formatting elements (`b`, `a`...) whose HTML5 rules go beyond nesting, rows only in a
  table, its sections or (given a `tbody`, as HTML5 does) the table itself;
- text in tables, rows, column groups, `html` and `head` is whitespace only (HTML5 moves
  other text out of a table);
- no attribute value holds a tab or a line break (XML turns them into spaces).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

PHRASING = frozenset({"span"})
HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
FLOW = frozenset({"div", "section", "header", "p", "span", "table"}) | HEADINGS
SECTIONS = frozenset({"thead", "tbody", "tfoot"})
# Which children HTML5's tree construction leaves where they are written, per element.
CHILDREN: dict[str, frozenset[str]] = {
    "html": frozenset({"head", "body"}),
    "head": frozenset({"meta", "title"}),
    "title": frozenset(),
    "meta": frozenset(),
    "body": FLOW,
    "div": FLOW,
    "section": FLOW,
    "header": FLOW,
    "td": FLOW,
    "th": FLOW,
    "caption": FLOW - {"table"},
    "p": PHRASING,
    "span": PHRASING,
    **dict.fromkeys(HEADINGS, PHRASING),
    "table": frozenset({"caption", "colgroup", "tr"}) | SECTIONS,
    "colgroup": frozenset({"col"}),
    "col": frozenset(),
    **dict.fromkeys(SECTIONS, frozenset({"tr"})),
    "tr": frozenset({"td", "th"}),
}
ALLOWED = frozenset(CHILDREN)
# Where HTML5 keeps only whitespace (text there is moved or refused).
WHITESPACE_ONLY = frozenset({"html", "head", "table", "colgroup", "tr", "meta", "col"}) | SECTIONS

_DOCTYPE = re.compile(r"\s*<!DOCTYPE html>", re.IGNORECASE)
_EMPTY = re.compile(r"<(meta|col)\b([^<>]*?)/?>")
_REFUSED = re.compile(r"<!--|<\?|<!\[CDATA\[|=\s*\"[^\"]*[\t\n\r]")


def tree(html: str) -> Any | None:
    """The root element HTML5 parsing gives `html` (as WeasyPrint parses it: elements
    outside any namespace), or None when the markup is outside the subset above."""
    if _DOCTYPE.match(html) is None or _REFUSED.search(html) is not None:
        return None
    try:
        root = ET.fromstring(_EMPTY.sub(r"<\1\2/>", html))
    except ET.ParseError:
        return None
    if root.tag != "html" or not _html5(root):
        return None
    _as_html5_places_it(root, html)
    return root


def _html5(root: Any) -> bool:
    """Whether every element nests as HTML5 would build it, with text only where HTML5
    keeps it (see the module's docstring)."""
    stack = [root]
    while stack:
        element = stack.pop()
        allowed = CHILDREN.get(element.tag)
        if allowed is None:
            return False
        blank = element.tag in WHITESPACE_ONLY
        if blank and element.text and not element.text.isspace():
            return False
        for child in element:
            if child.tag not in allowed:
                return False
            if blank and child.tail and not child.tail.isspace():
                return False
            stack.append(child)
    return True


def _as_html5_places_it(root: Any, html: str) -> None:
    """What HTML5's tree construction does beyond nesting, for markup in the subset: the
    whitespace before `<head>` is dropped; whitespace after `</body>` (and `</html>`)
    goes at the end of the body; a table's rows written outside a section get a `tbody`
    of their own (one per run of rows)."""
    root.text = None
    body = root[-1] if len(root) else None
    if body is not None and body.tag == "body":
        after = (body.tail or "") + html[html.rindex(">") + 1 :]
        body.tail = None
        if after:
            if len(body):
                body[-1].tail = (body[-1].tail or "") + after
            else:
                body.text = (body.text or "") + after
    for table in root.iter("table"):
        if any(child.tag == "tr" for child in table):
            _rows_in_sections(table)


def _rows_in_sections(table: Any) -> None:
    children = list(table)
    for child in children:
        table.remove(child)
    section = None
    for child in children:
        if child.tag != "tr":
            section = None
            table.append(child)
            continue
        if section is None:
            section = ET.SubElement(table, "tbody")
        section.append(child)
