"""The PDF's HTML read without the HTML5 parser (`invoices.markup`): whenever it gives a
tree, it is the tree WeasyPrint's HTML5 parser (tinyhtml5) gives, for any markup; the
invoice template's markup takes that path; and the lean user agent stylesheet
(`invoices.weasy`) only where no element needs what it leaves out."""

from __future__ import annotations

from html import escape

import pytest
import tinyhtml5
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_core.invoices import markup

# Elements of the subset and others whose HTML5 rules go beyond nesting.
TAGS = sorted(markup.ALLOWED - {"html", "head", "body", "meta", "col", "title"}) + [
    "b",
    "a",
    "li",
    "ul",
    "br",
    "pre",
]
DOCTYPE = "<!DOCTYPE html>"


def html5(html: str):
    return tinyhtml5.parse(html, namespace_html_elements=False)


def shape(element) -> tuple:
    """An element as a comparable value: tag, attributes, text, tail and children."""
    return (
        element.tag,
        dict(element.attrib),
        element.text or None,
        element.tail or None,
        [shape(child) for child in element],
    )


def same_as_html5(html: str) -> bool | None:
    """None when `markup` refuses the markup, else whether its tree is HTML5's."""
    found = markup.tree(html)
    if found is None:
        return None
    return shape(found) == shape(html5(html))


texts = st.text(alphabet=" \n\tab<&'\"é—·", max_size=6).map(escape)
blanks = st.sampled_from(["", " ", "\n  "])
# A tab or line break in an attribute value now and then (XML would make it a space).
ATTRIBUTES = ["", ' class="x"', ' colspan="2"', ' class="a b"'] * 5 + [' title="a\tb"']


@st.composite
def fragments(draw, parent: str = "body", depth: int = 0) -> str:
    """Markup inside `parent`: mostly what the subset allows there (to reach deep trees
    the fast path takes), now and then anything (to test that it refuses, or agrees)."""
    allowed = sorted(markup.CHILDREN.get(parent, frozenset()) - {"meta", "col"})
    parts = []
    for _ in range(draw(st.integers(0, 3 if depth < 5 else 0))):
        anything = draw(st.integers(0, 24)) == 0
        if draw(st.integers(0, 3)) == 0:
            blank = parent in markup.WHITESPACE_ONLY and not anything
            parts.append(draw(blanks if blank else texts))
            continue
        if not allowed and not anything:
            continue
        tag = draw(st.sampled_from(TAGS if anything else allowed))
        attributes = draw(st.sampled_from(ATTRIBUTES))
        if tag == "br":
            parts.append(f"<{tag}{attributes}>")
            continue
        inner = draw(fragments(tag, depth + 1))
        if tag == "colgroup":
            inner = draw(st.sampled_from(["", "<col>", '<col class="x"> <col>']))
        parts.append(f"<{tag}{attributes}>{inner}</{tag}>")
    return "".join(parts)


@given(
    body=fragments(),
    head_ws=st.sampled_from(["", "\n", "\n  "]),
    after=st.sampled_from(["", "\n", "\n\n", " x"]),
    title=texts,
)
@settings(max_examples=1500, deadline=None)
def test_a_tree_it_gives_is_the_html5_parsers(body, head_ws, after, title):
    html = (
        f'{DOCTYPE}\n<html lang="en">{head_ws}<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n</head>{head_ws}<body>{body}</body>{after}</html>{after}"
    )
    assert same_as_html5(html) is not False, html


@pytest.mark.parametrize(
    "html",
    [
        # rows straight in a table get a tbody, one per run of rows
        "<table>\n <tr><td>1</td></tr>\n <tr><td>2</td></tr>\n</table>",
        "<table><thead><tr><th>h</th></tr></thead>\n<tr><td>1</td></tr></table>",
        '<table><caption>c</caption><colgroup><col><col class="x"></colgroup>'
        "<tr><td>1</td></tr><tbody><tr><td>2</td></tr></tbody><tr><td>3</td></tr></table>",
        # nested tables, headings with spans, blocks in cells
        "<table><tr><td><div>a</div><table><tr><th>x</th></tr></table></td></tr></table>",
        '<section class="page"><header><h1><span>DRAFT</span> Invoice</h1></header>'
        "<p>text <span>more</span></p></section>",
    ],
)
def test_the_invoice_templates_constructs_take_the_fast_path(html):
    head = "<html>\n<head>\n<title>t</title>\n</head>\n"
    document = f"{DOCTYPE}\n{head}<body>\n{html}\n</body>\n</html>\n"
    assert same_as_html5(document) is True


@pytest.mark.parametrize(
    "body",
    [
        "<p><div>a div closes the paragraph in HTML5</div></p>",
        "<b>formatting elements</b>",
        "<table>text in a table is moved before it<tr><td>1</td></tr></table>",
        "<div><tr><td>a row outside a table</td></tr></div>",
        "<!-- a comment -->",
        '<div title="a\nline break">XML makes it a space</div>',
        "<div>&nbsp;is no XML entity</div>",
        "<div>not closed",
    ],
)
def test_markup_outside_the_subset_goes_to_the_html5_parser(body):
    document = f"{DOCTYPE}\n<html>\n<head>\n<title>t</title>\n</head>\n<body>{body}</body>\n</html>"
    assert markup.tree(document) is None


def test_a_document_without_its_doctype_goes_to_the_html5_parser():
    assert markup.tree("<html><head><title>t</title></head><body></body></html>") is None


LIST_ITEM = (
    f"{DOCTYPE}\n<html>\n<head>\n<title>t</title>\n</head>\n<body>\n"
    '<div class="x">one</div>\n<div style="display: list-item">two</div>\n</body>\n</html>\n'
)


def test_the_lean_user_agent_stylesheet_only_where_no_element_needs_its_pseudo_elements():
    """Without the user agent's rules for list markers, footnotes and notes only where
    neither the stylesheets nor the document make an element one of those."""
    from weasyprint import HTML

    from billing_core.invoices import weasy

    plain = LIST_ITEM.replace("display: list-item", "color: red")
    assert weasy.html_document(plain, "/", plain_css=True).lean
    assert not weasy.html_document(plain, "/", plain_css=False).lean
    assert not weasy.html_document(LIST_ITEM, "/", plain_css=True).lean
    assert weasy.plain_stylesheet("td.note { color: red } .tax-note { margin: 0 }")
    for text in ("li { display: list-item }", "p { float: footnote }", "@import 'more.css';"):
        assert not weasy.plain_stylesheet(text), text
    assert not weasy.plain_stylesheet("p { position: note(side) }")
    # A list item keeps its marker: the PDF is WeasyPrint's own.
    document = weasy.html_document(LIST_ITEM, "/", plain_css=True)
    assert document.render().write_pdf() == HTML(string=LIST_ITEM, base_url="/").write_pdf()
    assert (
        weasy.html_document(plain, "/", plain_css=True).render().write_pdf()
        == HTML(string=plain, base_url="/").write_pdf()
    )
