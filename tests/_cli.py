"""Running the CLI in-process through its real entry point, for the CLI tests."""

from __future__ import annotations

import sys

import pytest

from robustlab.cli import main


def run_cli(args, capsys, monkeypatch):
    """Run ``robustlab *args``; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["robustlab", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err
