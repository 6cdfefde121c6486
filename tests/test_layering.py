"""The layering rule: a lower layer never imports a higher one (checked by parsing imports)."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "tunesmith"

# module -> tunesmith modules it must never import
FORBIDDEN = {
    "config": {"data", "templates", "modeling", "train", "inference", "chat", "cli"},
    "errors": {"config", "data", "templates", "modeling", "train", "inference", "chat", "cli"},
    "registry": {"config", "data", "templates", "modeling", "train", "inference", "chat", "cli"},
    "data": {"templates", "modeling", "train", "inference", "chat", "cli"},
    "templates": {"modeling", "train", "inference", "chat", "cli"},
    "modeling": {"train", "inference", "chat", "cli"},
    "generation": {"train", "inference", "chat", "cli"},
    "train": {"inference", "chat", "cli"},
    "inference": {"train", "cli"},
    "chat": {"train", "cli"},
}


def imported_tunesmith_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    rel = path.relative_to(PKG).with_suffix("").parts
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(rel[:-1])[: len(rel) - node.level]
                parts = base + (node.module.split(".") if node.module else [])
                if parts:
                    found.add(parts[0])
                else:
                    found.update(a.name for a in node.names)
            elif node.module and node.module.startswith("tunesmith."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("tunesmith."):
                    found.add(a.name.split(".")[1])
    return found


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_higher_ones(module):
    files = [PKG / f"{module}.py"] if (PKG / f"{module}.py").exists() else sorted((PKG / module).glob("*.py"))
    assert files, module
    for f in files:
        bad = imported_tunesmith_modules(f) & FORBIDDEN[module]
        assert not bad, f"{f.relative_to(PKG)} imports {bad}"
