"""The dataset registry, :data:`DATASETS`: dataset loaders by name (each loader module registers
its datasets through :func:`robustlab.data.sources.dataset_loader`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from robustlab.registry import Registry

if TYPE_CHECKING:
    from robustlab.data.sources import DatasetLoader

DATASETS: Registry[DatasetLoader] = Registry("dataset")
