"""Reading one catalog entry: its fields as checked values, each problem as one line that
names the file's entry and field and the reason (`customers[3] (acme).currency: ...`).
"""

from __future__ import annotations

import functools
import re
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from billing_core.domain.limits import FIRST_DAY, LAST_DAY, TEXT_BYTES
from billing_core.domain.money import MINOR_UNITS, MoneyError, parse_decimal, shown

EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
# The longest payment terms a catalog may set, in days (ten years).
MAX_TERMS_DAYS = 3650
SECTIONS = ("issuer", "tax_rates", "customers", "metrics", "prices", "subscriptions", "credits")
ID_KEYS = {
    "issuer": "name",
    "tax_rates": "jurisdiction",
    "customers": "id",
    "metrics": "code",
    "prices": "code",
    "subscriptions": "id",
    "credits": "id",
}
POOL_MODES = ("breakdown", "summary", "child")
TIMINGS = ("in_advance", "in_arrears")

# What the calendar and the store hold (SPEC §10).
MAX_INT = 2_147_483_647  # an INTEGER column on PostgreSQL
_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_NOT_STORABLE = re.compile("[\x00\ud800-\udfff]")


@functools.cache
def column_length(model: Any, column: str) -> int | None:
    """The most characters a column holds (VARCHAR(n) on PostgreSQL), or None."""
    return getattr(model.__table__.c[column].type, "length", None)


class CatalogError(ValueError):
    """A catalog refused whole: one problem per entry and field, each on one line."""

    def __init__(self, problems: list[str]):
        problems = [one_line(p) for p in problems]
        super().__init__("; ".join(problems))
        self.problems = problems


def one_line(text: str) -> str:
    """Text fit for one line of a terminal: line breaks, escape codes and bytes that were
    not UTF-8 are written as escapes."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def text_problem(value: str) -> str | None:
    """Why the store cannot hold a text value, or None."""
    if len(value) <= TEXT_BYTES // 4 and value.isprintable():
        return None  # the common case, quickly: no NUL, no surrogate, short enough
    bad = _NOT_STORABLE.search(value)
    if bad is not None:
        at = f"character {bad.start() + 1}"
        if bad.group() == "\x00":
            return f"holds a NUL character ({at}), which the store cannot hold"
        return f"is not UTF-8 text ({at})"
    if len(value) * 4 > TEXT_BYTES and len(value.encode("utf-8")) > TEXT_BYTES:
        return f"is longer than 64 KiB ({len(value.encode('utf-8'))} bytes)"
    return None


def entry_key(value: Any) -> str | None:
    """An entry's id as its label shows it: only clean text of a sensible length."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    else:
        return None
    if len(text) > 128 or text_problem(text) is not None:
        return None
    return text


def _label(section: str, index: int | None, raw: Any) -> str:
    key = entry_key(raw.get(ID_KEYS[section])) if isinstance(raw, dict) else None
    where = section if index is None else f"{section}[{index}]"
    return f"{where} ({key})" if key is not None else where


def sorted_keys(keys: Any) -> list:
    return sorted(keys, key=lambda k: (not isinstance(k, str), str(k)))


class Entry:
    """Reads the fields of one catalog entry, collecting problems with their location."""

    def __init__(
        self,
        section: str,
        index: int | None,
        raw: Any,
        problems: list[str],
        label: str | None = None,
    ):
        self.raw = raw if isinstance(raw, dict) else {}
        self.label = label or _label(section, index, raw)
        self.problems = problems
        if not isinstance(raw, dict):
            self.fail("must be a mapping")

    def fail(self, message: str, name: str | None = None) -> None:
        self.problems.append(f"{self.label}{'.' + name if name else ''}: {message}")

    def known(self, *names: str) -> None:
        for name in sorted_keys(set(self.raw) - set(names)):
            self.fail(f"unknown key (known: {', '.join(names)})", shown_key(name))

    def text(
        self,
        name: str,
        required: bool = True,
        default: str | None = None,
        max_length: int | None = None,
    ) -> str | None:
        value = self.raw.get(name)
        if (
            value.__class__ is str
            and value
            and len(value) <= (max_length or TEXT_BYTES // 4)
            and value.isprintable()
        ):
            return value  # the common case, quickly
        return self.text_of(value, name, required, default, max_length)

    def text_of(
        self,
        value: Any,
        name: str,
        required: bool = True,
        default: str | None = None,
        max_length: int | None = None,
    ) -> str | None:
        if value is None or value == "":
            if required:
                self.fail("is required", name)
            return default
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.fail(f"must be text, got {shown(value)}", name)
            return default
        text = str(value)
        problem = text_problem(text)
        if problem is None and max_length is not None and len(text) > max_length:
            problem = f"must be at most {max_length} characters"
        if problem is not None:
            self.fail(problem, name)
            return default
        return text

    def lines(self, name: str) -> list[str] | None:
        """A list of text lines (an address, payment instructions); one string is one
        line."""
        value = self.raw.get(name)
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.fail("must be a list of lines", name)
            return None
        out = [self.text_of(line, f"{name}[{j}]") for j, line in enumerate(value)]
        return [line for line in out if line is not None]

    def email(self, name: str = "email", max_length: int | None = None) -> str | None:
        """An address mail can go to: one @ with text either side, no spaces."""
        value = self.text(name, required=False, max_length=max_length)
        if value is not None and not EMAIL.fullmatch(value):
            self.fail(f"not an email address: {shown(value)}", name)
            return None
        return value

    def locale(self, name: str = "locale") -> str | None:
        """A locale Babel knows (en_US, de_DE, ja_JP), as Babel writes it."""
        from babel import Locale, UnknownLocaleError

        value = self.text(name, required=False, max_length=32)
        if value is None:
            return None
        try:
            return str(Locale.parse(value.replace("-", "_")))
        except (UnknownLocaleError, ValueError, TypeError):
            self.fail(f"unknown locale {shown(value)} (e.g. en_US, de_DE)", name)
            return None

    def choice(self, name: str, choices: tuple[str, ...], default: str | None) -> str | None:
        value = self.text(name, required=default is None, default=default)
        if value is not None and value not in choices:
            self.fail(f"must be one of {', '.join(choices)}, got {shown(value)}", name)
        return value

    def boolean(self, name: str, default: bool | None) -> bool | None:
        value = self.raw.get(name)
        if value is None:  # left out, or written as null: the default
            return default
        if not isinstance(value, bool):
            self.fail(f"must be true or false, got {shown(value)}", name)
            return default
        return value

    def integer(self, name: str, lo: int, hi: int, default: int | None) -> int | None:
        value = self.raw.get(name)
        if value is None:  # left out, or written as null: the default
            return default
        number = None
        if isinstance(value, Decimal | str) or (
            isinstance(value, int) and not isinstance(value, bool)
        ):
            try:
                number = Decimal(value.strip() if isinstance(value, str) else value)
            except InvalidOperation:
                number = None
        if number is None or not number.is_finite() or number != number.to_integral_value():
            self.fail(f"must be a whole number, got {shown(value)}", name)
            return default
        if number < lo or number > hi:
            self.fail(f"must be between {lo} and {hi}", name)
            return default
        return int(number)

    def decimal(
        self,
        name: str,
        required: bool = True,
        positive: bool = False,
        at_most: Decimal | None = None,
    ) -> Decimal | None:
        value = self.raw.get(name)
        if value is None:
            if required:
                self.fail("is required", name)
            return None
        try:
            number = parse_decimal(value, name)
        except MoneyError as err:
            self.fail(str(err).removeprefix(f"{name} "), name)
            return None
        if number < 0 or (positive and number == 0):
            self.fail("must be positive" if positive else "must be zero or more", name)
            return None
        if at_most is not None and number > at_most:
            self.fail(f"must be at most {at_most}", name)
            return None
        return number

    def day(self, name: str, required: bool = True) -> date | None:
        return self.day_of(self.raw.get(name), name, required)

    def day_of(self, value: Any, name: str, required: bool = True) -> date | None:
        if value is None:
            if required:
                self.fail("is required", name)
            return None
        day = None
        if isinstance(value, date) and not isinstance(value, datetime):
            day = value
        elif isinstance(value, str) and _ISO_DAY.fullmatch(value):
            try:
                day = date.fromisoformat(value)
            except ValueError:
                day = None
        if day is None:
            self.fail(f"must be a date (YYYY-MM-DD), got {shown(value)}", name)
            return None
        if not FIRST_DAY <= day <= LAST_DAY:
            self.fail(f"must be between {FIRST_DAY} and {LAST_DAY}, got {day}", name)
            return None
        return day

    def currency(self, name: str = "currency") -> str | None:
        value = self.text(name)
        if value is not None and value not in MINOR_UNITS:
            self.fail(f"unknown currency code {shown(value)} (ISO 4217)", name)
            return None
        return value


def shown_key(name: Any) -> str:
    """A key of the file as a location names it (cut if long)."""
    text = name if isinstance(name, str) else repr(name)
    return text if len(text) <= 60 else text[:59] + "…"


def section_list(data: dict, section: str, problems: list[str]) -> list:
    value = data.get(section) or []
    if not isinstance(value, list):
        problems.append(f"{section}: must be a list")
        return []
    return value
