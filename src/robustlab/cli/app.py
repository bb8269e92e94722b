"""The Typer application and the one error boundary of the CLI.

Commands live in sibling modules and register themselves on :data:`app`. Every user-facing error
(:class:`~robustlab.errors.RobustlabError`) is printed as one sentence and the process exits with
code 2, never with a traceback.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from robustlab.errors import RobustlabError

app = typer.Typer(
    name="robustlab",
    help="Measure and improve the robustness of PyTorch classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()  # what commands print


def fail(message: str) -> typer.Exit:
    """Print one sentence to stderr and return the Exit to raise."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code=2)


def run() -> None:
    """Entry point: run the app, turning library errors into one-sentence failures."""
    try:
        app()
    except RobustlabError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: progress up to the last checkpoint is kept.")
        sys.exit(130)
