"""Documents' templates: how a dotted name in a template is looked up."""

from __future__ import annotations

import types

import jinja2
import pytest

from billing_core.invoices.documents import _Environment


def test_templates_read_a_dicts_keys_first_and_anything_else_as_jinja_does():
    env = _Environment(undefined=jinja2.StrictUndefined)
    render = lambda source, **data: env.from_string(source).render(**data)  # noqa: E731
    assert render("{{ row.amount }}", row={"amount": "$1.00"}) == "$1.00"
    assert render("{{ row.items }}", row={"items": 3}) == "3"  # the key, not the method
    assert render("{{ row.get('x', 7) }}", row={}) == "7"  # no such key: the method
    assert render("{{ o.name }}", o=types.SimpleNamespace(name="HQ")) == "HQ"
    with pytest.raises(jinja2.UndefinedError):
        render("{{ row.missing }}", row={"amount": 1})
