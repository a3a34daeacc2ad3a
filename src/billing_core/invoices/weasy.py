"""WeasyPrint's HTML document of an invoice, spared costs that are the same for every
invoice and change nothing in how its PDF looks.

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

- Font subsets (`share_font_subsets`): WeasyPrint embeds in each PDF a subset of every
  font it uses, made afresh for each document; without HarfBuzz's subsetter that is
  fontTools parsing and writing the font, some 20 ms per font, a third of a PDF. It keeps
  each glyph's id (a subset only empties the glyphs left out), so any subset holding the
  glyphs a document uses draws it the same. A document whose glyphs of a font are all
  among those of `COMMON` (else of `WIDER`) gets that font's subset for the whole set,
  made once per process; any other document gets its own subset, as before. The same
  document still gives the same bytes, whatever the process rendered before. A shared
  subset's font file is compressed once per process too.
- Layout and styles (`fast_percentages`, `fast_styles`, `shared_font_descriptions`):
  WeasyPrint functions called for every box, style or text, replaced by ones doing the
  same for less (tests/integration/test_documents.py renders with both: the same bytes).
  They copy WeasyPrint's own internals, so they (and the shared subsets' compressed
  streams) are put in only for the WeasyPrint releases they were checked against
  (`CHECKED_RELEASES`, `checked_release`); any other release runs its own code.
"""

from __future__ import annotations

import io
import re
import sys
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


# What invoices are written in (printable ASCII, the spaces, signs and punctuation the
# templates and amounts use); and next, the rest of Latin-1 and Latin Extended-A (names),
# general punctuation and currency signs. A font's subset for either is made once per
# process; only the glyphs the font has count.
COMMON = frozenset([*range(0x20, 0x7F), *map(ord, "\u00a0\u202f\u2009·×÷–—‘’“”…€£¥₹−≈")])
WIDER = COMMON | frozenset([*range(0xA0, 0x180), *range(0x2010, 0x2030), *range(0x20A0, 0x20C0)])
LEVELS = (COMMON, WIDER)
# Fonts larger than this (a system's CJK font) are subset per document, as WeasyPrint does.
SHARED_FONT_BYTES = 2_000_000

# A font file's glyph ids for each of LEVELS, by (font bytes, face index).
_level_glyphs: dict[tuple[bytes, int], tuple[frozenset[int], ...]] = {}
# Subsets made: (font bytes, face index, level, hinting, HarfBuzz's subsetter) -> bytes.
_shared_subsets: dict[tuple[bytes, int, int, bool, bool], bytes] = {}


@cache
def share_font_subsets() -> None:
    """Make WeasyPrint give a document the font subsets of `LEVELS` (made once per
    process) where they hold every glyph it uses of a font, else its own subset.

    WeasyPrint keeps glyph ids when it subsets (fontTools' `retain_gids`, HarfBuzz's
    `RETAIN_GIDS`), so the page draws the same glyphs with either subset; the PDF only
    carries more glyphs than it shows. A font with glyphs WeasyPrint found missing keeps
    its own subset (its .notdef outline depends on them)."""
    from weasyprint.pdf import fonts

    own = fonts.Font.subset

    def subset(self: Any, to_unicode: dict, hinting: bool) -> None:
        content = self.file_content
        if not to_unicode or self.missing or len(content) > SHARED_FONT_BYTES:
            return own(self, to_unicode, hinting)
        used = to_unicode.keys()
        for level, glyphs in enumerate(_glyphs_of(content, self.index)):
            if used <= glyphs:
                key = (content, self.index, level, bool(hinting), fonts.harfbuzz_subset is not None)
                shared = _shared_subsets.get(key)
                if shared is None:
                    own(self, dict.fromkeys(sorted(glyphs)), hinting)
                    shared = _shared_subsets[key] = self.file_content
                self.file_content = shared
                return None
        return own(self, to_unicode, hinting)

    fonts.Font.subset = subset
    if checked_release():
        REPLACED.append((fonts, "pydyf", fonts.pydyf))
        fonts.pydyf = _font_streams_module()


# The WeasyPrint releases whose internals the replaced functions copy, checked by the
# tests rendering with both: another release runs its own functions (the PDFs are as
# WeasyPrint makes them, only slower) until it is checked and added here.
CHECKED_RELEASES = ("70.0",)


def checked_release() -> bool:
    """Whether the installed WeasyPrint is one the replaced functions were checked on."""
    import weasyprint

    return weasyprint.__version__ in CHECKED_RELEASES


def faster_functions() -> None:
    """Put in the faster copies of WeasyPrint's layout, style and font functions, where
    the installed release is one they were checked against."""
    if checked_release():
        fast_percentages()
        fast_styles()
        shared_font_descriptions()


# The compressed bytes of each shared subset's font file stream, by its bytes.
_compressed_subsets: dict[bytes, bytes] = {}


def _font_streams_module() -> Any:
    """pydyf for WeasyPrint's PDF fonts, its `Stream` keeping the compressed bytes of a
    shared subset's font file: the same bytes in every PDF, which pydyf compressed again
    for each (zlib at level 9, 1.6 ms a PDF for the two faces). The stream's bytes are
    the ones pydyf writes (its `data`, with the compression it would have made)."""
    import types
    import zlib

    import pydyf

    class Stream(pydyf.Stream):
        @property
        def data(self) -> bytes:
            content = self.stream[0] if self.compress and len(self.stream) == 1 else None
            if type(content) is not bytes or content not in _shared_contents():
                return super().data
            compressed = _compressed_subsets.get(content)
            if compressed is None:
                compressor = zlib.compressobj(level=9)
                compressed = compressor.compress(content) + compressor.flush()
                _compressed_subsets[content] = compressed
            extra = pydyf.Dictionary(self.extra.copy())
            extra["Filter"] = "/FlateDecode"
            extra["Length"] = len(compressed)
            return b"\n".join((extra.data, b"stream", compressed, b"endstream"))

    module = types.ModuleType("pydyf")
    module.__dict__.update(vars(pydyf))
    module.Stream = Stream  # type: ignore[attr-defined]
    return module


def _shared_contents() -> set[bytes]:
    """The shared subsets' bytes (the set made again when a subset was added)."""
    global _shared_set
    if _shared_set[0] != len(_shared_subsets):
        _shared_set = (len(_shared_subsets), set(_shared_subsets.values()))
    return _shared_set[1]


# (how many subsets were made, their bytes)
_shared_set: tuple[int, set[bytes]] = (0, set())


def _glyphs_of(content: bytes, index: int) -> tuple[frozenset[int], ...]:
    """The glyph ids of the characters of each of `LEVELS` a font has (with .notdef);
    none when fontTools cannot read the font."""
    found = _level_glyphs.get((content, index))
    if found is None:
        from fontTools.ttLib import TTFont, TTLibError

        try:
            font = TTFont(io.BytesIO(content), fontNumber=index, lazy=True)
            cmap = font.getBestCmap() or {}
            found = tuple(
                frozenset({0} | {font.getGlyphID(cmap[u]) for u in level if u in cmap})
                for level in LEVELS
            )
        except (TTLibError, KeyError, ValueError, AssertionError):
            found = ()
        _level_glyphs[(content, index)] = found
    return found


@cache
def fast_percentages() -> None:
    """Give WeasyPrint's layout a `resolve_percentages` that does what its own does,
    property by property in the same order, without two calls, a `getattr` and a
    `setattr` for each of a box's 14 lengths: a length already in pixels (nearly all of
    them) is read straight from its `Dimension`; anything else (a percentage, `auto`, a
    `calc()`) goes through WeasyPrint's own `percentage`. The layout calls it once or
    more for every box it lays out (some 1,400 times for a roll-up's four pages): -3.0 %
    instructions for a roll-up's PDF (callgrind), the same PDF bytes. The layout modules
    imported the function by name, so each of their names for it is pointed at this
    one."""
    import weasyprint.document  # noqa: F401 - every layout module, imported before they are patched
    from weasyprint.css.functions import check_math
    from weasyprint.css.properties import Dimension
    from weasyprint.formatting_structure.boxes import Box, PageBox
    from weasyprint.layout import percent

    original = percent.resolve_percentages
    pct = percent.percentage  # a percentage, `auto`, a `calc()`: WeasyPrint's own
    D = Dimension
    adjust_box_sizing = percent.adjust_box_sizing
    inf = float("inf")
    borders = ("border_top_width", "border_right_width", "border_bottom_width", "border_left_width")

    def resolve_percentages(box: Any, containing_block: Any) -> None:
        if isinstance(containing_block, Box):
            cb_width = containing_block.width
            cb_height = containing_block.height
        else:
            cb_width, cb_height = containing_block
        maybe_height = cb_height if isinstance(box, PageBox) else cb_width
        style = box.style
        v = style["margin_left"]
        box.margin_left = (
            v.value if v.__class__ is D and v.unit == "px" else pct(v, style, cb_width)
        )
        v = style["margin_right"]
        box.margin_right = (
            v.value if v.__class__ is D and v.unit == "px" else pct(v, style, cb_width)
        )
        v = style["margin_top"]
        box.margin_top = (
            v.value if v.__class__ is D and v.unit == "px" else pct(v, style, maybe_height)
        )
        v = style["margin_bottom"]
        box.margin_bottom = (
            v.value if v.__class__ is D and v.unit == "px" else pct(v, style, maybe_height)
        )
        v = style["padding_left"]
        box.padding_left = (
            v.value if v.__class__ is D and v.unit == "px" else pct(v, style, cb_width)
        )
        v = style["padding_right"]
        box.padding_right = (
            v.value if v.__class__ is D and v.unit == "px" else pct(v, style, cb_width)
        )
        v = style["padding_top"]
        box.padding_top = (
            v.value if v.__class__ is D and v.unit == "px" else pct(v, style, maybe_height)
        )
        v = style["padding_bottom"]
        box.padding_bottom = (
            v.value if v.__class__ is D and v.unit == "px" else pct(v, style, maybe_height)
        )
        v = style["width"]
        box.width = v.value if v.__class__ is D and v.unit == "px" else pct(v, style, cb_width)
        v = style["min_width"]
        v = v.value if v.__class__ is D and v.unit == "px" else pct(v, style, cb_width)
        box.min_width = 0 if v == "auto" else v
        v = style["max_width"]
        box.max_width = v.value if v.__class__ is D and v.unit == "px" else pct(v, style, cb_width)
        if cb_height == "auto":
            height = style["height"]
            if height == "auto" or check_math(height) or height.unit == "%":
                box.height = "auto"
            else:
                assert height.unit.lower() == "px"
                box.height = height.value
            refer_min, refer_max = 0, inf
        else:
            v = style["height"]
            box.height = (
                v.value if v.__class__ is D and v.unit == "px" else pct(v, style, cb_height)
            )
            refer_min = refer_max = cb_height
        v = style["min_height"]
        v = v.value if v.__class__ is D and v.unit == "px" else pct(v, style, refer_min)
        box.min_height = 0 if v == "auto" else v
        v = style["max_height"]
        box.max_height = (
            v.value if v.__class__ is D and v.unit == "px" else pct(v, style, refer_max)
        )
        if style["border_collapse"] == "collapse":
            for prop in borders:
                if not hasattr(box, prop):
                    setattr(box, prop, style[prop])
        else:
            box.border_top_width = style["border_top_width"]
            box.border_right_width = style["border_right_width"]
            box.border_bottom_width = style["border_bottom_width"]
            box.border_left_width = style["border_left_width"]
        if style["box_sizing"] != "content-box":  # WeasyPrint's own changes nothing then
            adjust_box_sizing(box, "width")
            adjust_box_sizing(box, "height")

    _replace("resolve_percentages", original, resolve_percentages)


@cache
def fast_styles() -> None:
    """Give WeasyPrint's computed styles a `__missing__` that computes a property the
    cascade left unset the way WeasyPrint's own does, without its work for what such a
    property cannot have (a logical property of the same name, a `var()`, a math
    function): an inherited one is its parent's value, any other its initial value
    (computed where WeasyPrint computes it). A property the cascade set, a physical one
    whose logical twin it set, `position`, `float`, `display`, `page`, text decorations,
    custom properties, and any value with a math function still go to WeasyPrint's own.
    A physical property's logical twin is looked up once per direction, and a value of a
    plain type (a keyword, a number, a length) is not searched for a math function.
    Every box's style is read some 25 times this way (a roll-up: 11,000 times)."""
    from weasyprint.css import ComputedStyle
    from weasyprint.css.computed_values import COMPUTER_FUNCTIONS, PHYSICAL_FUNCTIONS
    from weasyprint.css.functions import check_math
    from weasyprint.css.properties import (
        INHERITED,
        INITIAL_NOT_COMPUTED,
        INITIAL_VALUES,
        Dimension,
    )

    own = ComputedStyle.__missing__
    special = frozenset({"position", "float", "display", "page"})
    # Values without a math function (`check_math` is false for them): most of them.
    plain = frozenset({str, int, float, bool, type(None), Dimension})
    # A physical property's logical twin, by (property, direction): WeasyPrint's
    # functions, whose answer only depends on those (the block direction is always
    # top to bottom).
    logical_keys: dict[tuple[str, str], str] = {}

    def __missing__(self: Any, key: str) -> Any:
        cascaded = self.cascaded
        if key in cascaded or key in special or key[:2] == "__" or key[:16] == "text_decoration_":
            return own(self, key)
        if key in PHYSICAL_FUNCTIONS:
            direction = self["direction"]
            logical = logical_keys.get((key, direction))
            if logical is None:
                logical = PHYSICAL_FUNCTIONS[key](block="ttb", inline=direction)
                logical_keys[(key, direction)] = logical
            if logical in cascaded:
                return own(self, key)
        parent = self.parent_style
        if key in INHERITED and parent is not None:
            value = parent[key]
            if value.__class__ not in plain and check_math(value):
                return own(self, key)
        else:
            value = INITIAL_VALUES[key]
            if value.__class__ not in plain and check_math(value):
                return own(self, key)
            if key in INITIAL_NOT_COMPUTED and key in COMPUTER_FUNCTIONS:
                value = COMPUTER_FUNCTIONS[key](self, key, value)
        self[key] = value
        return value

    ComputedStyle.__missing__ = __missing__
    REPLACED.append((ComputedStyle, "__missing__", own))


@cache
def shared_font_descriptions() -> None:
    """Give WeasyPrint's text layout one Pango font description per font (family, style,
    stretch, weight, size, caps, variations) for the whole process, instead of a new one
    built with nine Pango calls for each text laid out: the layout only hands it to
    `pango_layout_set_font_description`, which copies it, and to Pango's metrics, which
    read it."""
    from weasyprint.text import fonts

    own = fonts.get_font_description
    made: dict[tuple, Any] = {}

    def get_font_description(style: Any) -> Any:
        key = (
            style["font_family"],
            style["font_style"],
            style["font_stretch"],
            style["font_weight"],
            style["font_size"],
            style["font_variant_caps"],
            style["font_variation_settings"],
        )
        try:
            found = made.get(key)
        except TypeError:  # a value that cannot be a key: WeasyPrint's own, each time
            return own(style)
        if found is None:
            found = made[key] = own(style)
        return found

    _replace("get_font_description", own, get_font_description)


# WeasyPrint's functions replaced by ones doing the same for less (`fast_percentages`,
# `fast_styles`, `shared_font_descriptions`, the font streams of `share_font_subsets`):
# (module, name, WeasyPrint's own), for the tests rendering with both.
REPLACED: list[tuple[Any, str, Any]] = []


def _replace(name: str, original: Any, new: Any) -> None:
    """Point every WeasyPrint module's `name` that is `original` at `new`."""
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("weasyprint.") and getattr(module, name, None) is original:
            setattr(module, name, new)
            REPLACED.append((module, name, original))
