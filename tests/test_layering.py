"""The layering rule: a lower layer never imports a higher one (checked by parsing imports)."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "tunesmith"

# what the training helpers (methods, optim, callbacks, ...) must never import
TRAIN_SIDE = {"train", "inference", "chat", "serving", "webui", "evaluation", "export", "cli"} | {
    "cli_data",
    "cli_eval",
    "cli_serve",
    "cli_export",
    "cli_tune",
    "cli_classify",
    "cli_args",
}

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
    "inference": {"train", "export", "cli"},
    "chat": {"train", "cli"},
    # evaluation sits beside train (which calls it for eval.at_end), below the CLI and the servers
    "evaluation": {"train", "chat", "cli", "cli_data", "cli_eval", "serving", "webui"},
    "metrics": {"modeling", "inference", "train", "evaluation", "cli", "cli_eval", "serving", "webui"},
    # the servers answer with finished runs: never training, evaluation, export or the CLI
    "serving": {"train", "evaluation", "export", "cli", "cli_data", "cli_eval", "cli_serve", "webui"},
    "webui": {"train", "evaluation", "export", "cli", "cli_data", "cli_eval", "cli_serve"},
    "cli_serve": {"train", "evaluation", "export", "cli"},
    # export reads finished runs (inference, modeling, templates, data); it never trains or serves
    "export": {"train", "evaluation", "evaluate", "chat", "serving", "webui", "cli", "cli_data", "cli_eval"}
    | {"cli_serve", "cli_export"},
    "cli_export": {"train", "evaluation", "evaluate", "serving", "webui", "cli"},
    # train-side helpers: below train, never serving, the web UI or the CLI
    "methods": TRAIN_SIDE,
    "optim": TRAIN_SIDE,
    "callbacks": TRAIN_SIDE,
    "checkpoints": TRAIN_SIDE,
    "rundir": TRAIN_SIDE,
    "replay": TRAIN_SIDE,
    "distributed": TRAIN_SIDE,
    "levers": TRAIN_SIDE,
    "fastloss": TRAIN_SIDE,
    "classify": TRAIN_SIDE - {"train"},  # beside train: shares its run-dir helpers
    "tune": TRAIN_SIDE - {"train"},  # runs train's trials
    "cli_tune": {"cli", "serving", "webui", "cli_serve"},
    # full-weight runs are loaded by inference; it sits below inference
    "fullweights": {"train", "inference", "chat", "cli", "serving", "webui", "evaluation", "export"},
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
