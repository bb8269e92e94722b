"""Threat models: an Lp ball of radius eps intersected with the [0, 1] box.

A threat is a value, ``Threat("linf", 0.3)``, parsed from strings like ``"linf:8/255"`` or
``"l2:0.5"``. It owns everything geometric an attack needs: per-sample norms, projection onto the
ball and the box, random starts inside the ball, and the steepest-ascent direction of a gradient.

Projection first projects the perturbation ``delta = x_adv - x`` onto the Lp ball, then clips
``x + delta`` to [0, 1]. Because ``x`` itself is in the box, clipping only shrinks each
``|delta_i|``, so the result lies in both sets (for Linf this is the exact Euclidean projection onto
the intersection; for L2/L1 it is a feasible point, as in APGD and SLIDE).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import torch
from torch import Tensor

from robustlab.errors import RobustlabError

Norm = Literal["linf", "l2", "l1"]
NORMS: tuple[str, ...] = ("linf", "l2", "l1")
_ALIASES = {
    "inf": "linf",
    "linf": "linf",
    "l_inf": "linf",
    "2": "l2",
    "l2": "l2",
    "1": "l1",
    "l1": "l1",
}
_EPS_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(?:/\s*([0-9]*\.?[0-9]+))?\s*$", re.I)


def parse_eps(text: str | float) -> float:
    """Parse ``"0.3"``, ``"8/255"`` or a number into a float >= 0."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _EPS_RE.match(str(text))
        if not m:
            raise RobustlabError(f"eps must be a number or a fraction like 8/255, got {text!r}.")
        value = float(m.group(1)) / (float(m.group(2)) if m.group(2) else 1.0)
    if not math.isfinite(value) or value < 0:
        raise RobustlabError(f"eps must be a finite number >= 0, got {text!r}.")
    return value


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def lp_norm(t: Tensor, p: float, dim: int = -1) -> Tensor:
    """``||t||_p`` along ``dim`` for p in {0, 1, 2, inf}; L1 and Linf as plain reductions, which
    run several times faster on the CPU than ``torch.linalg.vector_norm`` with ``ord=1`` or ``inf``."""
    if p == math.inf:
        return t.abs().amax(dim)
    if p == 1:
        return t.abs().sum(dim)
    if p == 0:
        return t.ne(0).sum(dim).to(t.dtype)
    return torch.linalg.vector_norm(t, ord=p, dim=dim)


def _view(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample vector (N,) to broadcast against ``like`` (N, ...)."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def project_l1_ball(delta: Tensor, eps: Tensor | float) -> Tensor:
    """Euclidean projection of each sample onto the L1 ball (Duchi et al., ICML 2008).

    ``w* = sign(v) * max(|v| - theta, 0)`` with ``theta`` from the sorted magnitudes so that
    ``||w*||_1 = eps`` whenever ``||v||_1 > eps``.
    """
    v = _flat(delta)
    n, d = v.shape
    eps_t = torch.as_tensor(eps, dtype=v.dtype, device=v.device).expand(n)
    a = v.abs()
    outside = a.sum(1) > eps_t
    if not outside.any():
        return delta
    mu, _ = torch.sort(a, dim=1, descending=True)
    cumsum = mu.cumsum(1)
    k = torch.arange(1, d + 1, device=v.device, dtype=v.dtype)
    cond = mu * k > (cumsum - eps_t[:, None])
    rho = cond.to(v.dtype).cumsum(1).argmax(1)  # last index where cond holds
    theta = (cumsum.gather(1, rho[:, None]).squeeze(1) - eps_t) / (rho + 1).to(v.dtype)
    theta = torch.where(outside, theta.clamp_min(0), torch.zeros_like(theta))
    w = v.sign() * (a - theta[:, None]).clamp_min(0)
    return w.reshape(delta.shape)


@dataclass(frozen=True)
class Threat:
    """An Lp ball of radius ``eps`` around each input, intersected with the [0, 1] box."""

    norm: Norm
    eps: float

    def __post_init__(self) -> None:
        norm = _ALIASES.get(str(self.norm).lower())
        if norm is None:
            raise RobustlabError(f"Unknown norm {self.norm!r}; known norms: {', '.join(NORMS)}.")
        object.__setattr__(self, "norm", norm)
        object.__setattr__(self, "eps", parse_eps(self.eps))

    # ----------------------------------------------------------------- construction
    @classmethod
    def parse(cls, spec: str | Threat) -> Threat:
        """Parse ``"linf:8/255"``, ``"l2:0.5"``, ``"l1:10"`` (or return a Threat unchanged)."""
        if isinstance(spec, Threat):
            return spec
        if not isinstance(spec, str) or ":" not in spec:
            raise RobustlabError(
                f"A threat is written 'norm:eps' like 'linf:8/255' or 'l2:0.5', got {spec!r}."
            )
        norm, eps = spec.split(":", 1)
        return cls(norm.strip(), parse_eps(eps))  # type: ignore[arg-type]

    def with_eps(self, eps: float) -> Threat:
        return Threat(self.norm, eps)

    def __str__(self) -> str:
        frac = Fraction(self.eps).limit_denominator(1000)
        if frac.denominator in (255, 510, 1020) and abs(float(frac) - self.eps) < 1e-12:
            return f"{self.norm}:{frac.numerator}/{frac.denominator}"
        return f"{self.norm}:{self.eps:g}"

    # ----------------------------------------------------------------- geometry
    @property
    def p(self) -> float:
        return {"linf": math.inf, "l2": 2.0, "l1": 1.0}[self.norm]

    @property
    def dual_p(self) -> float:
        """The dual exponent q with 1/p + 1/q = 1 (max over the ball of <w, d> is eps ||w||_q)."""
        return {"linf": 1.0, "l2": 2.0, "l1": math.inf}[self.norm]

    def norms(self, delta: Tensor) -> Tensor:
        """Per-sample norm of a perturbation batch (N, ...) -> (N,)."""
        return lp_norm(_flat(delta), self.p, dim=1)

    def contains(self, x_adv: Tensor, x: Tensor, atol: float = 1e-5) -> Tensor:
        """Per-sample mask: inside the ball (relative float tolerance) and inside [0, 1]."""
        in_ball = self.norms(x_adv - x) <= self.eps * (1 + atol) + atol
        in_box = (_flat(x_adv) >= -atol).all(1) & (_flat(x_adv) <= 1 + atol).all(1)
        return in_ball & in_box

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Project ``x_adv`` onto the ball around ``x`` and then into the [0, 1] box."""
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        elif self.norm == "l2":
            norms = self.norms(delta).clamp_min(1e-12)
            delta = delta * _view((self.eps / norms).clamp(max=1.0), delta)
        else:
            delta = project_l1_ball(delta, self.eps)
        return (x + delta).clamp(0.0, 1.0)

    def random_init(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A point drawn uniformly from the ball around ``x``, then clipped to the box."""
        n, d = x.shape[0], x[0].numel()
        kw = {"generator": generator, "device": x.device, "dtype": x.dtype}
        if self.norm == "linf":
            delta = (torch.rand(x.shape, **kw) * 2 - 1) * self.eps
        else:
            if self.norm == "l2":
                direction = torch.randn(n, d, **kw)
            else:  # uniform on the L1 sphere: normalised Laplace samples
                e = -torch.log(torch.rand(n, d, **kw).clamp_min(1e-12))
                direction = e * torch.where(torch.rand(n, d, **kw) < 0.5, -1.0, 1.0)
            direction = direction / torch.linalg.vector_norm(
                direction, ord=self.p, dim=1, keepdim=True
            )
            radius = torch.rand(n, 1, **kw) ** (1.0 / d) * self.eps
            delta = (direction * radius).reshape(x.shape)
        return (x + delta).clamp(0.0, 1.0)

    def steepest_direction(
        self, grad: Tensor, x_adv: Tensor | None = None, l1_sparsity: float = 0.95
    ) -> Tensor:
        """Unit-norm direction of steepest ascent of a linear function with gradient ``grad``.

        Linf: ``sign(g)``. L2: ``g / ||g||_2``. L1: the sparse step of SLIDE (Tramer & Boneh 2019):
        ``sign(g)`` on the coordinates whose ``|g|`` is in the top ``1 - l1_sparsity`` fraction,
        scaled to unit L1 norm; coordinates already at a box face the step would push through are
        left out (this needs ``x_adv``).
        """
        if self.norm == "linf":
            return grad.sign()
        g = _flat(grad)
        if self.norm == "l2":
            return (g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)).reshape(grad.shape)
        if x_adv is not None:
            xa = _flat(x_adv)
            blocked = ((xa <= 0) & (g < 0)) | ((xa >= 1) & (g > 0))
            g = g.masked_fill(blocked, 0.0)
        a = g.abs()
        k = max(1, int(round((1.0 - l1_sparsity) * g.shape[1])))
        thresh = a.topk(k, dim=1).values[:, -1:]
        mask = (a >= thresh) & (a > 0)
        step = g.sign() * mask
        step = step / step.abs().sum(1, keepdim=True).clamp_min(1.0)
        return step.reshape(grad.shape)


def as_threat(spec: str | Threat) -> Threat:
    """Accept a Threat or its string form."""
    return Threat.parse(spec)
