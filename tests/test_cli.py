"""The CLI frame: version, help, and one real process for `python -m atrous`."""

import subprocess
import sys

import pytest

import atrous
from atrous.cli import COMMANDS, build_parser, main


def test_version_in_process(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"atrous {atrous.__version__}"


def test_help_lists_every_registered_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out
    build_parser()  # every command module imports and declares its arguments


def test_python_dash_m_runs_the_same_cli():
    out = subprocess.run(
        [sys.executable, "-m", "atrous", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == f"atrous {atrous.__version__}"
