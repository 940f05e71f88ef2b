"""The CLI dispatcher: help, version, one-line errors, --debug tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from unveil import __version__
from unveil.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "COMMAND" in out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: unveil" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out


def test_python_dash_m_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "unveil", "--version"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    assert __version__ in proc.stdout
