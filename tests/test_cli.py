import subprocess
import sys

import pytest

from tunesmith.cli.main import build_parser

SUBCOMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


@pytest.mark.parametrize("args", [[], *([c] for c in SUBCOMMANDS)], ids=lambda a: " ".join(a) or "top")
def test_help_works(args):
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", *args, "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: tunesmith" in proc.stdout


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys; from tunesmith.cli.main import build_parser; build_parser(); "
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == "[]"


def test_subcommands_present():
    assert {"train", "chat"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("command", ["chat", "eval"])
def test_sampling_flags_become_overrides_and_unset_ones_stay_out(command):
    from tunesmith.cli.args import sampling_overrides

    extra = ["--data", "d.json"] if command == "eval" else []
    argv = [command, "run", *extra, "--temperature", "0.3", "--top-k", "5", "--max-new-tokens", "7"]
    args = build_parser().parse_args(argv)
    assert sampling_overrides(args) == {"temperature": 0.3, "top_k": 5, "max_new_tokens": 7}
