"""Linearised decision boundaries: the first-order model behind DeepFool and FAB.

Around a point ``x`` the boundary between the class ``y`` and a class ``j`` is approximated by the
hyperplane ``f_j(x) + <w_j, z - x> = 0`` with ``f_j = z_j - z_y`` and ``w_j = grad f_j(x)``; its Lp
distance from ``x`` is ``|f_j| / ||w_j||_q`` (Moosavi-Dezfooli et al., CVPR 2016, Eq. 8;
Croce & Hein, ICML 2020, Eq. 4).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from robustlab.attacks.geometry import dual_norm


def class_gradients(
    forward: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, classes: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Logit differences to each candidate class and their input gradients.

    Returns ``f`` (N, M) with ``f[:, m] = z_{classes[:, m]} - z_y``, ``w`` (N, M, *x.shape[1:])
    with ``w[:, m] = grad_x f[:, m]``, and the logits (N, K). One backward pass per candidate
    column (M passes for the whole batch).
    """
    x = x.detach().requires_grad_(True)
    logits = forward(x)
    z_y = logits.gather(1, y[:, None])
    f = logits.gather(1, classes) - z_y
    grads = []
    for m in range(classes.shape[1]):
        (g,) = torch.autograd.grad(f[:, m].sum(), x, retain_graph=m + 1 < classes.shape[1])
        grads.append(g)
    w = grads[0].unsqueeze(1) if len(grads) == 1 else torch.stack(grads, dim=1)
    return f.detach(), w, logits.detach()


def boundary_distances(f: Tensor, w: Tensor, norm: str) -> Tensor:
    """(N, M) Lp distances ``|f_m| / ||w_m||_q`` to the linearised boundaries."""
    return f.abs() / dual_norm(w, norm, start=2).clamp_min(1e-12)


def closest_boundary(f: Tensor, w: Tensor, norm: str) -> tuple[Tensor, Tensor]:
    """The nearest linearised boundary per sample: its ``f`` (N,) and ``w`` (N, ...)."""
    if f.shape[1] == 1:  # one candidate (a targeted attack): nothing to choose
        return f[:, 0], w[:, 0]
    idx = boundary_distances(f, w, norm).argmin(1)
    rows = torch.arange(f.shape[0], device=f.device)
    return f[rows, idx], w[rows, idx]
