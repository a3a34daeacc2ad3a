"""What the calendar and the store hold: input beyond these is refused at the door, entry
by entry or row by row (SPEC §10). Catalogs and usage files share them; amounts are
bounded in `money` (DECIMAL_LIMIT, DECIMAL_PLACES)."""

from __future__ import annotations

from datetime import date

FIRST_DAY = date(1900, 1, 1)
LAST_DAY = date(2199, 12, 31)
TEXT_BYTES = 64 * 1024  # one text field, in bytes of UTF-8
MAX_DEPTH = 32  # containers nested in one document, the outermost being the first
