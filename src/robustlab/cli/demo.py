"""``robustlab demo``: standard vs PGD-AT training on digits, both evaluated, with a report (a thin
shell over :func:`robustlab.demo.run_demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from robustlab.cli import options as opt
from robustlab.cli.app import app, out
from robustlab.cli.render import print_checks


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs per model.")] = 20,
    seed: opt.Seed = 0,
    device: opt.Device = "cpu",
) -> None:
    """Train a standard and a PGD-AT CNN on digits, evaluate both, write results and a report."""
    from robustlab.demo import DEMO_ATTACKS_TEXT, run_demo

    res = run_demo(out_dir, epochs=epochs, seed=seed, device=device)
    results = res["results"]
    table = Table(
        title=f"robustlab demo: accuracy % on digits, worst case over {DEMO_ATTACKS_TEXT}"
    )
    table.add_column("threat")
    for r in results:
        table.add_column(r.model, justify="right")
    table.add_row("clean", *[f"{100 * r.clean_accuracy:.1f}" for r in results])
    worst = [
        {e.threat: e.robust_accuracy for e in r.attacks if e.attack == "worst-case"}
        for r in results
    ]
    for t in worst[0]:
        table.add_row(t, *[f"{100 * w[t]:.1f}" for w in worst])
    out.print(table)
    for r in results:  # a raised flag: what it means for this model and where it was found
        out.print(f"{r.model}: ", end="")
        print_checks(r, only_raised=True)
    out.print(f"results: {res['results_path']}")
    out.print(f"report:  {res['report_path']}")
