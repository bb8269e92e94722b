"""``robustlab attack``: run one attack on a dataset split and save the adversarial examples."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from robustlab.attacks import build_attack
from robustlab.cli import options as opt
from robustlab.cli.app import app, out
from robustlab.cli.options import load_for_eval, parse_kv
from robustlab.io import atomic_write
from robustlab.threat import Threat


@app.command()
def attack(
    checkpoint: opt.Checkpoint,
    out_path: Annotated[
        Path, typer.Option("--out", help="Output .npz with x, x_adv, y, success, norms.")
    ],
    dataset: opt.DatasetName = "digits",
    split: opt.Split = "test",
    name: Annotated[str, typer.Option("--attack", help="Attack name.")] = "pgd",
    threat: Annotated[str, typer.Option(help="Threat, e.g. linf:0.3.")] = "linf:0.3",
    attack_arg: Annotated[
        list[str] | None, typer.Option("--attack-arg", help="Attack argument key=value.")
    ] = None,
    batch_size: opt.BatchSize = 256,
    data_dir: opt.DataDir = None,
    download: opt.Download = False,
    limit: opt.Limit = None,
    seed: opt.Seed = 0,
    device: opt.Device = "cpu",
) -> None:
    """Run one attack on a dataset split and save the adversarial examples to .npz."""
    adv = build_attack(
        name, Threat.parse(threat), seed=seed, **parse_kv(attack_arg, "--attack-arg")
    )
    model, _, data = load_for_eval(checkpoint, dataset, split, data_dir, download, limit, device)
    parts = []
    for i in range(0, len(data), batch_size):
        xb, yb = data.x[i : i + batch_size].to(device), data.y[i : i + batch_size].to(device)
        parts.append(adv.run(model, xb, yb))
    cat = {
        key: torch.cat([getattr(p, key).detach().cpu() for p in parts]).numpy()
        for key in ("x_adv", "success", "clean_correct", "norms")
    }
    arrays = {"x": data.x.numpy(), "y": data.y.numpy(), **cat}
    atomic_write(out_path, lambda f: np.savez_compressed(f, **arrays))
    rate = float(cat["success"].mean())
    out.print(
        f"{name} at {threat}: robust accuracy {100 * (1 - rate):.2f}% on {len(data)} points; "
        f"saved to {out_path}"
    )
