"""Early stopping on a robust validation split (Rice, Wong & Kolter, ICML 2020, "Overfitting in
adversarially robust deep learning").

In adversarial training the robust test accuracy peaks (typically right after the first
learning-rate decay) and then falls while the robust training loss keeps going down: robust
overfitting. Rice et al. recover the peak by holding out a validation split, attacking it with PGD
every ``k`` epochs and keeping the checkpoint with the best robust validation accuracy
(``best.pt``); with ``patience`` set, training stops after that many evaluations without
improvement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustlab.attacks import Attack
from robustlab.data import ArrayDataset
from robustlab.runtime.distributed import merge_shards, owned_batches
from robustlab.runtime.modes import eval_mode


@dataclass
class SplitAccuracy:
    clean: float
    robust: float | None = None


def split_accuracy(
    model: nn.Module, data: ArrayDataset, attack: Attack | None = None, batch_size: int = 256
) -> SplitAccuracy:
    """Clean accuracy, and robust accuracy under ``attack`` (correct and not broken), of ``model``
    on ``data``; sharded over the ranks of a distributed run (each batch evaluated once)."""
    device = next(model.parameters()).device
    n = len(data)
    results = torch.zeros(2, n, dtype=torch.bool)
    with eval_mode(model):
        for start, end in owned_batches(n, batch_size):
            xb, yb = data.x[start:end].to(device), data.y[start:end].to(device)
            with torch.no_grad():
                results[0, start:end] = (model(xb).argmax(1) == yb).cpu()
            if attack is not None:
                results[1, start:end] = attack.run(model, xb, yb).robust.cpu()
    results, _ = merge_shards(results)
    clean = float(results[0].float().mean())
    robust = float((results[1] & results[0]).float().mean()) if attack is not None else None
    return SplitAccuracy(clean, robust)


class EarlyStopping:
    """Tracks the best robust validation accuracy; :meth:`update` says whether it improved."""

    def __init__(self, patience: int | None = None, min_delta: float = 0.0) -> None:
        self.patience = patience
        self.min_delta = float(min_delta)
        self.best = -math.inf
        self.best_epoch = 0
        self.bad_evals = 0
        self.stopped = False

    def update(self, epoch: int, value: float) -> bool:
        """Record ``value`` measured after ``epoch`` (1-based); True if it is a new best."""
        if value > self.best + self.min_delta:
            self.best, self.best_epoch, self.bad_evals = value, epoch, 0
            return True
        self.bad_evals += 1
        if self.patience is not None and self.bad_evals >= self.patience:
            self.stopped = True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_evals": self.bad_evals,
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_evals = int(state["bad_evals"])
        self.stopped = bool(state["stopped"])
