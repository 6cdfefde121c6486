"""Error types. Every error says what went wrong, where, and how to fix it."""

from __future__ import annotations


class TunesmithError(Exception):
    """Base class of every error tunesmith raises on purpose."""


class ConfigError(TunesmithError, ValueError):
    """The configuration is invalid. Holds every problem found, not just the first.

    The message lists the first ``SHOWN`` problems and counts the rest.
    """

    SHOWN = 20

    def __init__(self, problems: list[str] | str, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        where = f" in {source}" if source else ""
        shown = self.problems[: self.SHOWN]
        lines = "\n".join(f"  - {p}" for p in shown)
        if len(self.problems) > len(shown):
            lines += f"\n  ... and {len(self.problems) - len(shown)} more"
        super().__init__(f"{len(self.problems)} problem(s) with the configuration{where}:\n{lines}")


class DatasetError(TunesmithError, ValueError):
    """A data file or record is invalid. Names the file and the record (0-based index)."""

    def __init__(self, message: str, path: str | None = None, index: int | None = None):
        self.path = path
        self.index = index
        where = []
        if path is not None:
            where.append(str(path))
        if index is not None:
            where.append(f"record {index}")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(prefix + message)


class ModelSourceError(TunesmithError, ValueError):
    """A model could not be found or loaded. Lists what was tried."""

    def __init__(self, source: str, tried: list[str], hint: str = ""):
        self.source = source
        self.tried = tried
        lines = "\n".join(f"  - {t}" for t in tried)
        msg = f"could not resolve model source {source!r}. Tried:\n{lines}"
        if hint:
            msg += f"\n{hint}"
        super().__init__(msg)


class TemplateError(TunesmithError, ValueError):
    """The tokenizer's chat template cannot be used as asked."""


class RunDirError(TunesmithError, ValueError):
    """A run directory is missing, unfinished or inconsistent."""


class UsageError(TunesmithError, ValueError):
    """A command-line option has a value that cannot be used; the message names the option."""


class FileError(TunesmithError, OSError):
    """A file or directory could not be read or written (read-only, disk full, not a directory).

    The message names the path and the cause in words.
    """


class DependencyError(TunesmithError, ImportError):
    """An optional dependency is missing; the message says what to install."""


class ExportError(TunesmithError, ValueError):
    """An export cannot be made as asked, or its result does not match the model it came from."""
