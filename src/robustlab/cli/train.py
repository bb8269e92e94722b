"""``robustlab train``: train a model with any registered method (a thin shell over
:class:`robustlab.training.trainer.Trainer`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from robustlab.cli import options as opt
from robustlab.cli.app import app, out
from robustlab.cli.options import load_data, parse_kv
from robustlab.data import train_val_split
from robustlab.data.noise import with_label_noise
from robustlab.errors import RobustlabError
from robustlab.models import build_model
from robustlab.threat import Threat
from robustlab.training.methods import METHODS


@app.command()
def train(
    model: Annotated[str, typer.Option(help="Model name (see `robustlab list models`).")] = "mlp",
    dataset: opt.DatasetName = "digits",
    method: Annotated[
        str, typer.Option(help="Training method (see `robustlab list methods`).")
    ] = "standard",
    method_arg: Annotated[
        list[str] | None, typer.Option("--method-arg", help="Method argument key=value (repeat).")
    ] = None,
    model_arg: Annotated[
        list[str] | None, typer.Option("--model-arg", help="Model argument key=value (repeat).")
    ] = None,
    loss: Annotated[
        str | None, typer.Option(help="Loss name for the method (see `list losses`).")
    ] = None,
    threat: Annotated[str | None, typer.Option(help="Training threat, e.g. linf:0.3.")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: opt.BatchSize = 128,
    lr: float = 0.1,
    optimizer: str = "sgd",
    schedule: str = "cosine",
    weight_decay: float = 5e-4,
    eps_ramp: Annotated[float, typer.Option(help="Epochs over which eps grows from 0.")] = 0.0,
    ramp: Annotated[
        list[str] | None,
        typer.Option(help="Named ramp name=start:length in epochs, e.g. beta=0:5 (repeat)."),
    ] = None,
    sam_rho: Annotated[
        float, typer.Option(min=0.0, help="SAM radius rho (0: plain optimizer).")
    ] = 0.0,
    asam: Annotated[bool, typer.Option(help="Adaptive SAM (ASAM) instead of SAM.")] = False,
    ema_decay: Annotated[
        float | None, typer.Option(help="Weight EMA decay, e.g. 0.999 (writes ema.pt).")
    ] = None,
    robust_val_every: Annotated[
        int, typer.Option(min=0, help="PGD on the validation split every k epochs; keeps best.pt.")
    ] = 0,
    robust_val_steps: Annotated[int, typer.Option(min=1, help="PGD steps of that check.")] = 10,
    patience: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many robust checks without gain.")
    ] = None,
    amp: Annotated[
        str | None, typer.Option(help="GPU mixed precision: bfloat16 or float16.")
    ] = None,
    label_noise: Annotated[
        str | None,
        typer.Option(
            help="Corrupt the training labels, e.g. symmetric:0.4, asymmetric:0.4, "
            "pairflip:0.45, instance:0.2 (the mask is saved in --out)."
        ),
    ] = None,
    val_fraction: Annotated[float, typer.Option(help="Held-out share of the training set.")] = 0.1,
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory.")] = Path("runs/train"),
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint in --out.")] = False,
    data_dir: opt.DataDir = None,
    download: opt.Download = False,
    limit: opt.Limit = None,
    seed: opt.Seed = 0,
    device: opt.Device = "cpu",
    progress: opt.Progress = True,
) -> None:
    """Train a model with any registered method; writes checkpoint.pt and metrics.jsonl."""
    from robustlab.runtime import distributed
    from robustlab.training.trainer import TrainConfig, Trainer

    distributed.init_from_env(device)  # a no-op unless launched by torchrun with WORLD_SIZE > 1
    ramps = {}
    for item in ramp or []:
        name, sep, spec = item.partition("=")
        if not sep or not name.strip():
            raise RobustlabError(f"--ramp must be written name=start:length, got {item!r}.")
        ramps[name.strip()] = spec
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, schedule=schedule,
        weight_decay=weight_decay, eps_ramp_epochs=eps_ramp, ramps=ramps, sam_rho=sam_rho,
        sam_adaptive=asam, ema_decay=ema_decay, robust_val_every=robust_val_every,
        robust_val_steps=robust_val_steps, patience=patience, amp=amp is not None,
        amp_dtype=amp or "bfloat16", seed=seed, device=device,
    )  # fmt: skip
    method_kwargs = parse_kv(method_arg, "--method-arg")
    if loss is not None:
        method_kwargs["loss"] = loss
    if threat is not None:
        method_kwargs["threat"] = Threat.parse(threat)
    method_obj = METHODS.build(method, **method_kwargs)
    data = load_data(dataset, "train", data_dir, download, limit)
    train_set, val_set = (
        train_val_split(data, val_fraction, seed=seed) if val_fraction > 0 else (data, None)
    )
    if label_noise is not None:  # noisy training labels; validation keeps the clean ones
        train_set, noisy = with_label_noise(train_set, label_noise, seed, out_dir)
        out.print(
            f"label noise {label_noise}: {int(noisy.is_noisy.sum())} of {len(train_set)} "
            "training labels changed"
        )
    torch.manual_seed(seed)
    net = build_model(
        model, input_shape=data.input_shape, num_classes=data.num_classes,
        **parse_kv(model_arg, "--model-arg"),
    )  # fmt: skip
    trainer = Trainer(
        net, method_obj, train_set, config, val=val_set, out_dir=out_dir, progress=progress
    )
    history = trainer.fit(resume=resume)
    if not distributed.is_main():
        return
    last = history[-1] if history else {}
    summary = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if isinstance(v, float))
    out.print(f"trained {model} with {method} for {len(history)} epochs: {summary}")
    out.print(f"checkpoint: {out_dir / 'checkpoint.pt'}")
    for extra in ("best.pt", "ema.pt"):
        if (out_dir / extra).exists():
            out.print(f"{extra.removesuffix('.pt')}: {out_dir / extra}")
