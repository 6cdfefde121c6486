"""What tunesmith writes gets the modes the umask gives (0644 under the usual 022), not the 0600
of the temp files it writes through."""

from __future__ import annotations

import os
import stat

import pytest

from tunesmith.export import ExportOptions, run_export
from tunesmith.files import apply_umask, atomic_write_bytes, atomic_write_text, current_umask


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    before = os.umask(0o022)
    yield set_mask
    os.umask(before)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    atomic_write_text(tmp_path / "a.json", "{}")
    atomic_write_bytes(tmp_path / "b.bin", b"\0")
    assert mode(tmp_path / "a.json") == mode(tmp_path / "b.bin") == 0o666 & ~mask


def test_apply_umask_opens_private_temp_files(tmp_path, umask):
    import tempfile

    folder = tmp_path / "w"
    (folder / "sub").mkdir(parents=True)
    fd, name = tempfile.mkstemp(dir=folder / "sub")
    os.close(fd)
    os.chmod(folder, 0o700)
    apply_umask(folder)
    assert mode(name) == 0o644 and mode(folder) == mode(folder / "sub") == 0o755


def test_a_run_directory_and_an_export_are_readable_by_others(tiny_run, tmp_path):
    mask = current_umask()  # the session's own, which the shared run was trained under
    for p in [tiny_run, *tiny_run.rglob("*")]:
        want = (0o777 if p.is_dir() else 0o666) & ~mask
        assert mode(p) == want, f"{p.relative_to(tiny_run)}: {oct(mode(p))}"
    out = tmp_path / "exp"
    run_export(tiny_run, out, ExportOptions(formats=("hf",)))
    for p in [out, *out.rglob("*")]:
        assert mode(p) == (0o777 if p.is_dir() else 0o666) & ~mask, p.relative_to(out)
