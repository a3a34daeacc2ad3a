"""Who an invoice is from and to (SPEC §7.1): the catalog's keys for the issuer, the
billed customer, tax rates and credit grants, refused with one line when wrong, frozen
with an issued invoice, its invoice and due dates in the export, and its documents
written in the billed customer's locale."""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from billing_core.inputs.catalog import CatalogError
from billing_core.invoices.documents import write_document
from billing_core.invoices.lifecycle import issue
from billing_core.store.engine import unit_of_work
from tests.helpers import close, import_yaml, invoices

CATALOG = """
issuer: {name: Acme Cloud Ltd, invoice_prefix: INV, address: [1 Main St, Springfield IL 62701, US],
         tax_id: US12-3456789, email: billing@acme.example, timezone: America/Chicago,
         locale: en_US, payment_terms_days: 30,
         payment_instructions: [Pay by bank transfer, "IBAN: GB33 BUKB 2020 1555 5555 55"]}
tax_rates: [{jurisdiction: DE, rate: "0.19", name: VAT},
            {jurisdiction: EU-RC, rate: "0", name: VAT,
             note: "Reverse charge: VAT to be accounted for by the recipient."}]
customers:
  - {id: kessler, name: Kessler GmbH, currency: EUR, jurisdiction: DE,
     address: [Hauptstr. 1, 10115 Berlin, DE], tax_id: DE123456789, email: ap@kessler.example,
     locale: de_DE, payment_terms_days: 14}
prices:
  - {code: fee, product: Platform, currency: EUR, model: flat, amount: "1234.56"}
subscriptions:
  - {id: s-kessler, customer: kessler, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: fee, timing: in_advance}]}
credits:
  - {id: promo, name: Launch credit, customer: kessler, amount: "25.00", currency: EUR,
     effective: 2026-01-01}
"""


def document(invoice_id: int, path: Path) -> str:
    with unit_of_work() as session:
        write_document(session, invoice_id, path, "billing")
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", path.read_text())))


def lang(path: Path) -> str:
    return re.search(r'<html lang="([^"]+)">', path.read_text())[1]


def snapshot(store, invoice_id: int) -> dict:
    identity = store.scalar("SELECT identity FROM invoices WHERE id = :i", i=invoice_id)
    return json.loads(identity) if isinstance(identity, str) else identity


def test_the_parties_are_frozen_with_the_invoice_and_dated_in_the_export(store, tmp_path):
    import_yaml(CATALOG)
    close("2026-02-01")
    jan, feb = invoices()
    with unit_of_work() as session:
        # 03:00 UTC on 1 February is still 31 January in Chicago, where the issuer is.
        issue(session, ids=[jan["id"]], now=datetime(2026, 2, 1, 3, 0, tzinfo=UTC))
        session.commit()
    frozen = snapshot(store, jan["id"])
    assert frozen["issuer"]["tax_id"] == "US12-3456789"
    assert frozen["issuer"]["payment_instructions"][1] == "IBAN: GB33 BUKB 2020 1555 5555 55"
    assert frozen["billed"]["address"] == ["Hauptstr. 1", "10115 Berlin", "DE"]
    assert frozen["billed"]["tax_id"] == "DE123456789"
    assert frozen["billed"]["locale"] == "de_DE"
    assert frozen["tax_rates"]["DE"] == {"rate": "0.19", "name": "VAT"}
    assert store.scalar("SELECT name FROM credit_grants WHERE id = 'promo'") == "Launch credit"

    # The catalog changes after issue; the issued invoice keeps who it was to, and the
    # locale its documents are written in.
    changed = CATALOG.replace("tax_id: DE123456789", "tax_id: DE999999999")
    import_yaml(changed.replace("locale: de_DE", "locale: ja_JP"), name="changed.yaml")
    assert snapshot(store, jan["id"])["billed"]["tax_id"] == "DE123456789"

    sent = document(jan["id"], tmp_path / "jan.html")
    assert lang(tmp_path / "jan.html") == "de-DE"
    for shown in (
        "Invoice date 31. Jan. 2026",
        "Due date 14. Feb. 2026",
        "Billing date 1. Jan. 2026",
        "Terms Net 14",
        "Tax ID US12-3456789",
        "billing@acme.example",
        "Hauptstr. 1 10115 Berlin DE Tax ID DE123456789 ap@kessler.example",
        "Payment Pay by bank transfer IBAN: GB33 BUKB 2020 1555 5555 55",
        "VAT 19 % (DE)",
    ):
        assert shown in sent, shown
    # Amounts in German: 1,234.56 + 19 % VAT (234.57) - 25.00 credit = 1,444.13.
    for amount in ("1.234,56 €", "234,57 €", "-25,00 €", "1.444,13 €"):
        assert amount in sent, amount
    assert "€1" not in sent and "1,234.56" not in sent
    draft = document(feb["id"], tmp_path / "feb.html")
    assert "Invoice date Draft" in draft and "Due date Draft" in draft
    assert "Terms Net 14" in draft
    # A draft reads the catalog as it is now: Japanese separators for the same euros.
    assert lang(tmp_path / "feb.html") == "ja-JP"
    assert "€1,234.56" in draft and "Billing date 2026年2月1日" in draft

    exported = {i["id"]: i for i in invoices()}
    assert exported[jan["id"]]["issue_date"] == "2026-01-31"
    assert exported[jan["id"]]["due_date"] == "2026-02-14"  # the customer's 14 days
    assert exported[feb["id"]]["issue_date"] is None
    assert exported[feb["id"]]["due_date"] is None


def test_a_tax_rate_prints_its_name_and_note(store, tmp_path):
    import_yaml(CATALOG.replace("name: VAT}", 'name: VAT, note: "Tax point: the invoice date."}'))
    close("2026-01-01")
    (jan,) = invoices()
    sent = document(jan["id"], tmp_path / "jan.html")
    assert "VAT 19 % (DE) on 1.234,56 €" in sent
    assert "Tax point: the invoice date." in sent


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        (
            "email: ap@kessler.example",
            "email: ap at kessler",
            "customers[0] (kessler).email: not an email address: 'ap at kessler'",
        ),
        (
            "locale: de_DE",
            "locale: xx_YY",
            "customers[0] (kessler).locale: unknown locale 'xx_YY' (e.g. en_US, de_DE)",
        ),
        (
            "payment_terms_days: 14}",
            "payment_terms_days: -1}",
            "customers[0] (kessler).payment_terms_days:",
        ),
        (
            "address: [Hauptstr. 1, 10115 Berlin, DE]",
            "address: {street: Hauptstr. 1}",
            "customers[0] (kessler).address: must be a list of lines",
        ),
        (
            "timezone: America/Chicago",
            "timezone: Mars/Base",
            "issuer (Acme Cloud Ltd).timezone: unknown time zone 'Mars/Base'",
        ),
        ("name: Launch credit,", "name: [1, 2],", "credits[0] (promo).name: must be text"),
        ("name: VAT}", "nome: VAT}", "tax_rates[0] (DE).nome: unknown key"),
    ],
)
def test_a_wrong_value_is_refused_in_one_line_and_changes_nothing(store, old, new, problem):
    assert old in CATALOG
    with pytest.raises(CatalogError) as refused:
        import_yaml(CATALOG.replace(old, new))
    assert len(refused.value.problems) == 1, refused.value.problems
    assert refused.value.problems[0].startswith(problem), refused.value.problems
    assert "\n" not in refused.value.problems[0]
    with unit_of_work() as session:
        assert session.execute(sa.text("SELECT count(*) FROM customers")).scalar() == 0


REVERSE_CHARGE = """
customers:
  - {id: nordwind, name: Nordwind BV, currency: EUR, jurisdiction: EU-RC,
     address: [Keizersgracht 1, Amsterdam, NL], tax_id: NL123456789B01}
  - {id: kessler-fr, name: Kessler France, currency: EUR, jurisdiction: EU-RC, parent: kessler}
subscriptions:
  - {id: s-nordwind, customer: nordwind, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: fee, timing: in_advance}]}
  - {id: s-kessler-fr, customer: kessler-fr, start: 2026-01-01, cadence: monthly,
     billing_day: 1, items: [{price: fee, timing: in_advance}]}
"""


def with_reverse_charge(catalog: str) -> str:
    """CATALOG and the customers of REVERSE_CHARGE, one YAML document."""
    extra_customers, extra_subscriptions = REVERSE_CHARGE.split("subscriptions:")
    return catalog.replace(
        "prices:", extra_customers.replace("customers:", "").strip("\n") + "\nprices:"
    ).replace("credits:", extra_subscriptions.strip("\n") + "\ncredits:")


def test_a_rate_of_0_shows_with_its_note_and_is_frozen_at_issue(store, tmp_path):
    """A reverse charge (rate 0, with a note) makes no tax line, but the invoice shows the
    rate on what it applied to, at 0, and the note; issuing freezes both."""
    import_yaml(with_reverse_charge(CATALOG))
    close("2026-01-01")
    nordwind = next(i for i in invoices() if i["billed_customer"] == "nordwind")
    assert nordwind["tax_total"] == "0.00"
    assert not [x for x in nordwind["lines"] if x["kind"] == "tax"]  # nothing stored
    with unit_of_work() as session:
        issue(session, ids=[nordwind["id"]])
        session.commit()
    frozen = snapshot(store, nordwind["id"])
    assert frozen["tax_rates"] == {
        "EU-RC": {
            "rate": "0",
            "name": "VAT",
            "note": "Reverse charge: VAT to be accounted for by the recipient.",
        }
    }
    assert frozen["taxed_at"] == {"nordwind": "EU-RC"}
    # The catalog drops the note later: the issued invoice keeps it.
    import_yaml(
        with_reverse_charge(CATALOG).replace(
            'note: "Reverse charge: VAT to be accounted for by the recipient."', ""
        ),
        name="changed.yaml",
    )
    sent = document(nordwind["id"], tmp_path / "nordwind.html")
    assert "VAT 0% (EU-RC) on €1,234.56 €0.00" in sent
    assert "Reverse charge: VAT to be accounted for by the recipient." in sent


def test_a_rate_of_0_follows_where_the_lines_are_taxed(store, tmp_path):
    """On a roll-up taxed where the billed customer is, a child's rate of 0 does not
    apply and its note does not show; taxed where each serviced customer is, the child's
    section shows the rate of 0 and the note, the parent's its 19%."""
    import_yaml(with_reverse_charge(CATALOG))
    close("2026-01-01")
    kessler = next(i for i in invoices() if i["billed_customer"] == "kessler")
    billed = document(kessler["id"], tmp_path / "billed.html")
    # Each section at the parent's rate, written in Kessler's locale (de_DE).
    assert billed.count("VAT 19 % (DE) on 1.234,56 € 234,57 €") == 2
    assert "EU-RC" not in billed and "Reverse charge" not in billed

    import_yaml(
        with_reverse_charge(CATALOG).replace(
            "payment_terms_days: 14}", "payment_terms_days: 14,\n     tax_basis: serviced}"
        ),
        name="serviced.yaml",
    )
    close("2026-01-01")
    kessler = next(i for i in invoices() if i["billed_customer"] == "kessler")
    serviced = document(kessler["id"], tmp_path / "serviced.html")
    # The sections (after the summary by customer): the parent's, then the child's.
    parent = serviced[serviced.index("Kessler GmbH kessler · billed customer") :]
    parent, france = parent.split("Kessler France kessler-fr", 1)
    assert "VAT 19 % (DE) on 1.234,56 € 234,57 €" in parent and "EU-RC" not in parent
    assert "VAT 0 % (EU-RC) on 1.234,56 € 0,00 €" in france and "(DE)" not in france
    assert "Reverse charge: VAT to be accounted for by the recipient." in serviced
