"""Optional dependencies: one way to import them, one message saying what to install.

Every extra of pyproject.toml (serve, webui, export, tune, qlora, ...) is imported through
``require`` at the moment a command needs it, so ``pip install tunesmith`` stays small and a
missing package fails with the install line instead of a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import DependencyError


def require(module: str, extra: str | None, purpose: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise DependencyError naming what to install.

    Args:
        module: the module to import (``"fastapi"``, ``"onnxruntime.quantization"``).
        extra: the tunesmith extra that installs it (``"serve"``), or None when there is none.
        purpose: what needs it, for the message (``"serving"``, ``"--format onnx"``).
        package: the PyPI name when it differs from the module's top-level name.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pkg = package or module.split(".")[0]
        how = f"pip install 'tunesmith[{extra}]' (or pip install {pkg})" if extra else f"pip install {pkg}"
        raise DependencyError(f"{purpose} needs {pkg} ({e}): {how}") from None
