"""The PDF's own fonts (templates/fonts): what they cover, how they are named, and that a
PDF is set in them, with the system's fonts for scripts they leave out."""

from __future__ import annotations

import html
import importlib.util
import io
import re
import shutil
import subprocess
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from fontTools.ttLib import TTFont

from billing_core.domain.money import MINOR_UNITS
from billing_core.invoices import weasy
from billing_core.invoices.documents import pdf_document, templates_dir
from billing_core.invoices.formatting import day, money, period

TEMPLATES = Path(templates_dir())
FACES = ("InvoiceSans-Regular.ttf", "InvoiceSans-Bold.ttf")
# Locales written in the scripts the fonts keep (ja_JP's ￥ and 年月日 fall back to the
# system's fonts, as Japanese names do).
LOCALES = ("en_US", "de_DE", "fr_FR", "es_ES", "pl_PL", "ru_RU")


def build_script():
    spec = importlib.util.spec_from_file_location("fonts_build", TEMPLATES / "fonts" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=FACES)
def face(request) -> TTFont:
    return TTFont(TEMPLATES / "fonts" / request.param)


def uncovered(font: TTFont, text: str) -> set[str]:
    cmap = font.getBestCmap()
    return {c for c in text if not c.isspace() and ord(c) not in cmap}


def test_every_amount_in_every_currency_is_in_the_fonts(face):
    text = "".join(
        money(Decimal("-1234567.891"), currency, locale, exact=True)
        for currency in sorted(MINOR_UNITS)
        for locale in LOCALES
    )
    # Except the baht sign, which de_DE, es_ES and ru_RU write for THB (en_US writes the
    # code): outside the fonts' ranges, it falls back to the system's fonts.
    assert uncovered(face, text) <= {"\u0e3f"}


def test_the_templates_own_words_and_dates_are_in_the_fonts(face):
    source = (TEMPLATES / "invoice.html").read_text(encoding="utf-8")
    words = re.sub(r"{[{%#].*?[}%#]}|<[^>]*>", " ", source, flags=re.S)
    css = (TEMPLATES / "invoice.css").read_text(encoding="utf-8")
    content = " ".join(re.findall(r"content:\s*([^;]*)", css))
    dates = "".join(
        day(date(2026, 2, 1), locale) + period(date(2025, 12, 15), date(2026, 1, 15), locale)
        for locale in LOCALES
    )
    assert uncovered(face, html.unescape(words) + content + dates) == set()


def test_latin_greek_and_cyrillic_names_are_in_the_fonts(face):
    names = "Müller & Søn Łódź Ærøskøbing Nguyễn Đức Αθήνα ΑΕ Москва ООО «Ромашка» № 5"
    assert uncovered(face, names) == set()


def test_the_fonts_carry_a_name_of_their_own_as_their_licence_asks(face):
    names = {r.nameID: r.toUnicode() for r in face["name"].names}
    assert names[1] == names[16] == "Invoice Sans"
    for name_id in (1, 3, 4, 6, 16):  # the font's names, not its copyright notice
        assert "Vera" not in names[name_id] and "Bitstream" not in names[name_id]
    assert "Bitstream" in names[0]  # the notice the licence asks to keep
    assert "Permission is hereby granted" in (TEMPLATES / "fonts" / "LICENSE").read_text()


def test_the_glyphs_most_invoices_use_come_first(face):
    # fontTools keeps every glyph up to the last one a PDF uses: an invoice in English,
    # German or French embeds a few hundred glyphs, not the whole font.
    first = [u for a, b in build_script().FIRST for u in range(a, b + 1)]
    cmap = face.getBestCmap()
    order = {name: gid for gid, name in enumerate(face.getGlyphOrder())}
    last = max(order[cmap[u]] for u in first if u in cmap)
    assert last < 400 < len(order) / 3


def test_no_opentype_layout_tables_to_parse_for_each_pdf(face):
    assert {"GSUB", "GPOS", "GDEF"}.isdisjoint(face.keys())
    assert "kern" in face  # kerning kept, in the table HarfBuzz reads without GPOS


def families(text: str) -> set[str]:
    document = pdf_document(f"<html><body><p>{text}</p><p><b>{text}</b></p></body></html>")
    document.write_pdf()
    return {font.family for font in document.fonts.values()}


def test_a_pdf_is_set_in_the_bundled_fonts():
    assert families("Acme GmbH – 1 Feb 2026 · €1,234.56 · ¥1,746,785 · №7") == {"Invoice Sans"}


def has_font_for(char: str) -> bool:
    if shutil.which("fc-list") is None:
        return False
    found = subprocess.run(
        ["fc-list", f":charset={ord(char):x}", "family"], capture_output=True, text=True
    )
    return bool(found.stdout.strip())


@pytest.mark.skipif(not has_font_for("א"), reason="no system font with Hebrew to fall back on")
def test_other_scripts_fall_back_to_the_systems_fonts():
    used = families("שלום Acme")
    assert "Invoice Sans" in used and len(used) > 1


def embedded_fonts(pdf: bytes) -> dict[str, bytes]:
    """The font files a PDF embeds, by the font's name without its subset tag."""
    from pypdf import PdfReader

    found = {}
    for page in PdfReader(io.BytesIO(pdf)).pages:
        for font in page["/Resources"]["/Font"].values():
            font = font.get_object()
            for descendant in font.get("/DescendantFonts", [font]):
                descriptor = descendant.get_object()["/FontDescriptor"].get_object()
                name = str(descriptor["/FontName"]).split("+", 1)[-1]
                found[name] = descriptor["/FontFile2"].get_object().get_data()
    return found


def pdf_of(text: str) -> bytes:
    return pdf_document(f"<html><body><p>{text}</p><p><b>{text}</b></p></body></html>").write_pdf()


def glyphs(font_file: bytes) -> dict[str, bytes]:
    """Each glyph of a font file that has an outline, compiled."""
    font = TTFont(io.BytesIO(font_file))
    glyf = font["glyf"]
    return {
        name: glyf[name].compile(glyf)
        for name in font.getGlyphOrder()
        if glyf[name].numberOfContours != 0
    }


def test_documents_share_font_subsets_that_draw_their_glyphs_as_their_own_would(monkeypatch):
    # Two documents written in the common characters embed the same subset of each face,
    # made once per process ...
    first, second = "Acme GmbH – 1 Feb 2026 · €1,234.56", "Zenith Ltd: 42 × 3 ≈ 126 (−5%)"
    shared = embedded_fonts(pdf_of(first))
    assert shared == embedded_fonts(pdf_of(second))
    assert len(shared) == 2  # regular and bold
    # ... which holds every glyph, as drawn, of the subset each would get alone (the
    # glyph ids are kept either way: the pages draw the same glyphs).
    with monkeypatch.context() as alone:
        alone.setattr(weasy, "_glyphs_of", lambda content, index: ())
        own = {text: embedded_fonts(pdf_of(text)) for text in (first, second)}
    for text in (first, second):
        assert own[text] != shared
        for face, font_file in own[text].items():
            theirs, common = glyphs(font_file), glyphs(shared[face])
            assert theirs and all(common[name] == outline for name, outline in theirs.items())
    # Names in Latin beyond ASCII share a wider subset; other scripts get their own.
    assert embedded_fonts(pdf_of("Łódź Müller")) == embedded_fonts(pdf_of("Ærøskøbing"))
    assert embedded_fonts(pdf_of("Łódź Müller")) != shared
    assert embedded_fonts(pdf_of("Αθήνα ΑΕ")) != embedded_fonts(pdf_of("Москва"))


def test_a_document_gives_the_same_bytes_whatever_was_rendered_before_it(monkeypatch):
    text = "Acme GmbH – 1 Feb 2026 · €1,234.56"
    warm = pdf_of(text)
    monkeypatch.setattr(weasy, "_shared_subsets", {})
    monkeypatch.setattr(weasy, "_level_glyphs", {})
    assert pdf_of(text) == warm
