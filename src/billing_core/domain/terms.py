"""When an invoice is dated and due (SPEC §7.1): the invoice date is the day it was issued
in the issuer's time zone; it is due its payment terms later (the billed customer's, else
the issuer's, else 30 days). Its documents write amounts and dates in the billed
customer's locale, else the issuer's, else en_US."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

DEFAULT_TERMS_DAYS = 30
DEFAULT_LOCALE = "en_US"


def terms_days(customer_days: int | None, issuer_days: int | None) -> int:
    """The payment terms that apply: the billed customer's, else the issuer's, else 30."""
    if customer_days is not None:
        return customer_days
    return issuer_days if issuer_days is not None else DEFAULT_TERMS_DAYS


def invoice_date(issued_at: datetime, timezone: str | None) -> date:
    """The day an invoice was issued, on the issuer's calendar (UTC without a zone)."""
    return issued_at.astimezone(ZoneInfo(timezone or "UTC")).date()


def due_date(issued: date, days: int) -> date:
    return issued + timedelta(days=days)


def terms_label(days: int) -> str:
    """The terms as an invoice prints them."""
    return "Due on receipt" if days == 0 else f"Net {days}"


def terms_of(identity: dict | None) -> int:
    """The payment terms of an invoice's identity (frozen at issue, or a draft's live one)."""
    identity = identity or {}
    issuer, billed = identity.get("issuer") or {}, identity.get("billed") or {}
    return terms_days(billed.get("payment_terms_days"), issuer.get("payment_terms_days"))


def dates_of(issued_at: datetime | None, identity: dict | None) -> tuple[date, date, int] | None:
    """(invoice date, due date, terms in days) of an issued invoice from its frozen
    identity; None for a draft."""
    if issued_at is None:
        return None
    days = terms_of(identity)
    issued = invoice_date(issued_at, ((identity or {}).get("issuer") or {}).get("timezone"))
    return issued, due_date(issued, days), days


def locale_of(identity: dict | None) -> str:
    """The locale an invoice's documents are written in, from its identity (frozen at
    issue, or a draft's live one): the billed customer's, else the issuer's, else en_US."""
    identity = identity or {}
    issuer, billed = identity.get("issuer") or {}, identity.get("billed") or {}
    return billed.get("locale") or issuer.get("locale") or DEFAULT_LOCALE
