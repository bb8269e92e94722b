"""Tiny models shared by the attack, ensemble, checks and evaluation tests."""

from __future__ import annotations

import torch
from torch import nn


def linear_model(d: int = 12, k: int = 4, seed: int = 0, bias_to: int | None = None) -> nn.Module:
    """A linear classifier on (N, d) inputs; ``bias_to`` makes that class win by a wide margin."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(d, k)
    with torch.no_grad():
        model.weight.copy_(torch.randn(k, d, generator=g))
        model.bias.zero_()
        if bias_to is not None:
            model.bias[bias_to] = 1e3
    return model.eval()


def mlp(d: int = 16, k: int = 5, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, k))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7)
    return model.eval()


def data(n: int = 24, d: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g)


class Quantized(nn.Module):
    """Gradient masking: the input is rounded to a grid before a linear layer (zero gradients)."""

    def __init__(self, inner: nn.Module, levels: int = 4) -> None:
        super().__init__()
        self.inner, self.levels = inner, levels

    def forward(self, x):
        return self.inner(torch.round(x * self.levels) / self.levels)


class Noisy(nn.Module):
    """A randomized model: large Gaussian noise on the logits, even in eval mode."""

    def __init__(self, inner: nn.Module, sigma: float = 5.0) -> None:
        super().__init__()
        self.inner, self.sigma = inner, sigma

    def forward(self, x):
        z = self.inner(x)
        return z + self.sigma * torch.randn_like(z)


class Hardening(nn.Module):
    """A stateful defence: after ``calls`` forward passes it quantizes its input (masking the
    gradients), so later, longer attacks fail where earlier, shorter ones succeeded."""

    def __init__(self, inner: nn.Module, calls: int) -> None:
        super().__init__()
        self.inner, self.calls, self.seen = inner, calls, 0
        self.masked = Quantized(inner)

    def forward(self, x):
        self.seen += 1
        return self.masked(x) if self.seen > self.calls else self.inner(x)


F64 = torch.float64


def affine(w, b) -> nn.Linear:
    """A float64 linear classifier with weights ``w`` (K, D) and biases ``b`` (K,)."""
    w = torch.as_tensor(w, dtype=F64)
    model = nn.Linear(w.shape[1], w.shape[0]).to(F64)
    with torch.no_grad():
        model.weight.copy_(w)
        model.bias.copy_(torch.as_tensor(b, dtype=F64))
    return model.eval()


def record_iterates(monkeypatch, attack) -> list[torch.Tensor]:
    """The points at which ``attack`` asks for a gradient, in order."""
    seen: list[torch.Tensor] = []
    inner = attack.loss_gradient

    def spy(model, x_adv, *args, **kwargs):
        seen.append(x_adv.detach().clone())
        return inner(model, x_adv, *args, **kwargs)

    monkeypatch.setattr(attack, "loss_gradient", spy)
    return seen
