"""Small filesystem helpers: atomic writes, hashing."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import FileError


def refuse_input_as_output(inp: str | Path, outputs: list[str | Path]) -> None:
    """Refuse to write any of ``outputs`` over the input file ``inp`` (a command never eats its input).

    Raises:
        FileError: naming the output that is the input.
    """
    source = Path(inp).resolve()
    for out in outputs:
        if Path(out).resolve() == source:
            raise FileError(
                f"{out} is the input file {inp}; writing there would replace the data being read. "
                "Give another output path"
            )


def ensure_dir(path: str | Path) -> Path:
    """Create the directory ``path`` (and its parents) if needed.

    Raises:
        FileError: it cannot be created (read-only, a file in the way, ...), with path and cause.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileError(f"{path} is a file, not a directory; choose another output directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileError(f"cannot create the directory {path}: {os_error_message(e)}") from None
    return path


def current_umask() -> int:
    """This process's umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(tree: str | Path) -> None:
    """Give ``tree`` (a file, or a folder and all below it) the modes a plain ``open``/``mkdir``
    would: temp files (``mkstemp``, ``mkdtemp``, and libraries that save through them, such as
    safetensors) are private, but what tunesmith writes is meant to be read by others."""
    mask = current_umask()
    root = Path(tree)
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for p in paths:
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file + rename, so readers never see half a file.

    Raises:
        FileError: the file cannot be written (read-only, disk full, ...), with path and cause;
            no partial file is left behind.
    """
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """``atomic_write_text`` for bytes; the file gets the mode the umask gives (0644 usually)."""
    path = Path(path)
    try:
        ensure_dir(path.parent)
    except FileError as e:
        raise FileError(f"cannot write {path}: {e}") from None
    if path.is_dir():
        raise FileError(f"cannot write {path}: it is a directory; give a file name")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise FileError(f"cannot write {path}: {os_error_message(e)}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), 0o666 & ~current_umask())  # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise FileError(f"cannot write {path}: {os_error_message(e)}") from None
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_OS_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EISDIR: "it is a directory",
    errno.EEXIST: "it exists already (a file where a directory should be?)",
    errno.ENOENT: "no such file or directory",
    errno.ENAMETOOLONG: "the file name is too long",
}


def os_error_message(e: OSError) -> str:
    """The cause of an OS error in words, with the path it concerns when it has one."""
    cause = _OS_CAUSES.get(e.errno or -1) or e.strerror or str(e)
    where = os.fsdecode(e.filename) if e.filename is not None else None
    return f"{cause} ({where})" if where is not None else cause


# How a failed write shows when it does not come as an OSError: torch.save's zip writer
# ("[enforce fail at inline_container.cc] unexpected pos", "PytorchStreamWriter failed writing")
# and safetensors' Rust IO error ("IoError(Os { code: 28, kind: StorageFull ... })").
_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "file write failed", "IoError(")
_DISK_FULL = ("No space left on device", "StorageFull", "code: 28")
_LOW_SPACE = 64 << 20  # bytes; below this after a failed write, the disk is what filled up


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


@contextmanager
def storage_errors(path: str | Path, action: str = "writing") -> Iterator[None]:
    """Turn a failed read or write under ``path`` into one ``FileError`` that says why.

    A full disk is named as such even when the writer (torch, safetensors) hides the cause.
    """
    path = Path(path)
    try:
        yield
    except FileError:
        raise
    except OSError as e:
        raise FileError(f"{action} {path} failed: {os_error_message(e)}") from None
    except Exception as e:
        text = str(e)
        if not any(k in text for k in _WRITE_FAILURES + _DISK_FULL):
            raise
        free = _free_bytes(path)
        if any(k in text for k in _DISK_FULL) or (free is not None and free < _LOW_SPACE):
            raise FileError(
                f"{action} {path} failed: no space left on device ({free or 0} bytes free); "
                "free some space, then continue with train.resume=true"
            ) from None
        first = text.strip().splitlines()[0][:200] if text.strip() else type(e).__name__
        raise FileError(f"{action} {path} failed: {first}") from None
