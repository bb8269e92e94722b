"""``robustlab corrupt``: write a corrupted copy of a dataset (one .npz per corruption x severity)
and a gallery PNG. A thin shell over :mod:`robustlab.corruptions`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from robustlab.cli import options as opt
from robustlab.cli.app import app, out
from robustlab.cli.options import load_data, split_list
from robustlab.corruptions import CORRUPTION_SETS, CORRUPTIONS, gallery, write_corrupted_dataset
from robustlab.corruptions.sets import corruption_names
from robustlab.errors import RobustlabError
from robustlab.evaluation.corruptions import severity_plan


@app.command("corrupt")
def corrupt_cmd(
    dataset: Annotated[str, typer.Argument(help="Dataset name, e.g. mnist, digits, cifar10, npz.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path(
        "runs/corrupted"
    ),
    corruptions: Annotated[
        str,
        typer.Option(
            "--corruptions", "-c",
            help="A set (" + ", ".join(CORRUPTION_SETS) + "), corruption names, or a "
            "comma-separated mix.",
        ),
    ] = "mnist-c",
    severities: Annotated[
        list[str] | None,
        typer.Option("--severity", "-s", help="Severities 1-5 (repeat or comma-separate); default "
                     "all five."),
    ] = None,
    split: Annotated[str, typer.Option(help="Dataset split to corrupt.")] = "test",
    data_dir: opt.DataDir = None,
    download: opt.Download = False,
    limit: opt.Limit = None,
    batch_size: Annotated[int, typer.Option(help="Images corrupted per batch.", min=1)] = 256,
    device: opt.Device = "cpu",
    seed: opt.Seed = 0,
    gallery_only: Annotated[
        bool, typer.Option("--gallery-only", help="Only write the gallery PNG.")
    ] = False,
    list_only: Annotated[
        bool, typer.Option("--list", help="List the corruptions and sets, then exit.")
    ] = False,
) -> None:
    """Write a corrupted copy of a dataset (npz per corruption x severity) and gallery.png."""
    if list_only:
        for name, doc in CORRUPTIONS.describe().items():
            out.print(f"[bold]{name}[/]  {doc}", highlight=False)
        for name, members in CORRUPTION_SETS.items():
            out.print(f"[bold]set {name}[/]: {', '.join(members)}", highlight=False)
        return
    try:
        sev = [int(s) for s in split_list(severities)] or [1, 2, 3, 4, 5]
    except ValueError:
        raise RobustlabError(f"severities must be integers from 1 to 5, got {severities}.") from None
    severity_plan(corruption_names(corruptions), sev)  # validate names and severities before loading
    data = load_data(dataset, split, data_dir, download, limit)
    if data.x.dim() != 4:
        raise RobustlabError(
            f"corruptions need image data (N, C, H, W); dataset '{data.name}' has shape "
            f"{tuple(data.x.shape)}."
        )
    png = gallery(data.x[:1], corruptions, out_dir / "gallery.png", severities=sev, seed=seed)
    out.print(f"gallery: {png}")
    if gallery_only:
        return
    manifest = write_corrupted_dataset(
        data, out_dir, corruptions, sev, seed, batch_size=batch_size, device=device, progress=True
    )
    out.print(f"wrote {len(corruption_names(corruptions)) * len(sev)} files; manifest: {manifest}")
