"""``robustlab certify``: certified accuracy of a checkpoint with IBP, CROWN-IBP, CROWN,
randomized smoothing or Lipschitz margins (a thin shell over :func:`robustlab.certify.certify`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from robustlab.certify import CERTIFIERS
from robustlab.certify import certify as run_certify
from robustlab.cli import options as opt
from robustlab.cli.app import app, out
from robustlab.cli.options import load_for_eval, parse_kv
from robustlab.io import atomic_write_json
from robustlab.threat import Threat


@app.command()
def certify(
    checkpoint: opt.Checkpoint,
    dataset: opt.DatasetName = "digits",
    split: opt.Split = "test",
    method: Annotated[
        str, typer.Option(help=f"Certification method: {', '.join(CERTIFIERS.names())}.")
    ] = "ibp",
    threat: Annotated[
        str, typer.Option(help="Threat, e.g. linf:0.1 (bounds) or l2:0.5 (smoothing).")
    ] = "linf:0.1",
    option: Annotated[
        list[str] | None,
        typer.Option("--option", help="Method option key=value (repeat), e.g. sigma=0.25, n=1000."),
    ] = None,
    batch_size: opt.BatchSize = 256,
    out_path: Annotated[Path | None, typer.Option("--out", help="Write the result JSON here.")] = None,
    per_sample: Annotated[
        bool, typer.Option(help="Include per-sample bounds and radii in the JSON.")
    ] = False,
    data_dir: opt.DataDir = None,
    download: opt.Download = False,
    limit: opt.Limit = None,
    seed: opt.Seed = 0,
    device: opt.Device = "cpu",
    progress: opt.Progress = True,
) -> None:
    """Certify a checkpoint: clean accuracy and the share of points proven robust."""
    CERTIFIERS.get(method)
    parsed = Threat.parse(threat)
    options = parse_kv(option, "--option")
    model, _, data = load_for_eval(checkpoint, dataset, split, data_dir, download, limit, device)
    result = run_certify(
        model, data, method, parsed, batch_size=batch_size, device=device, seed=seed,
        progress=progress, **options,
    )  # fmt: skip
    table = Table(title=f"{result.model} on {result.dataset} ({result.n} points), {method} "
                        f"at {result.threat}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("clean accuracy %", f"{100 * result.clean_accuracy:.2f}")
    table.add_row("certified accuracy %", f"{100 * result.certified_accuracy:.2f}")
    for key, value in result.summary.items():
        if isinstance(value, dict):
            for r, acc in value.items():
                table.add_row(f"{key} {r} %", f"{100 * acc:.2f}")
        elif isinstance(value, float):
            table.add_row(key, f"{value:.4g}")
    table.add_row("time s", f"{result.time_s:.2f}")
    out.print(table)
    if out_path is not None:
        atomic_write_json(out_path, result.to_dict(per_sample=per_sample))
        out.print(f"results: {out_path}")
