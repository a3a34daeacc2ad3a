"""The package's layers, read off the source: dependencies point down
(cli -> steps/views -> invoices/inputs -> store -> domain), domain/ is pure, and no
module imports itself back through others. Imports inside functions count like the
others."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "billing_core"
FLOWS = ROOT / "flows"

# Libraries the pure rules must do without.
NOT_IN_DOMAIN = ("sqlalchemy", "sqlmodel", "prefect", "jinja2", "weasyprint")
# What each layer may import of billing_core (besides itself).
TOP_LEVEL = {"billing_core.config", "billing_core.report"}
ALLOWED = {
    "domain": {"domain"},
    "store": {"store", "domain"},
}
FORBIDDEN = {
    "inputs": {"steps", "invoices", "views", "cli"},
    "invoices": {"steps", "views", "cli"},
    "steps": {"cli", "views"},
}


def _module_name(path: Path) -> str:
    base = ROOT / "src" if path.is_relative_to(PACKAGE) else ROOT
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = sorted(PACKAGE.rglob("*.py")) + sorted(FLOWS.rglob("*.py"))
    return {_module_name(path): path for path in files}


MODULES = _sources()


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((module, node.lineno))
            # `from billing_core.steps import close` imports the module billing_core.steps.close
            for alias in node.names:
                if f"{module}.{alias.name}" in MODULES:
                    out.append((f"{module}.{alias.name}", node.lineno))
    return out


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "billing_core" and len(parts) > 1 else None


def _where(name: str, line: int) -> str:
    return f"{MODULES[name].relative_to(ROOT)}:{line} ({name})"


def test_the_domain_imports_no_store_framework_or_other_layer():
    wrong = [
        f"{_where(name, line)} imports {module}"
        for name, imports in IMPORTS.items()
        if _layer(name) == "domain"
        for module, line in imports
        if module.split(".")[0] in NOT_IN_DOMAIN
        or (module.startswith("billing_core") and _layer(module) != "domain")
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_lower_layer_imports_only_what_lies_below(layer):
    wrong = [
        f"{_where(name, line)} imports {module}"
        for name, imports in IMPORTS.items()
        if _layer(name) == layer
        for module, line in imports
        if module.startswith("billing_core")
        and module != "billing_core"
        and module not in TOP_LEVEL
        and _layer(module) not in ALLOWED[layer]
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
    wrong = [
        f"{_where(name, line)} imports {module}"
        for name, imports in IMPORTS.items()
        if _layer(name) == layer
        for module, line in imports
        if _layer(module) in FORBIDDEN[layer] or module.split(".")[0] == "flows"
    ]
    assert not wrong, "\n".join(wrong)


def _graph() -> dict[str, dict[str, int]]:
    """module -> imported billing_core or flows module -> line of the first import."""
    graph: dict[str, dict[str, int]] = {name: {} for name in MODULES}
    for name, imports in IMPORTS.items():
        for module, line in imports:
            # An import of a name from a package resolves to that package's module.
            while module and module not in MODULES:
                module = module.rpartition(".")[0]
            if module and module != name and module != _package_of(name):
                graph[name].setdefault(module, line)
    return graph


def _package_of(name: str) -> str:
    return name.rpartition(".")[0]


def _cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle, as the modules around it, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return path[path.index(child) :] + [child]
            if child not in state:
                found = visit(child)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_module_imports_itself_back():
    graph = _graph()
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(
        f"{a} (line {graph[a][b]} imports {b})" for a, b in zip(cycle, cycle[1:], strict=False)
    )
