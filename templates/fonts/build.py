"""Rebuild the invoice fonts from DejaVu Sans (Debian's fonts-dejavu-core):

    .venv/bin/python templates/fonts/build.py [/usr/share/fonts/truetype/dejavu]

Why: WeasyPrint embeds a subset of every font a PDF uses, and without HarfBuzz's
subsetter (libharfbuzz-subset0) it subsets with fontTools, which parses the whole font
each time: DejaVu Sans's 6,000 glyphs and its OpenType layout tables cost about 0.28 s
per font per PDF, most of a PDF's time. These copies keep the scripts invoices are
written in (Latin, Greek, Cyrillic, punctuation, currency and number signs), keep
kerning as a classic `kern` table (which HarfBuzz applies when a font has no GPOS), and
drop hinting (WeasyPrint drops it from PDFs anyway). Text outside them falls back to
the system's fonts, glyph by glyph.

The Bitstream Vera licence (LICENSE here) lets modified fonts be distributed under a
name without "Bitstream" or "Vera"; the copies are renamed "Invoice Sans".
"""

from __future__ import annotations

import sys
from pathlib import Path

from fontTools import subset
from fontTools.ttLib import TTFont

HERE = Path(__file__).resolve().parent
FAMILY = "Invoice Sans"

# What invoices are written in; text outside these ranges falls back to system fonts.
UNICODES = [
    (0x0020, 0x007E),  # Basic Latin
    (0x00A0, 0x024F),  # Latin-1, Latin Extended-A and -B
    (0x0300, 0x036F),  # combining diacritical marks
    (0x0370, 0x03FF),  # Greek
    (0x0400, 0x04FF),  # Cyrillic
    (0x1E00, 0x1EFF),  # Latin Extended Additional (Vietnamese, Welsh, ...)
    (0x2000, 0x206F),  # general punctuation: dashes, quotes, ellipsis, thin spaces
    (0x20A0, 0x20CF),  # currency signs
    (0x2100, 0x214F),  # letterlike symbols (numero, trade mark)
    (0x2190, 0x2193),  # arrows
    (0x2212, 0x2215),  # minus, minus-or-plus, dot plus, division slash
    (0x2248, 0x2248),  # almost equal to
    (0x2260, 0x2265),  # not equal, less and greater or equal
    (0xFFFD, 0xFFFD),  # replacement character
]

# Glyphs most invoices use come first: fontTools keeps every glyph up to the last one a
# PDF uses, so an invoice written in these embeds a font of a few hundred glyphs.
FIRST = [
    (0x0020, 0x007E),
    (0x00A0, 0x00FF),
    (0x2010, 0x2026),
    (0x2030, 0x203A),
    (0x20AC, 0x20AC),
    (0x2122, 0x2122),
    (0x2212, 0x2212),
    (0xFFFD, 0xFFFD),
]

FACES = {
    "InvoiceSans-Regular.ttf": ("DejaVuSans.ttf", "Regular"),
    "InvoiceSans-Bold.ttf": ("DejaVuSans-Bold.ttf", "Bold"),
}


def build(source_dir: Path) -> None:
    for target, (source, style) in FACES.items():
        options = subset.Options()
        options.legacy_kern = True
        options.hinting = False
        options.layout_features = []
        options.drop_tables += ["GSUB", "GPOS", "GDEF", "MATH", "FFTM"]
        options.name_IDs = [0, 1, 2, 3, 4, 5, 6, 7, 13, 14]  # with copyright, licence
        options.glyph_names = False
        font = TTFont(source_dir / source, recalcTimestamp=False)  # the same bytes each build
        subsetter = subset.Subsetter(options)
        subsetter.populate(unicodes=[u for first, last in UNICODES for u in range(first, last + 1)])
        subsetter.subset(font)
        _put_first(font, [u for first, last in FIRST for u in range(first, last + 1)])
        _rename(font, style)
        font.save(HERE / target)
        print(f"{HERE / target}: {len(font.getGlyphOrder())} glyphs")


def _put_first(font: TTFont, unicodes: list[int]) -> None:
    """Reorder the glyphs: .notdef, then those of `unicodes` and their components."""
    order = font.getGlyphOrder()
    cmap = font.getBestCmap()
    glyf = font["glyf"]
    font.ensureDecompiled()  # every table by glyph name before the order changes
    first: dict[str, None] = {order[0]: None}

    def take(name: str) -> None:
        if name not in first:
            first[name] = None
            for component in glyf[name].getComponentNames(glyf):
                take(component)

    for u in unicodes:
        if u in cmap:
            take(cmap[u])
    font.setGlyphOrder(list(first) + [g for g in order if g not in first])
    glyf.glyphOrder = font.getGlyphOrder()


def _rename(font: TTFont, style: str) -> None:
    """The licence's condition: a modified font takes a name of its own."""
    full = f"{FAMILY} {style}" if style != "Regular" else FAMILY
    names = {
        1: FAMILY,
        2: style,
        3: f"{FAMILY.replace(' ', '')}-{style}; derived from DejaVu Sans",
        4: full,
        6: f"{FAMILY.replace(' ', '')}-{style}",
        16: FAMILY,
        17: style,
    }
    table = font["name"]
    for name_id, value in names.items():
        table.removeNames(nameID=name_id)
        table.setName(value, name_id, 3, 1, 0x409)


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/usr/share/fonts/truetype/dejavu"))
