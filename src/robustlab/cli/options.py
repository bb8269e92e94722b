"""What CLI commands share: their common options, ``key=value`` arguments, lists, model + data
loading."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from torch import nn

from robustlab.data import ArrayDataset, load_dataset
from robustlab.errors import RobustlabError
from robustlab.models import load_model

# Options several commands take, with one help text each.
Checkpoint = Annotated[Path, typer.Option(help="A robustlab checkpoint (.pt).")]
DatasetName = Annotated[str, typer.Option(help="Dataset name.")]
Split = Annotated[str, typer.Option(help="train or test.")]
BatchSize = Annotated[int, typer.Option(min=1)]
DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Dataset directory (default: $ROBUSTLAB_DATA/<name>)."),
]
Download = Annotated[
    bool, typer.Option(help="Download the dataset from its official mirror (checked).")
]
Limit = Annotated[int | None, typer.Option(help="Use only the first N samples.", min=1)]
Device = Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")]
Seed = Annotated[int, typer.Option(help="Random seed.")]
Progress = Annotated[bool, typer.Option(help="Show a progress bar.")]


def parse_kv(items: list[str] | None, what: str) -> dict[str, Any]:
    """``["steps=40", "threat=linf:0.3"]`` -> ``{"steps": 40, "threat": "linf:0.3"}`` (YAML values)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RobustlabError(f"{what} must be written key=value, got {item!r}.")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        out[key.strip().replace("-", "_")] = value if parsed is None and value else parsed
    return out


def parse_scoped_kv(items: list[str] | None, what: str) -> dict[str, dict[str, Any]]:
    """``["pgd.steps=100"]`` -> ``{"pgd": {"steps": 100}}``."""
    out: dict[str, dict[str, Any]] = {}
    for scope_key, value in parse_kv(items, what).items():
        scope, dot, key = scope_key.partition(".")
        if not dot:
            raise RobustlabError(f"{what} must be written name.key=value, got {scope_key!r}.")
        out.setdefault(scope.replace("_", "-"), {})[key] = value
    return out


def split_list(values: list[str] | None) -> list[str]:
    """Repeated and/or comma-separated options -> one flat list."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def load_data(
    dataset: str, split: str, data_dir: Path | None, download: bool, limit: int | None
) -> ArrayDataset:
    return load_dataset(
        dataset,
        split=split,
        data_dir=str(data_dir) if data_dir else None,
        download=download,
        limit=limit,
    )


def check_compatible(model_args: dict[str, Any], data: ArrayDataset) -> None:
    """The checkpoint's model must take the dataset's input shape and class count."""
    shape = tuple(model_args.get("input_shape", ()))
    if shape and shape != data.input_shape:
        raise RobustlabError(
            f"the model takes inputs of shape {shape} but dataset '{data.name}' has shape "
            f"{data.input_shape}."
        )
    k = model_args.get("num_classes")
    if k is not None and int(data.y.max()) >= k:
        raise RobustlabError(
            f"dataset '{data.name}' has labels up to {int(data.y.max())} but the model has {k} classes."
        )


def load_for_eval(
    checkpoint: Path, dataset: str, split: str, data_dir: Path | None, download: bool,
    limit: int | None, device: str,
) -> tuple[nn.Module, dict[str, Any], ArrayDataset]:
    """The checkpoint's model, the checkpoint, and the dataset split it is evaluated on (checked
    to fit the model)."""
    model, ckpt = load_model(checkpoint, device=device)
    data = load_data(dataset, split, data_dir, download, limit)
    check_compatible(ckpt.get("model_args", {}), data)
    return model, ckpt, data
