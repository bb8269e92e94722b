"""Batched inference: the logits or the predicted labels of a model on a tensor of inputs, in eval
mode, without gradients, one batch at a time on the model's device, collected on the CPU."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustlab.runtime.devices import model_device
from robustlab.runtime.modes import eval_mode
from robustlab.validation import check_int, check_logits


def batched_logits(
    model: nn.Module,
    x: Tensor,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> Tensor:
    """The ``(N, K)`` logits of ``model`` on ``x`` (float32 or wider), on the CPU; each batch's
    output is checked to be ``(batch, K)`` logits."""
    check_int(batch_size, "batch_size")
    device = model_device(model, device)
    out = []
    with eval_mode(model), torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(device)
            logits = check_logits(model(xb), len(xb))
            out.append(
                logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
            )
    return torch.cat([o.cpu() for o in out])


def predict(
    model: nn.Module,
    x: Tensor,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> Tensor:
    """The ``(N,)`` predicted labels (arg-max of the logits) of ``model`` on ``x``, on the CPU."""
    return batched_logits(model, x, batch_size, device).argmax(1)
