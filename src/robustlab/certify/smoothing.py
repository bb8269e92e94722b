"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019, "Certified adversarial robustness via
randomized smoothing").

The smoothed classifier ``g(x) = argmax_c P(f(x + delta) = c)``, ``delta ~ N(0, sigma^2 I)``, is
robust within L2 radius ``sigma * Phi^-1(p_A)`` around ``x`` when ``p_A`` lower-bounds the top
class's probability (Theorem 1 with ``p_B = 1 - p_A``). The two Monte Carlo procedures of the
paper (Section 3.2, "Pseudocode for certification and prediction"):

* PREDICT: ``n`` noisy samples, counts of the top two classes ``n_A, n_B``; return the top class
  if the two-sided binomial test of ``n_A`` out of ``n_A + n_B`` against ``p = 1/2`` has p-value
  ``<= alpha``, else abstain.
* CERTIFY: guess the top class from ``n0`` samples, then ``n`` fresh samples give ``n_A``; the
  one-sided Clopper-Pearson lower confidence bound ``p_A`` at level ``1 - alpha`` certifies radius
  ``sigma * Phi^-1(p_A)`` if ``p_A > 1/2``, else abstain.

Noise is drawn in chunks of at most ``noise_batch`` model evaluations, for many inputs at once,
from a seeded generator; a Rich progress bar follows the draws. Abstentions are returned as class
``-1`` (and radius 0) and count as errors. Noisy inputs are not clipped to [0, 1] (as in the
paper): the model must accept them.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch
from rich.progress import Progress
from scipy.stats import beta, binom, norm
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.progress import progress_bar
from robustlab.runtime.modes import eval_mode
from robustlab.validation import check_inputs, check_int, check_positive

ABSTAIN = -1


def check_alpha(alpha: float) -> float:
    """A significance level in (0, 1)."""
    a = check_positive(alpha, "alpha")
    if a >= 1:
        raise RobustlabError(f"alpha must be in (0, 1), got {alpha!r}.")
    return a


def clopper_pearson_lower(successes: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """One-sided ``1 - alpha`` Clopper-Pearson lower bound of a binomial proportion:
    the ``alpha`` quantile of Beta(k, n - k + 1), and 0 when ``k = 0``."""
    k = np.asarray(successes, dtype=np.float64)
    out = beta.ppf(alpha, np.maximum(k, 1.0), trials - k + 1.0)
    return np.where(k > 0, out, 0.0)


def binomial_test_half(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Two-sided p-value of ``k`` successes out of ``n`` against ``p = 1/2`` (as
    ``scipy.stats.binomtest``): ``min(1, 2 P(X <= min(k, n - k)))`` by symmetry."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    p = 2.0 * binom.cdf(np.minimum(k, n - k), n, 0.5)
    return np.where(n > 0, np.minimum(1.0, p), 1.0)


@dataclass
class SmoothingCertificate:
    """Per-input output of :meth:`SmoothedClassifier.certify`."""

    prediction: Tensor  # (N,) class, or -1 to abstain
    radius: Tensor  # (N,) certified L2 radius (0 when abstaining)
    p_lower: Tensor  # (N,) Clopper-Pearson lower bound of p_A
    counts: Tensor  # (N, K) class counts of the n certification samples


class SmoothedClassifier:
    """The Gaussian smoothing of ``model`` with noise level ``sigma``."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        sigma: float,
        *,
        noise_batch: int = 1000,
        seed: int | None = 0,
        progress: bool = False,
    ) -> None:
        self.model = model
        self.num_classes = check_int(num_classes, "num_classes", minimum=2)
        self.sigma = check_positive(sigma, "sigma")
        self.noise_batch = check_int(noise_batch, "noise_batch")
        self.seed = seed
        self.progress = progress

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(int(self.seed))

    def sample_counts(
        self,
        x: Tensor,
        n: int,
        generator: torch.Generator | None = None,
        label: str = "noise",
        bar: Progress | None = None,
    ) -> Tensor:
        """Class counts (N, K) of ``model(x + sigma * noise)`` over ``n`` draws per input.

        Progress goes to ``bar`` (an open Rich progress display) when given, else to a bar of
        its own if the classifier was made with ``progress=True``.
        """
        check_int(n, "n")
        batch = x.shape[0]
        per_chunk = max(1, self.noise_batch // batch)
        counts = torch.zeros(batch, self.num_classes, dtype=torch.long, device=x.device)
        rows = torch.arange(batch, device=x.device)
        with ExitStack() as stack:
            if bar is None:
                bar = stack.enter_context(progress_bar(self.progress, transient=True))
            stack.enter_context(eval_mode(self.model))
            stack.enter_context(torch.no_grad())
            task = bar.add_task(f"{label} ({batch} inputs)", total=n)
            done = 0
            while done < n:
                m = min(per_chunk, n - done)
                xs = x.repeat_interleave(m, 0)
                noise = torch.randn(xs.shape, generator=generator, device=x.device, dtype=x.dtype)
                pred = self.model(xs + self.sigma * noise).argmax(1)
                counts.index_put_((rows.repeat_interleave(m), pred), torch.ones_like(pred),
                                  accumulate=True)
                done += m
                bar.update(task, advance=m)
            bar.remove_task(task)
        return counts

    def predict(
        self, x: Tensor, n: int = 100_000, alpha: float = 0.001, bar: Progress | None = None
    ) -> Tensor:
        """PREDICT: the smoothed class of each input, or -1 (abstain)."""
        check_inputs(x)
        check_alpha(alpha)
        counts = self.sample_counts(x, n, self._generator(x.device), "predict", bar)
        top2 = counts.topk(2, dim=1)
        n_a, n_b = top2.values[:, 0].cpu().numpy(), top2.values[:, 1].cpu().numpy()
        pvalue = binomial_test_half(n_a, n_a + n_b)
        keep = torch.as_tensor(pvalue <= alpha, device=x.device)
        return torch.where(keep, top2.indices[:, 0], torch.full_like(top2.indices[:, 0], ABSTAIN))

    def certify(
        self,
        x: Tensor,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        bar: Progress | None = None,
    ) -> SmoothingCertificate:
        """CERTIFY: per input the predicted class and its certified L2 radius (or abstain)."""
        check_inputs(x)
        check_int(n0, "n0")
        check_alpha(alpha)
        gen = self._generator(x.device)
        guess = self.sample_counts(x, n0, gen, "select", bar).argmax(1)
        counts = self.sample_counts(x, n, gen, "certify", bar)
        n_a = counts.gather(1, guess[:, None]).squeeze(1)
        p_lower = clopper_pearson_lower(n_a.cpu().numpy(), n, alpha)
        ok = p_lower > 0.5
        radius = np.where(ok, self.sigma * norm.ppf(np.where(ok, p_lower, 0.75)), 0.0)
        ok_t = torch.as_tensor(ok, device=x.device)
        return SmoothingCertificate(
            prediction=torch.where(ok_t, guess, torch.full_like(guess, ABSTAIN)),
            radius=torch.as_tensor(radius, dtype=x.dtype, device=x.device),
            p_lower=torch.as_tensor(p_lower, dtype=torch.float64, device=x.device),
            counts=counts,
        )


def certified_accuracy_at(radius: Tensor, correct: Tensor, radii: list[float]) -> dict[str, float]:
    """Share of inputs classified correctly (not abstained) with certified radius >= r, per r."""
    return {f"{r:g}": float((correct & (radius >= r)).float().mean()) for r in radii}


def average_certified_radius(radius: Tensor, correct: Tensor) -> float:
    """ACR (Zhai et al. 2020): mean certified radius, counting 0 for wrong or abstained inputs."""
    return float(torch.where(correct, radius, torch.zeros_like(radius)).mean())
