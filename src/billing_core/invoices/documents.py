"""Invoice documents as files: HTML from the Jinja2 templates, PDF from that HTML
(WeasyPrint), written where each invoice's documents go.

Which documents a close writes, and their records, are the render step's
(`steps.render`); this module makes and writes one document from its context.
"""

from __future__ import annotations

import atexit
import gc
import hashlib
from collections.abc import Callable
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import sqlalchemy as sa
from jinja2.compiler import CodeGenerator, optimizeconst
from markupsafe import escape
from sqlmodel import Session

from billing_core.config import get_settings
from billing_core.invoices import weasy
from billing_core.invoices.contexts import contexts
from billing_core.invoices.lifecycle import InvoiceError
from billing_core.store import files as outputs
from billing_core.store.models import Invoice


def templates_dir() -> Path:
    configured = get_settings().templates_dir
    if configured is not None:
        return Path(configured)
    return Path(str(resources.files("billing_templates")))


def templates_digest(folder: Path | None = None) -> str:
    """A SHA-256 of what the documents are made with besides their context: every file
    under the templates folder (its path there and its bytes; Python's caches and hidden
    files left out) and the versions of Jinja2 and markupsafe, which write the HTML. The
    render step reads it once per call, and a draft's preview is rendered again when it
    changes (`steps.render.source_hash`)."""
    folder = folder or templates_dir()
    digest = hashlib.sha256(_writers().encode())
    for path in sorted(folder.rglob("*")):
        parts = path.relative_to(folder).parts
        if not path.is_file() or "__pycache__" in parts or any(p[0] == "." for p in parts):
            continue
        digest.update(f"\0{'/'.join(parts)}\0{path.stat().st_size}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@cache
def _writers() -> str:
    from importlib.metadata import version

    return " ".join(f"{name} {version(name)}" for name in ("jinja2", "markupsafe"))


try:  # markupsafe's own escaping, without its Markup wrapper (C, else Python)
    from markupsafe._speedups import _escape_inner
except ImportError:  # pragma: no cover - markupsafe built without its C speedups

    def _escape_inner(value: str) -> str:
        return str(escape(value))


def _escape_output(value: Any) -> Any:
    """What a template writes for `{{ value }}` with autoescape: markupsafe's escape, the
    same characters, without wrapping a plain string in a `Markup` on the way out (the
    written pieces are joined into the document straight away: a third of the template's
    time went to making and dropping those wrappers)."""
    if type(value) is str:
        return _escape_inner(value)
    return escape(value)


class _CodeGenerator(CodeGenerator):
    """Jinja's code generator, writing the two things a document does hundreds of times
    inline instead of as a call of a Python function each (a frame each: some 90,000
    instructions a preview, a tenth of the template's):

    - `row.amount`: a dict's key read where it is (`_Environment.getattr`'s rule: a key
      wins; a dict without it, and anything else, still go to `environment.getattr`);
    - `{{ value }}` with autoescape: a plain string escaped by markupsafe's own C function
      (`_escape_output`'s rule; anything else still goes to `escape`).

    The generated code keeps the value in a local (`_ga_o`, `_ga_v`, `_es_v`) while it
    decides; the written HTML is the same."""

    @optimizeconst
    def visit_Getattr(self, node: Any, frame: Any) -> None:
        if self.environment.is_async:
            super().visit_Getattr(node, frame)
            return
        attr = repr(node.attr)
        self.write("(_ga_v if (_ga_o := ")
        self.visit(node.node, frame)
        self.write(
            f").__class__ is dict and (_ga_v := _ga_o.get({attr}, missing)) is not missing"
            f" else environment.getattr(_ga_o, {attr}))"
        )

    def _inline_escape(self, frame: Any, finalize: Any) -> bool:
        return bool(
            frame.eval_ctx.autoescape and not frame.eval_ctx.volatile and finalize.src is None
        )

    def _output_child_pre(self, node: Any, frame: Any, finalize: Any) -> None:
        if self._inline_escape(frame, finalize):
            self.write("(_escape_str(_es_v) if (_es_v := ")
        else:
            super()._output_child_pre(node, frame, finalize)

    def _output_child_post(self, node: Any, frame: Any, finalize: Any) -> None:
        if self._inline_escape(frame, finalize):
            self.write(").__class__ is str else escape(_es_v))")
        else:
            super()._output_child_post(node, frame, finalize)


class _Template(jinja2.Template):
    """A compiled template whose output escapes with `_escape_output`: Jinja's generated
    code calls the `escape` of its own module namespace, and only for what `{{ }}`
    writes (filters, macros and `Markup` values keep markupsafe's own)."""

    @classmethod
    def _from_namespace(cls, environment: Any, namespace: Any, globals: Any) -> Any:
        namespace["escape"] = _escape_output
        namespace["_escape_str"] = _escape_inner
        return super()._from_namespace(environment, namespace, globals)


class _Environment(jinja2.Environment):
    """Jinja's environment, reading `row.amount` from a dict by its key first.

    Jinja looks a dotted name up as an attribute first and as a key second; every
    document's context is plain dicts, so each of some 150 lookups per document raised
    and caught an AttributeError before finding the key (about a tenth of the time of
    6,000 HTML documents). A key now wins over a dict's own methods (`row.items` is the
    key `items` if there is one); anything else is looked up as Jinja does.
    """

    template_class = _Template
    code_generator_class = _CodeGenerator

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loaded: dict[str, jinja2.Template] = {}

    def get_template(self, name: Any, parent: Any = None, globals: Any = None) -> Any:
        """The template by its name, loaded once: an environment that does not reload
        (`_environment`) keeps the templates it loaded in a plain dict, where Jinja's own
        cache makes a weak reference and takes a lock at every lookup (twice a document:
        the template and the stylesheet it includes)."""
        if parent is not None or globals or self.auto_reload or not isinstance(name, str):
            return super().get_template(name, parent, globals)
        found = self._loaded.get(name)
        if found is None:
            found = self._loaded[name] = super().get_template(name)
        return found

    def getattr(self, obj: Any, attribute: str) -> Any:
        if obj.__class__ is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)


@lru_cache(maxsize=8)
def _environment(folder: str, mtime: float) -> jinja2.Environment:
    """The folder's template environment, one per (folder, newest file's time): a changed
    template makes a new environment, so templates are not checked for changes on every
    use (`auto_reload`: two file stats per document, the template and its stylesheet)."""
    return _Environment(
        loader=jinja2.FileSystemLoader(folder),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )


def environment() -> jinja2.Environment:
    folder = templates_dir()
    stamp = max((p.stat().st_mtime for p in folder.glob("*.*")), default=0.0)
    return _environment(str(folder), stamp)


def render_html(data: dict, env: jinja2.Environment | None = None, inline_css: bool = True) -> str:
    """A document's HTML; pass `env` when rendering many (reading settings is not free).

    The HTML written to disk carries its stylesheet; the HTML a PDF is made from leaves it
    out, and the PDF gets the same stylesheet parsed once per process.
    """
    return (env or environment()).get_template("invoice.html").render(**data, inline_css=inline_css)


PDF_STYLESHEETS = ("fonts.css", "invoice.css")


@lru_cache(maxsize=4)
def _pdf_resources(folder: str, mtime: float) -> tuple[list[Any], Any, bool]:
    """The parsed stylesheets and the font configuration, shared by every PDF a process
    writes (parsing them per document costs more than laying the document out), and
    whether the stylesheets make no list item, footnote or note (`weasy.plain_stylesheet`).

    `fonts.css`, where the template folder has one, declares the PDF's own fonts
    (templates/fonts): WeasyPrint subsets every embedded font per PDF, and a small font
    subsets several times faster than the system's full one.
    """
    from weasyprint import CSS
    from weasyprint.text.fonts import FontConfiguration

    fonts = FontConfiguration()
    found = [p for p in (Path(folder) / name for name in PDF_STYLESHEETS) if p.exists()]
    plain = all(weasy.plain_stylesheet(p.read_text(encoding="utf-8")) for p in found)
    return [CSS(filename=str(p), font_config=fonts) for p in found], fonts, plain


# The font configuration keeps the @font-face files in a temporary folder it removes when
# it is collected; let go of it before the interpreter tears its modules down.
atexit.register(_pdf_resources.cache_clear)


@cache
def _fonts_keep_their_timestamp() -> None:
    """Make WeasyPrint's font subsets keep the font's own `head.modified`, so that the
    same document gives the same PDF bytes whenever it is rendered.

    Without HarfBuzz's subsetter (libharfbuzz-subset0), WeasyPrint subsets each embedded
    font with fontTools, whose TTFont stamps a font it saves with the current second
    (`recalcTimestamp`, True by default; WeasyPrint passes no option for it), and the
    same goes for the variable and colour fonts it rewrites. Its TTFont is given that
    option False: a subset then keeps the stamp of the font it was made from, as
    HarfBuzz's subsets do. Only WeasyPrint's PDF fonts are touched, once per process;
    tests/integration/test_document_integrity.py renders with either subsetter.
    """
    from fontTools.ttLib import TTFont
    from weasyprint.pdf import fonts

    class _KeepTimestamp(TTFont):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("recalcTimestamp", False)
            super().__init__(*args, **kwargs)

    fonts.TTFont = _KeepTimestamp


def pdf_document(html: str, folder: str | None = None) -> Any:
    """WeasyPrint's laid-out document of HTML made with `inline_css=False`, with the
    template folder's stylesheets and fonts."""
    _fonts_keep_their_timestamp()
    weasy.share_font_subsets()
    weasy.faster_functions()
    folder = folder or str(templates_dir())
    found = [Path(folder) / n for n in PDF_STYLESHEETS if (Path(folder) / n).exists()]
    sheets, fonts, plain = _pdf_resources(folder, max(p.stat().st_mtime for p in found))
    return weasy.html_document(html, folder, plain).render(stylesheets=sheets, font_config=fonts)


# Writes a document's bytes where it goes: a file (`files.write_file`, the default) or
# an object store's upload (`store.document_store`).
Write = Callable[[Any, bytes], None]


def render_pdf(html: str, path: Any, folder: str | None = None, write: Write | None = None) -> str:
    """Write the PDF of a document's HTML made with `inline_css=False`; returns the SHA-256
    of the bytes written.

    The same HTML gives the same bytes (with the same templates, fonts and WeasyPrint):
    font subsets keep their font's timestamp (`_fonts_keep_their_timestamp`), the PDF's
    dates are the invoice's own (`dcterms.created` in the template) and WeasyPrint writes
    no file identifier."""
    content = pdf_document(html, folder).write_pdf()
    (write or outputs.write_file)(path, content)
    return hashlib.sha256(content).hexdigest()


def render_pdfs(
    jobs: list[tuple[str, Any]],
    folder: str,
    failed: Callable[[int, OSError], None] | None = None,
    write: Write | None = None,
) -> list[str | None]:
    """Write PDFs (HTML, path) in order (through `write`, else to files); returns their
    SHA-256.

    With `failed`, a PDF that cannot be written (an OSError: a full or read-only disk) is
    handed to it with its index, its SHA-256 is None, and the next PDFs are still written;
    without, the OSError is raised.

    One process renders its shard's PDFs one after the other: to use every core, run the
    close on the Dask task runner with several shards (BILLING_TASK_RUNNER=dask), which
    renders each shard in its own worker process.

    A laid-out document is a web of reference cycles (each box points at its parent) that
    only the cyclic collector frees, and the close's steps run with it paused
    (`collector.paused`): each PDF's are collected before the next is laid out, or a
    shard of 6,000 invoices would hold some 6 MB of dead boxes for each.
    """
    shas: list[str | None] = []
    for index, (html, path) in enumerate(jobs):
        try:
            shas.append(render_pdf(html, path, folder, write))
        except OSError as error:
            if failed is None:
                raise
            failed(index, error)
            shas.append(None)
        gc.collect(0)
    return shas


def document_key(invoice: Any, fmt: str) -> str:
    """Where an invoice's document goes under the output folder (or prefix): a folder per
    billing date, a file named after the billed customer and the number (or the draft's
    id). Ids are made safe as name parts (`outputs.name_part`), so the document is always
    inside the output folder, and the key is one an object store takes."""
    name = outputs.name_part(invoice.number) if invoice.number else f"draft-{invoice.id}"
    customer = outputs.name_part(invoice.billed_customer_id)
    return f"{invoice.billing_date.isoformat()}/{customer}-{name}.{fmt}"


def document_path(output_dir: Path, invoice: Any, fmt: str) -> Path:
    """An invoice's document in a local output folder."""
    return output_dir / document_key(invoice, fmt)


def document_bytes(
    data: dict, fmt: str, env: jinja2.Environment | None = None, folder: str | None = None
) -> bytes:
    """An invoice's document as the render step writes it: the HTML with its stylesheet,
    or the PDF. The same context gives the same bytes (an issued invoice's context is
    frozen with it), which is what lets a lost final document be written again and its
    recorded SHA-256 prove it (`invoices.verification`)."""
    if fmt == "pdf":
        return pdf_document(render_html(data, env, inline_css=False), folder).write_pdf()
    return render_html(data, env).encode("utf-8")


def write_document(
    session: Session, invoice_id: int, path: Path, store_name: str = "billing"
) -> Path:
    """Write one invoice's document to `path` (.html or .pdf), drafts included, without
    recording it: a copy for review, not the invoice's own document."""
    invoice = session.execute(
        sa.select(Invoice.__table__).where(Invoice.__table__.c.id == invoice_id)
    ).first()
    if invoice is None:
        raise InvoiceError(f"no invoice {invoice_id}")
    data = contexts(session, [invoice], store_name)[invoice.id]
    path.parent.mkdir(parents=True, exist_ok=True)
    outputs.write_file(
        path, document_bytes(data, "pdf" if path.suffix.lower() == ".pdf" else "html")
    )
    return path
