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
    # Looked up inline by the environment's code generator: nested, in expressions.
    nested = {"a": {"b": {"c": "deep"}}, "n": types.SimpleNamespace(d={"e": 5})}
    assert render("{{ x.a.b.c }} {{ x.n.d.e + 1 }} {{ x.a.b.c if x.a.b else 0 }}", x=nested) == (
        "deep 6 deep"
    )


def test_templates_write_every_value_escaped_as_markupsafe_escapes_it():
    from markupsafe import Markup, escape

    env = _Environment(undefined=jinja2.StrictUndefined, autoescape=True)
    template = env.from_string("<p>{{ a }}|{{ b }}|{{ c }}|{{ d }}|{{ e | e }}</p>")
    hostile = "<script>alert('x')</script> & \"quoted\""
    values = dict(a=hostile, b=Markup("<b>kept</b>"), c=12.5, d=None, e=hostile)
    expected = "<p>{}|{}|{}|{}|{}</p>".format(*(escape(v) for v in values.values()))
    assert template.render(**values) == expected
    with pytest.raises(jinja2.UndefinedError):
        template.render(a=1, b=2, c=3, e=4)
    # The same as Jinja's own code generator writes.
    plain = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=True)
    source = (
        "{{ r.a }}{{ r.b }}{{ r.c }}{{ [r.a, 1] | join(',') }}{% for x in r.l %}{{ x }}{% endfor %}"
    )
    r = {"a": hostile, "b": Markup("<i>"), "c": 3, "l": [hostile, Markup("<u>"), None]}
    assert env.from_string(source).render(r=r) == plain.from_string(source).render(r=r)
