"""The resumable state of an evaluation: per-(attack, threat) progress, saved atomically after
every batch and valid only for the model, data and configuration it was made with."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab.data import ArrayDataset
from robustlab.errors import RobustlabError
from robustlab.io import atomic_torch_save

STATE_SCHEMA = "robustlab-evaluation-state/1"


def fingerprint(model: nn.Module, dataset: ArrayDataset, config: dict[str, Any]) -> str:
    """Hash of the model weights, the data and the evaluation config (to validate a state file)."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for t in (dataset.x, dataset.y, *model.state_dict().values()):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class EvaluationState:
    """Per-(attack, threat) progress, saved atomically after every batch."""

    def __init__(self, path: str | Path | None, key: str, n_items: int, n: int) -> None:
        self.path = Path(path) if path is not None else None
        self.key = key
        self.items: list[dict[str, Any]] = [
            {"next": 0, "robust": torch.zeros(n, dtype=torch.bool), "time_s": 0.0,
             "forward_passes": 0, "breakdown": []}
            for _ in range(n_items)
        ]  # fmt: skip
        self.resumed = False
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            data = torch.load(self.path, weights_only=True)
        except Exception as e:  # truncated or foreign file
            raise RobustlabError(
                f"evaluation state {self.path} cannot be read ({type(e).__name__}); delete it to "
                "start over."
            ) from None
        if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA:
            raise RobustlabError(f"{self.path} is not a robustlab evaluation state; delete it.")
        if data.get("key") != self.key or len(data.get("items", [])) != len(self.items):
            raise RobustlabError(
                f"evaluation state {self.path} belongs to a different model, dataset or "
                "configuration; delete it or write the result elsewhere."
            )
        self.items = data["items"]
        self.resumed = any(item["next"] > 0 for item in self.items)

    def save(self) -> None:
        if self.path is not None:
            atomic_torch_save(
                self.path, {"schema": STATE_SCHEMA, "key": self.key, "items": self.items}
            )
