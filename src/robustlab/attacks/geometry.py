"""Lp geometry shared by the minimal-norm attacks (FAB, DeepFool, FMN, C&W).

- :func:`perturbation_norms`: per-sample L0/L1/L2/Linf norms (L0 counts changed coordinates).
- :func:`dual_norm`: the dual norm ``||w||_q`` (1/p + 1/q = 1) that turns a linear margin into a
  distance: the Lp distance from a point to the hyperplane ``{z: w.z = b}`` is ``|w.x - b| / ||w||_q``.
- :func:`project_ball`: projection onto an Lp ball whose radius differs per sample (FMN's adaptive
  norm bound); :class:`~robustlab.threat.Threat` projects onto one fixed radius.
- :func:`project_hyperplane`: the smallest Lp step ``delta`` with ``w.delta = c``, optionally
  inside the [0, 1] box, in closed form (Croce & Hein, ICML 2020, "Minimally distorted adversarial
  examples with a fast adaptive boundary attack", Sec. 3.1; without the box it is DeepFool's step).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from robustlab.errors import RobustlabError
from robustlab.threat import lp_norm, project_l1_ball

MINIMAL_NORMS: tuple[str, ...] = ("linf", "l2", "l1", "l0")
_ORDER = {"l0": 0.0, "l1": 1.0, "l2": 2.0, "linf": math.inf}
_DUAL = {"l1": math.inf, "l2": 2.0, "linf": 1.0}
_ALIASES = {"inf": "linf", "l_inf": "linf", "2": "l2", "1": "l1", "0": "l0"}


def check_norm(norm: str, supported: tuple[str, ...], who: str) -> str:
    """Normalise a norm name (``"inf"``, ``"Linf"``, ``"2"``...) and check ``who`` supports it."""
    key = str(norm).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in supported:
        raise RobustlabError(f"{who} supports the norms {', '.join(supported)}; got {norm!r}.")
    return key


def _flat(t: Tensor, start: int = 1) -> Tensor:
    return t.flatten(start)


def _view(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample vector (N,) to broadcast against ``like`` (N, ...)."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def perturbation_norms(delta: Tensor, norm: str) -> Tensor:
    """Per-sample norm (N,) of a perturbation batch (N, ...)."""
    return lp_norm(_flat(delta), _ORDER[norm], dim=1)


def dual_norm(w: Tensor, norm: str, start: int = 1) -> Tensor:
    """``||w||_q`` over the dimensions from ``start`` on (q the dual exponent of ``norm``)."""
    if norm not in _DUAL:
        raise RobustlabError(f"The {norm} norm has no dual norm here; use linf, l2 or l1.")
    return lp_norm(_flat(w, start), _DUAL[norm], dim=-1)


def project_ball(delta: Tensor, norm: str, radius: Tensor) -> Tensor:
    """Project each ``delta[i]`` onto the ``norm`` ball of radius ``radius[i]`` (inf allowed).

    L1 is the exact Euclidean projection (Duchi et al. 2008); L0 keeps the ``floor(radius)``
    largest-magnitude coordinates (the Euclidean projection onto the L0 ball).
    """
    r = radius.to(delta.dtype)
    if norm == "linf":
        rv = _view(r, delta)
        return torch.maximum(torch.minimum(delta, rv), -rv)
    if norm == "l2":
        scale = (r / perturbation_norms(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
        return delta * _view(scale, delta)
    if norm == "l1":
        return project_l1_ball(delta, r)
    if norm == "l0":
        flat = _flat(delta)
        k = torch.floor(r.clamp(max=flat.shape[1])).long()
        rank = flat.abs().argsort(dim=1, descending=True).argsort(dim=1)
        return (flat * (rank < k[:, None])).reshape(delta.shape)
    raise RobustlabError(f"Unknown norm {norm!r}; known norms: {', '.join(MINIMAL_NORMS)}.")


def project_hyperplane(w: Tensor, c: Tensor, norm: str, point: Tensor | None = None) -> Tensor:
    """The smallest ``delta`` in ``norm`` with ``<w, delta> = c`` per sample.

    With ``point`` given, ``point + delta`` must also stay in [0, 1]; when the box makes the
    hyperplane unreachable the result is the box corner furthest along ``w`` (as in FAB). Solved in
    closed form: for L2 ``delta_i = sign(w_i) min(lam |w_i|, room_i)``, for Linf
    ``delta_i = sign(w_i) min(lam, room_i)``, with the scalar ``lam`` found on the sorted
    breakpoints; for L1 the budget goes to the coordinates with the largest ``|w_i|`` first
    (a fractional knapsack). Without the box these reduce to ``c w / ||w||_2^2``,
    ``c sign(w) / ||w||_1`` and ``c e_k / w_k`` with ``k = argmax |w_k|``.
    """
    shape = w.shape
    wf = _flat(w)
    # orient each row so that the required <w, delta> is |c| >= 0: delta_i has the sign of w_i c
    sign = torch.sign(wf) * torch.sign(c)[:, None]
    need = c.abs()
    aw = wf.abs()
    room = None
    if point is not None:
        pf = _flat(point)
        # 1 - p_i where delta_i > 0, p_i elsewhere, by arithmetic (exact: one term is 0),
        # several times faster on the CPU than torch.where
        up = sign.clamp_min(0.0)
        room = (up * (1.0 - pf) + (1.0 - up) * pf).clamp_min_(0.0)
    if norm == "l1":
        mag = _l1_knapsack(aw, torch.full_like(aw, math.inf) if room is None else room, need)
    elif norm == "l2":
        a = aw * aw
        lam = _plane_level(a, None if room is None else room / aw.clamp_min(1e-30), need)
        step = lam[:, None] * aw
        # lam is inf when the box makes the plane unreachable: every used coordinate saturates
        mag = torch.where(aw > 0, step if room is None else torch.minimum(step, room), 0.0)
    elif norm == "linf":
        lam = _plane_level(aw, room, need)[:, None]
        mag = lam if room is None else torch.minimum(lam, room)  # times sign: 0 where w_i = 0
    else:
        raise RobustlabError(f"Hyperplane projection supports linf, l2, l1; got {norm!r}.")
    return (sign * mag).reshape(shape)


def _plane_level(a: Tensor, t: Tensor | None, need: Tensor) -> Tensor:
    """``lam`` with ``sum_i a_i min(lam, t_i) = need`` (no box: ``t = inf``, a closed form)."""
    if t is None:
        return need / a.sum(1).clamp_min(1e-30)
    return _water_level(a, t, need)


#: breakpoints searched by partial selection before a full sort: FAB's Linf steps on MNIST pass
#: fewer than 96 of 784 breakpoints in about 95% of rows
_PREFIX = 96


def _water_level(a: Tensor, t: Tensor, need: Tensor) -> Tensor:
    """Smallest ``lam >= 0`` with ``sum_i a_i min(lam, t_i) = need`` (inf when unreachable), for
    ``a, t >= 0``.

    ``h(lam) = sum_i a_i min(lam, t_i)`` is piecewise linear with breakpoints at the ``t_i``; the
    solution lies after the last breakpoint ``t_j`` with ``h(t_j) < need``. Only the breakpoints below
    ``lam`` have to be in sorted order, usually a few of many, so the smallest ``_PREFIX`` are
    selected first (``topk``) and rows whose solution lies beyond them are sorted in full.
    Coordinates with ``t_i = 0`` add nothing for any ``lam`` and are left out of the selection.
    ``a`` and ``t`` must be finite.
    """
    if a.shape[1] <= 2 * _PREFIX:
        return _water_level_sorted(a, t, need)
    # masks by arithmetic, exact for finite inputs and faster than torch.where on the CPU
    saturable = torch.sign(t)  # 1 where t_i > 0, else 0
    a = a * saturable
    t_sel = t + (1.0 - saturable) * torch.finfo(t.dtype).max  # left out: after every breakpoint
    t_s, order = t_sel.topk(_PREFIX, dim=1, largest=False)
    a_s = a.gather(1, order)
    tail = a.scatter(1, order, 0.0).sum(1)  # weight of the breakpoints after the selection
    lam, found = _level_on_sorted(a_s, t_s, tail, need)
    unreachable = (a * t).sum(1) < need  # h(inf) < need
    lam = torch.where(unreachable, math.inf, lam)
    rest = (~found & ~unreachable).nonzero().squeeze(1)
    if rest.numel():
        lam[rest] = _water_level_sorted(a[rest], t[rest], need[rest])
    return torch.where(need > 0, lam, torch.zeros_like(lam))


def _water_level_sorted(a: Tensor, t: Tensor, need: Tensor) -> Tensor:
    """:func:`_water_level` over all breakpoints in sorted order."""
    t_s, order = t.sort(dim=1)
    lam, found = _level_on_sorted(a.gather(1, order), t_s, torch.zeros_like(need), need)
    lam = torch.where(found, lam, torch.full_like(lam, math.inf))
    return torch.where(need > 0, lam, torch.zeros_like(lam))


def _level_on_sorted(
    a_s: Tensor, t_s: Tensor, tail: Tensor, need: Tensor
) -> tuple[Tensor, Tensor]:
    """``lam`` from the first breakpoints in ascending order ``t_s`` with their weights ``a_s``,
    ``tail`` the weight of all later ones; ``found`` is False where ``h`` stays below ``need`` up
    to the last breakpoint given."""
    filled = (a_s * t_s).cumsum(1)  # contribution of the saturated coordinates
    # weight still growing with lam: a suffix sum (not total - prefix, which cancels in float32)
    rest = a_s.flip(1).cumsum(1).flip(1) - a_s + tail[:, None]
    reached = filled + t_s * rest >= need[:, None]  # h(t_k) >= need, monotone in k
    k = reached.to(torch.uint8).argmax(1, keepdim=True)  # the first breakpoint reached
    prev = (k - 1).clamp_min(0)
    first = (k == 0)[:, 0]
    prev_filled = torch.where(first, 0.0, filled.gather(1, prev)[:, 0])
    prev_rest = torch.where(first, a_s.sum(1) + tail, rest.gather(1, prev)[:, 0])
    return (need - prev_filled) / prev_rest.clamp_min(1e-30), reached.any(1)


def _l1_knapsack(aw: Tensor, room: Tensor, need: Tensor) -> Tensor:
    """Magnitudes spending the L1 budget on the largest ``|w_i|`` first until ``<|w|, m> = need``."""
    aw_sorted, order = aw.sort(dim=1, descending=True)
    room_sorted = room.gather(1, order)
    positive = aw_sorted > 0
    gain = torch.where(positive, aw_sorted * room_sorted, torch.zeros_like(aw_sorted))
    before = torch.cat([torch.zeros_like(gain[:, :1]), gain.cumsum(1)[:, :-1]], dim=1)
    partial = ((need[:, None] - before) / aw_sorted.clamp_min(1e-30)).clamp_min(0.0)
    mag_sorted = torch.where(positive, torch.minimum(partial, room_sorted), 0.0)
    return torch.zeros_like(aw).scatter(1, order, mag_sorted)
