"""WeasyPrint's HTML document of an invoice, spared two costs that are the same for every
invoice and change nothing in its PDF.

- Parsing: a document whose markup keeps to `invoices.markup`'s subset is given to
  WeasyPrint as the tree the C XML parser reads (the tree WeasyPrint's HTML5 parser
  would build), not parsed again by that pure-Python parser: 0.5 ms instead of 7.6 ms.
- The user agent stylesheet's pseudo-element rules for list markers, footnotes and notes
  (`::marker`, `::footnote-call`, ...): their selectors match every element, so WeasyPrint
  cascades and computes six pseudo-element styles for each of a document's 250
  elements, some 4 ms of its 11 ms of styles, and never uses them unless an element is a
  list item, a footnote or a note. Those only exist where a stylesheet or the markup says
  so (`list-item`, `footnote`, `note(`), and the markup subset has no element whose user
  agent style makes it one (`li`, `summary`): where none of the words appears in the
  template folder's stylesheets or the document, the document gets WeasyPrint's user
  agent stylesheet without those rules.

Anything else goes to WeasyPrint as `HTML(string=...)`. The PDF is the same bytes either
way (tests/integration/test_documents.py renders the invoices both ways).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from billing_core.invoices import markup

# The pseudo-elements only list items, footnotes and notes generate.
UNUSED_PSEUDO = frozenset(
    {"marker", "footnote-call", "footnote-marker", "note-call", "note-marker", "note-callback"}
)
# What makes an element one of those (or brings in a stylesheet not looked at).
GENERATES = re.compile(r"list-item|footnote|note\s*\(|@import", re.IGNORECASE)


def html_document(html: str, base_url: str, plain_css: bool = False) -> Any:
    """WeasyPrint's HTML document of `html` (a PDF's, made with `inline_css=False`).
    `plain_css`: the stylesheets it is rendered with make no list item, footnote or note
    (`plain_stylesheet`)."""
    from weasyprint import HTML

    root = markup.tree(html)
    if root is None:
        return HTML(string=html, base_url=base_url)
    lean = plain_css and GENERATES.search(html) is None
    return _parsed_html_class()(root, base_url, lean)


def plain_stylesheet(text: str) -> bool:
    """Whether a stylesheet makes no element a list item, a footnote or a note, and
    imports nothing."""
    return GENERATES.search(text) is None


@cache
def _parsed_html_class() -> type:
    import cssselect2
    from weasyprint import HTML
    from weasyprint.urls import URLFetcher, ensure_url

    class ParsedHTML(HTML):
        """WeasyPrint's HTML given its tree, set up as `HTML(string=..., base_url=...)`
        sets up the tree it parses (the document has no `<base>`: markup's subset)."""

        def __init__(self, root: Any, base_url: str, lean: bool) -> None:
            self.base_url = ensure_url(base_url)
            self.url_fetcher = URLFetcher()
            self.media_type = "print"
            self.wrapper_element = cssselect2.ElementWrapper.from_html_root(
                root, content_language=None
            )
            self.etree_element = self.wrapper_element.etree_element
            self.lean = lean

        def _ua_stylesheets(self, forms: bool = False) -> list[Any]:
            if self.lean and not forms:
                return [_lean_user_agent_stylesheet()]
            return super()._ua_stylesheets(forms)

    return ParsedHTML


@cache
def _lean_user_agent_stylesheet() -> Any:
    """WeasyPrint's user agent stylesheet without the selectors of `UNUSED_PSEUDO`
    (every other rule as it is, in its order; its counter styles are WeasyPrint's
    already, registered when it parsed the stylesheet itself)."""
    import cssselect2
    import tinycss2
    from weasyprint import CSS
    from weasyprint import html as weasyprint_html
    from weasyprint.css.counters import CounterStyle

    kept: list[str] = []
    for rule in tinycss2.parse_stylesheet(
        weasyprint_html.UA, skip_comments=True, skip_whitespace=True
    ):
        if rule.type == "at-rule" and rule.lower_at_keyword == "counter-style":
            continue
        if rule.type != "qualified-rule":
            kept.append(rule.serialize())
            continue
        selectors = [
            tokens
            for tokens in _split(rule.prelude)
            if not any(
                s.pseudo_element in UNUSED_PSEUDO for s in cssselect2.compile_selector_list(tokens)
            )
        ]
        if selectors:
            prelude = ", ".join(tinycss2.serialize(tokens).strip() for tokens in selectors)
            kept.append(f"{prelude} {{{tinycss2.serialize(rule.content)}}}")
    return CSS(string="\n".join(kept), counter_style=CounterStyle())


def _split(prelude: list[Any]) -> list[list[Any]]:
    """A selector list's selectors (the tokens between its top-level commas)."""
    parts: list[list[Any]] = [[]]
    for token in prelude:
        if token.type == "literal" and token.value == ",":
            parts.append([])
        else:
            parts[-1].append(token)
    return [part for part in parts if part]
