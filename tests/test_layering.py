"""The house rules, checked by parsing every import in src/tunesmith (module-level and lazy ones).

Each top-level folder or module belongs to one layer and may import only what ALLOWED lists.
No import circles between modules, no private names imported from another module, and a package
root of at most 12 modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "tunesmith"

# the foundation every layer may use: typed config, errors, files, logs, deps, the run card and
# the sampling settings it holds
CORE = {"__init__", "config", "errors", "registry", "logs", "files", "deps", "runcard", "generation"}
MODEL = {"data", "templates", "modeling"}  # records, chat templates, model sources and loading
BELOW = {
    "core": set(),
    "data": set(),
    "modeling": set(),
    "templates": {"data"},
    "runtime": MODEL,  # finished runs loaded to answer
    "evaluation": MODEL | {"runtime"},
    "training": MODEL | {"runtime", "evaluation"},  # eval.at_end evaluates the finished run
    "export": MODEL | {"runtime"},
    "serving": MODEL | {"runtime"},  # answers with finished runs: never trains, evaluates or exports
    "webui": MODEL | {"runtime", "serving"},
    "cli": MODEL | {"runtime", "evaluation", "training", "export", "serving", "webui"},
}
# unit -> the units it may import (itself and the core always)
ALLOWED = {unit: {unit, "core"} | below for unit, below in BELOW.items()}


def unit_of(module: str) -> str:
    """'training.lm' -> 'training'; 'config' -> 'core'."""
    top = module.split(".")[0]
    return "core" if top in CORE else top


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package is its __init__)."""
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = p.relative_to(PKG).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = modules()


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for each tunesmith import in ``path``."""
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    package = parts[:-1]  # the package this file sits in (for __init__: the package itself)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "tunesmith":
                target = node.module.split(".")[1:]
            else:
                continue
            mod = ".".join(target) or "__init__"
            names = [a.name for a in node.names]
            sub = {n: n if mod == "__init__" else f"{mod}.{n}" for n in names}
            subs = [n for n in names if sub[n] in MODULES]
            for n in subs:  # `from . import textcheck`: the submodule itself
                found.append((sub[n], [], node.lineno))
            rest = [n for n in names if n not in subs]
            if rest or not subs:
                found.append((mod, rest, node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "tunesmith":
                    found.append((".".join(a.name.split(".")[1:]) or "__init__", [], node.lineno))
    return found


def resolve(module: str) -> str:
    """The module a dotted import names, or the nearest package holding it."""
    while module not in MODULES and "." in module:
        module = module.rsplit(".", 1)[0]
    return module


GRAPH = {m: {resolve(t) for t, _, _ in imports(p)} - {m} for m, p in MODULES.items()}


def test_every_folder_and_module_has_a_layer():
    units = {unit_of(m) for m in MODULES}
    assert units <= set(ALLOWED), f"place these in tests/test_layering.py's layers: {units - set(ALLOWED)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module):
    unit = unit_of(module)
    bad = sorted({t for t in GRAPH[module] if unit_of(t) not in ALLOWED[unit]})
    assert not bad, f"{module} ({unit}) imports {bad}; {unit} may import only {sorted(ALLOWED[unit])}"


def test_no_import_circles():
    """Tarjan's strongly connected components over module imports, lazy ones included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            # a package and its own submodules (``__init__`` re-exports) are one unit, not a circle
            if len(comp) > 1 and not all(c == comp[-1] or c.startswith(f"{comp[-1]}.") for c in comp):
                circles.append(sorted(comp))

    for m in sorted(GRAPH):
        if m not in index:
            visit(m)
    assert not circles, f"import circles: {circles}"


def test_no_private_name_is_imported_from_another_module():
    bad = []
    for m, p in MODULES.items():
        for target, names, line in imports(p):
            if resolve(target) != m:
                bad += [
                    f"{p.relative_to(PKG)}:{line} takes {n} from {target}"
                    for n in names
                    if n[0] == "_" and not n.endswith("__")
                ]
    assert not bad, "\n".join(bad)


def test_the_package_root_holds_at_most_twelve_modules():
    root = sorted(p.name for p in PKG.glob("*.py"))
    assert len(root) <= 12, root


def test_the_rules_catch_a_violation(tmp_path):
    """The checker itself: a lower layer importing a higher one, and a private import, are seen."""
    global PKG
    fake = tmp_path / "tunesmith"
    (fake / "data").mkdir(parents=True)
    (fake / "data" / "__init__.py").write_text("")
    (fake / "data" / "x.py").write_text("from ..training.lm import _helper\nfrom . import y\n")
    (fake / "data" / "y.py").write_text("")
    old = PKG
    PKG = fake
    try:
        found = imports(fake / "data" / "x.py")
    finally:
        PKG = old
    assert ("training.lm", ["_helper"], 1) in found
    assert unit_of("training.lm") not in ALLOWED["data"]
