"""Invoice date, due date and terms (SPEC §7.1): the issuer's calendar decides the day,
the billed customer's terms win over the issuer's, 30 days without either; the same order
picks the locale its documents are written in, en_US without either."""

from __future__ import annotations

from datetime import UTC, date, datetime

from billing_core.domain.terms import dates_of, invoice_date, locale_of, terms_days, terms_label


def test_the_invoice_date_is_the_issuers_day():
    issued_at = datetime(2026, 2, 1, 3, 0, tzinfo=UTC)
    assert invoice_date(issued_at, "America/Chicago") == date(2026, 1, 31)
    assert invoice_date(issued_at, "Europe/Berlin") == date(2026, 2, 1)
    assert invoice_date(issued_at, None) == date(2026, 2, 1)


def test_terms_come_from_the_customer_then_the_issuer_then_thirty_days():
    assert terms_days(14, 45) == 14
    assert terms_days(None, 45) == 45
    assert terms_days(None, None) == 30
    assert terms_days(0, 45) == 0
    assert terms_label(30) == "Net 30"
    assert terms_label(0) == "Due on receipt"


def test_dates_of_an_issued_invoice_read_its_frozen_identity():
    identity = {
        "issuer": {"timezone": "America/Chicago", "payment_terms_days": 45},
        "billed": {"payment_terms_days": 14},
    }
    issued_at = datetime(2026, 2, 1, 3, 0, tzinfo=UTC)
    assert dates_of(issued_at, identity) == (date(2026, 1, 31), date(2026, 2, 14), 14)
    # A snapshot taken before the store knew terms: UTC and 30 days.
    assert dates_of(issued_at, {"issuer": {}, "billed": {}}) == (
        date(2026, 2, 1),
        date(2026, 3, 3),
        30,
    )
    assert dates_of(None, identity) is None  # a draft


def test_the_locale_comes_from_the_customer_then_the_issuer_then_en_us():
    both = {"issuer": {"locale": "en_GB"}, "billed": {"locale": "de_DE"}}
    assert locale_of(both) == "de_DE"
    assert locale_of({"issuer": {"locale": "en_GB"}, "billed": {"name": "Kessler"}}) == "en_GB"
    assert locale_of({"issuer": {"locale": "ja_JP"}, "billed": {"locale": None}}) == "ja_JP"
    assert locale_of({"issuer": {}, "billed": {}}) == "en_US"
    assert locale_of({"issuer": {"name": "Acme"}, "billed": {"locale": "ja_JP"}}) == "ja_JP"
    # A snapshot taken before the store knew locales, and no identity at all.
    assert locale_of({"customers": {}}) == locale_of(None) == "en_US"
