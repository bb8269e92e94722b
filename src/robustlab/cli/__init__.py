"""Command-line interface: a thin shell over the library.

Each command module registers itself on the shared Typer ``app`` when imported below, in the
order ``robustlab --help`` lists the commands.
"""

# isort: off
from robustlab.cli import listing, train, evaluate, attack, demo, certify, corrupt  # noqa: F401
# isort: on
from robustlab.cli.app import app, run

main = run

__all__ = ["app", "main"]
