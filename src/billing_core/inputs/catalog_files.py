"""Reading a catalog file without trusting it: UTF-8, YAML without aliases, bounded
nesting, exact numbers, no key given twice in a mapping.

What cannot be read at all (a YAML alias, nesting deeper than 32 levels, a syntax error,
a UTF-16 file) is refused here in one line that names the line of the file and, where
known, the entry and field. A key given twice in one mapping (YAML or JSON, where the
last would silently win) is refused too, one line per duplicate, naming the mapping, the
line and the key. Everything that can be read comes back as plain data, with
bytes that are not UTF-8 kept as lone surrogates so that the entry and field holding
them can be named by the validation (`catalog_entry.text_problem`).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent
from yaml.nodes import ScalarNode
from yaml.reader import ReaderError

from billing_core.domain.limits import MAX_DEPTH

_BIG_INT_BITS = 13_000  # about 4,000 decimal digits: Python's int <-> str limit is 4,300


class FileRefused(ValueError):
    """A catalog file that cannot be read: one line per problem, without the file name."""

    def __init__(self, *problems: str):
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def _where(path: list[str], line: int | None) -> str:
    """`customers[1].id (line 3)`: a path, its first eight steps if it is longer."""
    steps = [s for s in path if s]
    text = "".join(steps[:8]).lstrip(".") + ("…" if len(steps) > 8 else "")
    at = f" (line {line})" if line is not None else ""
    return f"{text or 'the catalog'}{at}"


# --- YAML -------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses aliases, anchors and deep nesting while composing (before
    anything is built), keeps decimals exact, and leaves dates it cannot make as text."""

    # PyYAML's printable set plus U+DC80..U+DCFF: bytes that were not UTF-8, decoded with
    # `surrogateescape`, pass through to the field that holds them.
    NON_PRINTABLE = re.compile(
        "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\udc80-\udcff\ue000-\ufffd\U00010000-\U0010ffff]"
    )

    def __init__(self, stream: str):
        self._path: list[str] = []
        self._depth = 0
        self.first_anchor: tuple[str, int, str] | None = None
        self.duplicates: list[tuple[int, str]] = []  # (line, problem) per key given twice
        super().__init__(stream)

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        if len(node.value) > 1:
            seen: set[tuple[str, str]] = set()
            for key, _ in node.value:
                if isinstance(key, ScalarNode):
                    marker = (key.tag, key.value)
                    if marker in seen:
                        line = key.start_mark.line + 1
                        self.duplicates.append((line, _twice(self._path, line, key.value)))
                    seen.add(marker)
        return node

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(index, int):
            step = f"[{index}]"
        elif isinstance(index, yaml.ScalarNode):
            step = f".{index.value}"
        elif index is not None:
            step = ".?"
        else:
            step = ""  # the document, or a mapping key
        self._path.append(step)
        try:
            line = event.start_mark.line + 1 if event.start_mark else None
            if isinstance(event, AliasEvent):
                raise FileRefused(
                    f"{_where(self._path, line)}: a YAML alias (*{event.anchor}) is not "
                    "accepted; write the value out"
                )
            if event.anchor is not None and self.first_anchor is None:
                self.first_anchor = (_where(self._path, line), line or 0, event.anchor)
            container = isinstance(event, SequenceStartEvent | MappingStartEvent)
            if container and self._depth >= MAX_DEPTH:
                raise FileRefused(
                    f"{_where(self._path, line)}: nested deeper than {MAX_DEPTH} levels"
                )
            self._depth += container
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= container
        finally:
            self._path.pop()


def _yaml_decimal(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    text = loader.construct_scalar(node).replace("_", "")  # type: ignore[arg-type]
    try:
        return Decimal(text)
    except InvalidOperation:
        return text  # .nan, .inf, 1:30.5: refused where a number is expected


def _yaml_int(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    try:
        value = yaml.SafeLoader.construct_yaml_int(loader, node)  # type: ignore[arg-type]
    except ValueError:  # more decimal digits than Python converts
        text = loader.construct_scalar(node).replace("_", "")  # type: ignore[arg-type]
        try:
            return Decimal(text)
        except InvalidOperation:
            return text
    if abs(value).bit_length() > _BIG_INT_BITS:
        return Decimal(value)  # an int that large cannot even be printed
    return value


def _yaml_timestamp(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)  # type: ignore[arg-type]
    except ValueError:  # 2026-01-34, 0000-01-01: refused as dates by the validation
        return loader.construct_scalar(node)  # type: ignore[arg-type]


_Loader.add_constructor("tag:yaml.org,2002:float", _yaml_decimal)
_Loader.add_constructor("tag:yaml.org,2002:int", _yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _yaml_timestamp)


def _yaml_problem(err: yaml.YAMLError, text: str) -> str:
    if isinstance(err, ReaderError):
        line = text.count("\n", 0, err.position) + 1
        return f"line {line}: not valid YAML: character #x{err.character:04x} is not allowed"
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = f" ({err.context})" if err.context else ""
        return f"{where}not valid YAML: {err.problem}{context}"
    return f"not valid YAML: {err}"


def _twice(path: list[str], line: int | None, key: str) -> str:
    shown = key if len(key) <= 80 else key[:80] + "…"
    return f"{_where(path, line)}: the key {shown} is given twice"


def _load_yaml(text: str) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if loader.duplicates:
            # Inner mappings are composed first: in the order of the file.
            raise FileRefused(*(p for _, p in sorted(loader.duplicates, key=lambda d: d[0])))
        if loader.first_anchor is not None:
            where, _, anchor = loader.first_anchor
            raise FileRefused(
                f"{where}: a YAML anchor (&{anchor}) is not accepted; write the value out"
            )
        return loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()


# --- JSON -------------------------------------------------------------------------------

_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"(\s*:)?|[\[\]{},]', re.DOTALL)


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST = re.compile(r"\[\]|\{\}")


def _check_json_nesting(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH before the decoder (which recurses) sees it."""
    # Quick: the brackets outside strings, innermost pairs taken away MAX_DEPTH times.
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    for _ in range(MAX_DEPTH):
        if not brackets:
            return
        brackets = _INNERMOST.sub("", brackets)
    if not brackets:
        return
    # Something is left: too deep, or unbalanced (then the decoder says where). Find the
    # first container too deep, and its path, token by token.
    for event, path, line, _ in _json_walk(text):
        if event == "open" and len(path) >= MAX_DEPTH:
            raise FileRefused(f"{_where(path, line)}: nested deeper than {MAX_DEPTH} levels")


def _json_walk(text: str) -> Iterator[tuple[str, list[str], int, Any]]:
    """The JSON text token by token, with the path to where each token stands: yields
    ("open", path, line, None) before each list or object is entered, and ("key", path,
    line, key) for each key of an object (path: the object's)."""
    stack: list[list[Any]] = []  # [is a list, index or key]

    def path() -> list[str]:
        return [f"[{key}]" if is_list else f".{key}" for is_list, key in stack]

    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        first = token[0]
        if first == '"':
            if match.group(1) and stack and not stack[-1][0]:
                try:
                    key = json.loads(token[: token.rindex('"') + 1])
                except ValueError:
                    key = "?"
                yield "key", path()[:-1], text.count("\n", 0, match.start()) + 1, key
                stack[-1][1] = key
        elif first in "[{":
            yield "open", path(), text.count("\n", 0, match.start()) + 1, None
            stack.append([first == "[", 0 if first == "[" else None])
        elif first in "]}":
            if stack:
                stack.pop()
        elif stack and stack[-1][0]:  # a comma in a list
            stack[-1][1] += 1


def _json_duplicates(text: str) -> list[str]:
    """Each key given twice in an object, with the object's path and the key's line (only
    called once the decoder has seen a duplicate, so it may take its time)."""
    found: list[str] = []
    seen: dict[int, set[str]] = {}  # depth -> the keys of the object open at that depth
    for event, path, line, key in _json_walk(text):
        if event == "open":
            seen[len(path) + 1] = set()
        else:
            keys = seen.setdefault(len(path) + 1, set())
            if key in keys:
                found.append(_twice(path, line, key))
            keys.add(key)
    return found


class _Twice(Exception):
    """An object of the JSON file gives a key twice."""


def _json_object(pairs: list[tuple[str, Any]]) -> dict:
    made = dict(pairs)
    if len(made) != len(pairs):
        raise _Twice
    return made


def _json_int(text: str) -> int | Decimal:
    return int(text) if len(text) <= 4000 else Decimal(text)


def _load_json(text: str) -> Any:
    _check_json_nesting(text)
    try:
        return json.loads(
            text,
            parse_float=Decimal,
            parse_int=_json_int,
            parse_constant=lambda name: name,
            object_pairs_hook=_json_object,
        )
    except json.JSONDecodeError as err:
        raise FileRefused(
            f"line {err.lineno}, column {err.colno}: not valid JSON: {err.msg}"
        ) from None
    except _Twice:
        raise FileRefused(
            *(_json_duplicates(text) or ["an object gives the same key twice"])
        ) from None
    except RecursionError:  # not reached after the check above; never a traceback
        raise FileRefused(f"nested deeper than {MAX_DEPTH} levels") from None


# --- the file -----------------------------------------------------------------------------


def read_text(path: Path) -> str:
    """The file as text: UTF-8 (a byte order mark is dropped), undecodable bytes kept as
    lone surrogates for the validation to name; UTF-16 and UTF-32 refused."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise FileRefused(f"cannot be read: {err.strerror or err}") from None
    for bom, name in (
        (codecs.BOM_UTF32_LE, "UTF-32"),
        (codecs.BOM_UTF32_BE, "UTF-32"),
        (codecs.BOM_UTF16_LE, "UTF-16"),
        (codecs.BOM_UTF16_BE, "UTF-16"),
    ):
        if raw.startswith(bom):
            raise FileRefused(
                f"is not UTF-8 text (it starts with a {name} byte order mark); save it as UTF-8"
            )
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    return raw.decode("utf-8", errors="surrogateescape")


def load_data(path: Path) -> Any:
    """The content of a catalog file: JSON by extension, YAML otherwise."""
    text = read_text(path)
    if path.suffix.lower() == ".json":
        return _load_json(text)
    try:
        return _load_yaml(text)
    except yaml.YAMLError as err:
        raise FileRefused(_yaml_problem(err, text)) from None


__all__ = ["MAX_DEPTH", "FileRefused", "load_data"]
