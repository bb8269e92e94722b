"""Where a model runs: the device a caller names, or else the one its parameters are on."""

from __future__ import annotations

import torch
from torch import nn


def model_device(model: nn.Module, device: str | torch.device | None = None) -> torch.device:
    """``device`` when given; otherwise the device of the model's first parameter (or buffer),
    and the CPU for a model that has neither."""
    if device is not None:
        return torch.device(device)
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")
