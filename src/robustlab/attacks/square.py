"""Square attack (Andriushchenko et al., ECCV 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search"), Linf and L2.

A score-based random search: from a start on the boundary of the ball, each iteration proposes a
change of the perturbation inside one random square window of side ``s`` (shrinking on the
schedule of the paper, from a fraction ``p_init`` of the image) and keeps it when the margin loss
``z_y - max_{j!=y} z_j`` decreases. Linf (Algorithm 1, Sec. 3.1): the start is vertical stripes of
``±eps`` and a proposal sets the window to ``±eps`` per channel. L2 (Sec. 3.2): the start is a grid
of "pseudo-Gaussian" blocks ``sum_k 1/(k+1)^2`` rings and a proposal moves the perturbation mass of
a second window into the first, so that ``||delta||_2`` stays ``eps``. One forward pass per
iteration and point; points stop as soon as they are misclassified. No gradients are used.

A Linf query differs from the current point only inside its window, so on a CNN whose first block
is local (conv, pointwise layers, pooling) only that block's outputs near the window are recomputed
(:class:`~robustlab.attacks.incremental.IncrementalForward`); the logits are the whole model's,
checked against the plain forward pass at run time (on a mismatch the run queries the whole
model). ``incremental=False`` runs the whole model on every query. ``extras["fast_paths"]`` says
whether the incremental forward was used, refused (and why) or fell back.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from robustlab.attacks.base import Attack
from robustlab.attacks.incremental import IncrementalForward, window_index
from robustlab.attacks.objectives import margin_objective
from robustlab.attacks.params import fixed, flag, fraction, integer, param
from robustlab.attacks.registry import ATTACKS
from robustlab.errors import RobustlabError
from robustlab.runtime.fastpaths import FELL_BACK, USED, plain_forward

_HALVINGS = (
    10,
    50,
    200,
    500,
    1000,
    2000,
    4000,
    6000,
    8000,
)  # iterations (of 10,000) at which p halves


def square_fraction(p_init: float, it: int, queries: int) -> float:
    """The schedule of the paper: ``p`` halves at fixed iterations, rescaled to ``queries``."""
    it = int(it / queries * 10000)
    return p_init / 2 ** sum(it > h for h in _HALVINGS)


def _as_image(x: Tensor) -> Tensor:
    """(N, C, H, W) view; a flat (N, D) input is one row of D pixels."""
    return x if x.dim() == 4 else x.reshape(x.shape[0], 1, 1, -1)


def _random_windows(n: int, h: int, w: int, sh: int, sw: int, gen, device):
    """One random ``sh x sw`` window per sample: its top row and left column (n,), and its flat
    pixel indices (n, sh*sw) into ``h * w``."""
    top = torch.randint(0, h - sh + 1, (n,), generator=gen, device=device)
    left = torch.randint(0, w - sw + 1, (n,), generator=gen, device=device)
    return top, left, window_index(top, left, (sh, sw), w)


def _window_masks(n: int, h: int, w: int, sh: int, sw: int, gen, device) -> Tensor:
    """(n, 1, h, w) bool masks of the windows :func:`_random_windows` draws."""
    _, _, index = _random_windows(n, h, w, sh, sw, gen, device)
    mask = torch.zeros(n, h * w, dtype=torch.bool, device=device).scatter_(1, index, True)
    return mask.view(n, 1, h, w)


def _pseudo_gaussian(sh: int, sw: int, device, dtype) -> Tensor:
    """An ``sh x sw`` block of rings ``sum_{k=r}^{n} 1/(k+1)^2`` around its centre, ``n = floor(
    max(sh, sw) / 2)`` (Sec. 3.2 of the paper), unit L2 norm."""
    r = torch.maximum(
        (torch.arange(sh, device=device, dtype=dtype) - (sh - 1) / 2).abs().view(-1, 1),
        (torch.arange(sw, device=device, dtype=dtype) - (sw - 1) / 2).abs().view(1, -1),
    ).floor()
    k = torch.arange(max(sh, sw) // 2 + 1, device=device, dtype=dtype)
    block = ((k.view(1, 1, -1) >= r[..., None]) / (k + 1) ** 2).sum(-1)
    return block / block.norm().clamp_min(1e-12)


def _rand_sign(shape, gen, device, dtype) -> Tensor:
    return torch.randint(0, 2, shape, generator=gen, device=device).to(dtype) * 2 - 1


@ATTACKS.register("square")
class Square(Attack):
    """Square attack (Andriushchenko et al. 2020): score-based random search, Linf and L2."""

    name = "square"

    threat = param("linf:0.3")
    queries: int = param(5000, integer)
    p_init: float = param(0.8, fraction)
    #: Linf queries on a CNN recompute only the first block's outputs near the window
    #: (``attacks/incremental.py``); False runs the whole model on every query
    incremental: bool = param(True, flag)
    loss = fixed("margin")
    seed: int | None = param(0)

    def _check_params(self) -> None:
        if self.threat.norm not in ("linf", "l2"):
            raise RobustlabError(
                f"the Square attack supports the norms linf and l2, got {self.threat.norm}."
            )

    def _margin(self, logits: Tensor, y: Tensor, t: Tensor | None) -> tuple[Tensor, Tensor]:
        """Margin to minimise (``-margin_objective``) and the success mask of one query each."""
        return -margin_objective(logits, y, t), self._success(logits, y, t)

    def _window(self, p: float, h: int, w: int, c: int) -> tuple[int, int]:
        if h == 1:  # flat input: a run of p * D pixels
            return 1, max(1, min(w, round(p * w * c)))
        s = max(1, min(h, w, round(math.sqrt(p * h * w))))
        return s, s

    # --------------------------------------------------------------------- starts and proposals
    def _init_linf(self, x: Tensor, gen) -> Tensor:
        n, c, _, w = x.shape
        stripes = _rand_sign((n, c, 1, w), gen, x.device, x.dtype) * self.threat.eps
        return (x + stripes).clamp(0, 1) - x

    def _init_l2(self, x: Tensor, gen) -> Tensor:
        n, c, h, w = x.shape
        s = max(1, min(h, w) // 5) if h > 1 else max(1, w // 25)
        sh = 1 if h == 1 else s
        block = _pseudo_gaussian(sh, s, x.device, x.dtype)
        reps = (math.ceil(h / sh), math.ceil(w / s))
        tiles = block.repeat(*reps)[:h, :w]
        signs = _rand_sign((n, c, reps[0], reps[1]), gen, x.device, x.dtype)
        signs = signs.repeat_interleave(sh, 2).repeat_interleave(s, 3)[:, :, :h, :w]
        delta = tiles * signs
        return self._rescale_l2(delta, self.threat.eps)

    @staticmethod
    def _rescale_l2(delta: Tensor, radius) -> Tensor:
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        radius = torch.as_tensor(radius, dtype=delta.dtype, device=delta.device)
        return delta * (radius / norm).view(-1, 1, 1, 1)

    def _propose_linf(self, x: Tensor, x_adv: Tensor, sh: int, sw: int, gen):
        """``x_adv`` with one random window set to ``clip(x +- eps)``, one sign per channel, and
        the window's top row and left column (N,).

        A proposal that leaves the window as it is would waste its query, so the authors' code
        redraws its signs until the window changes. With eps > 0 the two signs of a channel give
        different pixels, so exactly one sign pattern reproduces the window and redrawing is a
        uniform draw among the other ``2^c - 1`` patterns: the signs of a uniform non-empty subset
        of the channels are flipped, in one draw.
        """
        n, c, h, w = x.shape
        top, left, idx = _random_windows(n, h, w, sh, sw, gen, x.device)
        idx = idx[:, None, :].expand(n, c, -1)
        x_win = x.reshape(n, c, -1).gather(2, idx)
        sign = _rand_sign((n, c, 1), gen, x.device, x.dtype)
        new = (x_win + sign * self.threat.eps).clamp(0, 1)
        same = (new == x_adv.reshape(n, c, -1).gather(2, idx)).flatten(1).all(1)
        same = same.nonzero().squeeze(1)
        if same.numel() > 0:
            subset = torch.randint(1, 2**c, (same.numel(), 1, 1), generator=gen, device=x.device)
            bits = (subset >> torch.arange(c, device=x.device).view(1, -1, 1)) & 1
            flipped = sign[same] * (1 - 2 * bits).to(x.dtype)
            new[same] = (x_win[same] + flipped * self.threat.eps).clamp(0, 1)
        cand = x_adv.clone()
        cand.view(n, c, -1).scatter_(2, idx, new)
        return cand, top, left

    def _propose_l2(self, x: Tensor, x_adv: Tensor, sh: int, sw: int, gen) -> Tensor:
        """Move the perturbation mass of a second window into a random first window (Sec. 3.2)."""
        n, c, h, w = x.shape
        eps = self.threat.eps
        delta = x_adv - x
        m1 = _window_masks(n, h, w, sh, sw, gen, x.device)
        m2 = _window_masks(n, h, w, sh, sw, gen, x.device) & ~m1
        both = m1 | m2
        # mass available in the two windows plus the slack left in the ball (per channel)
        mass = (delta * both).pow(2).sum((2, 3)) + (
            (eps**2 - delta.pow(2).sum((1, 2, 3))).clamp_min(0) / c
        ).view(-1, 1)
        old = delta * m1
        old = old / old.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        # place a pseudo-Gaussian block with a random sign per channel in each window 1
        rows = m1.any(3).float().argmax(2).view(-1)
        cols = m1.any(2).float().argmax(2).view(-1)
        pg = _pseudo_gaussian(sh, sw, x.device, x.dtype)
        r_idx = rows.view(-1, 1, 1) + torch.arange(sh, device=x.device).view(1, -1, 1)
        c_idx = cols.view(-1, 1, 1) + torch.arange(sw, device=x.device).view(1, 1, -1)
        n_idx = torch.arange(n, device=x.device).view(-1, 1, 1)
        fresh_block = torch.zeros(n, h, w, dtype=x.dtype, device=x.device)
        fresh_block[n_idx, r_idx, c_idx] = pg
        fresh = fresh_block[:, None] * _rand_sign((n, c, 1, 1), gen, x.device, x.dtype)
        new = old + fresh
        new = new / new.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        new = new * mass.sqrt().view(n, c, 1, 1)
        delta = torch.where(both, torch.zeros_like(delta), delta) + new * m1
        return self.threat.project((x + delta).clamp(0, 1), x)

    # --------------------------------------------------------------------- the random search
    def perturb(self, model, x, y, target, generator):
        shape = x.shape
        xi = _as_image(x)
        n, c, h, w = xi.shape
        linf = self.threat.norm == "linf"
        if self.threat.eps == 0:
            return x.clone()
        delta = self._init_linf(xi, generator) if linf else self._init_l2(xi, generator)
        x_best = self.threat.project(xi + delta, xi)
        incremental = self._incremental(model, shape)
        if incremental is not None:
            logits = incremental.reset(x_best)
            incremental = self._still_trusted(incremental)
        else:
            logits = self._predict(model, x_best.reshape(shape))
        loss, done = self._margin(logits, y, target)
        # the points still to fool, kept compacted (re-indexed only when some are fooled)
        idx = (~done).nonzero().squeeze(1)
        xa, xb, ya, la = xi[idx], x_best[idx], y[idx], loss[idx]
        ta = target[idx] if target is not None else None
        if incremental is not None:
            incremental.keep(idx)
        for it in range(1, self.queries):
            if idx.numel() == 0:
                break
            sh, sw = self._window(square_fraction(self.p_init, it, self.queries), h, w, c)
            if linf:
                cand, top, left = self._propose_linf(xa, xb, sh, sw, generator)
            else:
                cand = self._propose_l2(xa, xb, sh, sw, generator)
            if incremental is not None:  # Linf only
                logits = incremental.query(cand, top, left, (sh, sw))
                incremental = self._still_trusted(incremental)
            else:
                logits = self._predict(model, cand.reshape(-1, *shape[1:]))
            new_loss, hit = self._margin(logits, ya, ta)
            better = new_loss < la
            xb[better], la[better] = cand[better], new_loss[better]
            if incremental is not None:
                incremental.accept(better)
            if hit.any():
                x_best[idx] = xb
                keep = ~hit
                idx, xa, xb, ya, la = idx[keep], xa[keep], xb[keep], ya[keep], la[keep]
                ta = ta[keep] if ta is not None else None
                if incremental is not None:
                    incremental.keep(keep)
        x_best[idx] = xb
        if incremental is not None:
            self._fast_paths.note("incremental_forward", USED)
        return x_best.reshape(shape)

    def _incremental(self, model, shape) -> IncrementalForward | None:
        """Linf proposals change one window: queries reuse the model's first block outside it,
        where the model allows it (the reason it does not is recorded)."""
        if self.threat.norm != "linf" or len(shape) != 4:
            self._fast_paths.note("incremental_forward", "not used: only for Linf on images")
            return None
        if not self.incremental:
            self._fast_paths.note("incremental_forward", "not used: incremental=False")
            return None
        built = IncrementalForward.build(model, tuple(shape[1:]), self._predict, plain_forward)
        if isinstance(built, str):
            self._fast_paths.note("incremental_forward", f"refused: {built}")
            return None
        return built

    def _still_trusted(self, incremental: IncrementalForward) -> IncrementalForward | None:
        """``incremental`` unless its last logits failed their check (then the rest of the run
        queries the whole model)."""
        if incremental.mismatch is None:
            return incremental
        self._fast_paths.note("incremental_forward", f"{FELL_BACK}: {incremental.mismatch}")
        return None
