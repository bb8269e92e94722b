"""``robustlab list``: the registered names of every kind, with their one-line descriptions."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from robustlab.attacks import ATTACKS
from robustlab.certify import CERTIFIERS
from robustlab.cli.app import app, out
from robustlab.corruptions import CORRUPTIONS
from robustlab.data import DATASETS
from robustlab.errors import RobustlabError
from robustlab.evaluation.suites import SUITES
from robustlab.losses import LOSSES
from robustlab.models import MODELS
from robustlab.training.methods import METHODS


def _registries() -> dict[str, object]:
    return {
        "models": MODELS,
        "datasets": DATASETS,
        "attacks": ATTACKS,
        "methods": METHODS,
        "losses": LOSSES,
        "suites": SUITES,
        "certifiers": CERTIFIERS,
        "corruptions": CORRUPTIONS,
    }


@app.command("list")
def list_cmd(
    kind: Annotated[str | None, typer.Argument(help="Only this registry, e.g. attacks.")] = None,
) -> None:
    """List the registered models, datasets, attacks, methods, losses, suites, certifiers and
    corruptions."""
    regs = _registries()
    if kind is not None and kind not in regs:
        raise RobustlabError(f"Unknown registry '{kind}'; known: {', '.join(regs)}.")
    for name, reg in regs.items():
        if kind is not None and name != kind:
            continue
        table = Table(title=name, show_header=False, title_justify="left")
        for item, doc in reg.describe().items():
            table.add_row(item, escape(doc))
        out.print(table)
