"""Training strategies for noisy labels: BMM dynamic bootstrapping, Co-teaching, Late Stopping.

Any robust loss of :data:`robustlab.losses.LOSSES` trains through the ``standard`` method
(``Standard(loss="gce")``); the methods here change *which* samples or targets the loss sees:

* :class:`BMMBootstrapping` (Arazo et al. 2019): a two-component Beta mixture fitted each epoch to
  the per-sample training losses gives ``w_i = P(noisy | loss_i)``, and the dynamic bootstrapping
  loss moves the target of likely-noisy samples towards the model's own prediction.
* :class:`CoTeaching` (Han et al. 2018): the model and a peer network, initialised differently,
  each pick the small-loss share of the batch for the *other* to learn from.
* :class:`LateStopping` (Yuan et al. 2023): training in rounds; a round ends once enough samples
  have been predicted as their label for ``k`` consecutive epochs, and the samples never learned
  that way (mostly mislabelled ones) are removed for the following rounds.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.data.dataset import ArrayDataset
from robustlab.errors import RobustlabError
from robustlab.losses import per_sample_loss_fn
from robustlab.losses._common import check_unit_interval, loss_name
from robustlab.losses.robust import BOOTSTRAP_MODES, bootstrap_loss
from robustlab.models.factory import unwrap
from robustlab.runtime import distributed as dist
from robustlab.runtime.modes import eval_mode
from robustlab.runtime.predict import predict
from robustlab.training.method import Batch, LossOutput, Method, StepContext
from robustlab.training.methods.registry import METHODS
from robustlab.training.methods.shared import fresh_copy
from robustlab.training.schedules import ramp
from robustlab.validation import check_int, check_positive

if TYPE_CHECKING:
    from robustlab.training.trainer import Trainer


@torch.no_grad()
def eval_losses(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Per-sample CE of ``model`` in eval mode (no dropout, batch-norm running statistics),
    without gradients; every submodule's previous mode is restored."""
    with eval_mode(model):
        return F.cross_entropy(model(x).float(), y, reduction="none")


def dataset_losses(
    model: nn.Module, data: ArrayDataset, batch_size: int, device: torch.device
) -> Tensor:
    """:func:`eval_losses` of every sample of ``data``, in dataset order (batches sharded over
    the ranks of a distributed run and merged, so every rank gets all of them)."""
    losses = torch.zeros(len(data), device=device)
    for start, end in dist.owned_batches(len(data), batch_size):
        x, y = data.x[start:end].to(device), data.y[start:end].to(device)
        losses[start:end] = eval_losses(model, x, y)
    return dist.merge_shards(losses)[0]


# ---------------------------------------------------------------------------------- M19
class BetaMixture(nn.Module):
    """Two-component Beta mixture on (0, 1), fitted by EM with weighted moment matching in the
    M-step (Arazo et al. 2019, Sec. 3.1); its parameters are buffers, saved with checkpoints."""

    EPS = 1e-4  # data are kept in [EPS, 1 - EPS]

    def __init__(self) -> None:
        super().__init__()
        for name in ("alphas", "betas", "weights"):
            self.register_buffer(name, torch.zeros(2, dtype=torch.float64))
        self.reset()

    def reset(self) -> None:
        """The EM start of the reference implementation: modes near 0 and 1, equal weights."""
        self.alphas.copy_(torch.tensor([1.0, 2.0]))
        self.betas.copy_(torch.tensor([2.0, 1.0]))
        self.weights.fill_(0.5)

    def log_likelihoods(self, x: Tensor) -> Tensor:
        """``log(weight_c * Beta(x; alpha_c, beta_c))``, shape (N, 2)."""
        x = x.double().clamp(self.EPS, 1 - self.EPS)[:, None]
        a, b = self.alphas, self.betas
        log_beta_fn = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
        log_pdf = (a - 1) * torch.log(x) + (b - 1) * torch.log1p(-x) - log_beta_fn
        return log_pdf + torch.log(self.weights)

    def fit(self, x: Tensor, iterations: int = 10) -> BetaMixture:
        """``iterations`` EM steps from :meth:`reset` on data ``x`` in (0, 1)."""
        x = x.double().clamp(self.EPS, 1 - self.EPS)
        self.reset()
        for _ in range(iterations):
            resp = torch.softmax(self.log_likelihoods(x), 1)  # E-step, (N, 2)
            mass = resp.sum(0).clamp_min(1e-12)
            mean = (resp * x[:, None]).sum(0) / mass
            var = (resp * (x[:, None] - mean) ** 2).sum(0) / mass
            var = var.clamp_min(1e-8)
            common = (mean * (1 - mean) / var - 1).clamp_min(1e-3)  # moment matching
            self.alphas.copy_(common * mean)
            self.betas.copy_(common * (1 - mean))
            self.weights.copy_(mass / mass.sum())
        return self

    def noisy_posterior(self, x: Tensor) -> Tensor:
        """``P(high-loss component | x)``; the component with the larger mean is the noisy one."""
        noisy = int(torch.argmax(self.alphas / (self.alphas + self.betas)))
        return torch.softmax(self.log_likelihoods(x), 1)[:, noisy]


@METHODS.register("bmm-bootstrap")
class BMMBootstrapping(Method):
    """Dynamic bootstrapping with a Beta-mixture noise model (Arazo et al. 2019, M-DYR-H / -S).

    At the end of each epoch the per-sample CE losses of the whole training set are computed with
    the network in eval mode (:func:`dataset_losses`; Arazo et al.'s reference code tracks them
    the same way, after the epoch, with ``model.eval()``), clipped to their 5th-95th
    percentiles, scaled to [0, 1] and fitted by a two-component :class:`BetaMixture`. After
    ``warmup_epochs`` of plain CE, each sample's loss is ``-[(1 - w) e_y + w t]. log p`` (Eq. 9)
    with ``w`` the posterior of the high-loss component for its current loss (again in eval
    mode, so that it is on the scale the mixture was fitted on), and ``t`` the one-hot prediction
    (``mode="hard"``) or the prediction itself (``"soft"``), without gradient through ``t``.
    The warm-up matters: bootstrapping towards the predictions of a model that has not yet learned
    the clean patterns makes it confirm its own mistakes (on digits, one epoch of warm-up collapses
    to a single class); the paper warms up for 105 of 300 epochs.
    """

    name = "bmm-bootstrap"

    def __init__(
        self, mode: str = "hard", warmup_epochs: int = 10, em_iterations: int = 10
    ) -> None:
        super().__init__()
        if mode not in BOOTSTRAP_MODES:
            raise RobustlabError(
                f"Unknown bootstrapping mode {mode!r}; valid modes: {', '.join(BOOTSTRAP_MODES)}."
            )
        self.mode = mode
        self.warmup_epochs = check_int(warmup_epochs, "warmup_epochs", minimum=0)
        self.em_iterations = check_int(em_iterations, "em_iterations")
        self.bmm = BetaMixture()
        self.register_buffer("losses", torch.zeros(0))
        self.register_buffer("loss_range", torch.tensor([0.0, 1.0], dtype=torch.float64))
        self.register_buffer("fitted", torch.tensor(False))

    def setup(self, trainer: Trainer) -> None:
        self.losses = torch.zeros(len(trainer.train_data), device=trainer.device)

    def _normalize(self, loss: Tensor) -> Tensor:
        lo, hi = self.loss_range[0], self.loss_range[1]
        return ((loss.double() - lo) / (hi - lo + 1e-6)).clamp(BetaMixture.EPS, 1 - BetaMixture.EPS)

    def noisy_posterior(self, loss: Tensor) -> Tensor:
        """``w = P(noisy | loss)`` under the last fitted mixture, clamped to [1e-4, 1 - 1e-4]."""
        w = self.bmm.noisy_posterior(self._normalize(loss))
        return w.clamp(BetaMixture.EPS, 1 - BetaMixture.EPS)

    def compute_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        if ctx.epoch < self.warmup_epochs or not bool(self.fitted):
            logits = model(batch.x)
            return LossOutput(F.cross_entropy(logits, batch.y), logits)
        w = self.noisy_posterior(eval_losses(model, batch.x, batch.y))  # before BN stats move
        logits = model(batch.x)
        loss = bootstrap_loss(logits, batch.y, 1 - w.to(logits.dtype), self.mode, detach=True)
        return LossOutput(loss.mean(), logits, {"bmm_w": float(w.mean())})

    def fit_losses(self, losses: Tensor) -> None:
        """Fit the mixture to per-sample losses: clip to the 5th-95th percentiles, scale that
        range to [0, 1] (kept for :meth:`noisy_posterior`) and run EM."""
        losses = losses.double()
        bounds = torch.tensor([0.05, 0.95], dtype=torch.float64, device=losses.device)
        lo, hi = torch.quantile(losses, bounds)
        self.loss_range.copy_(torch.stack([lo, hi]))
        kept = losses[(losses >= lo) & (losses <= hi)]
        self.bmm.fit(self._normalize(kept), self.em_iterations)
        self.fitted.fill_(True)

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> dict[str, float]:
        size = trainer.config.batch_size
        self.losses.copy_(dataset_losses(trainer.model, trainer.train_data, size, trainer.device))
        self.fit_losses(self.losses)  # every rank has all losses and fits the same mixture
        w = self.noisy_posterior(self.losses)
        return {"bmm_noisy_share": float((w > 0.5).double().mean())}


# ---------------------------------------------------------------------------------- B12
@METHODS.register("co-teaching")
class CoTeaching(Method):
    """Co-teaching (Han et al. 2018, Alg. 1) with a peer network held by the method.

    In each batch both networks rank the samples by their own ``loss``; the ``1 - R`` share with
    the smallest loss under one network is the batch the *other* network learns from. The forget
    rate grows linearly to ``forget_rate`` over ``gradual_epochs`` (``R(T) = min(T / T_k, 1) tau``,
    Eq. 1); set ``forget_rate`` to the (estimated) noise rate. The peer is a copy of the model with
    freshly drawn weights (seeded by the trainer's seed); the trainer optimises and checkpoints it
    with the model, and the reported model is the first network.
    """

    name = "co-teaching"

    def __init__(
        self, forget_rate: float = 0.2, gradual_epochs: float = 10.0, loss: str | nn.Module = "ce"
    ) -> None:
        super().__init__()
        self.forget_rate = check_unit_interval(forget_rate, "forget_rate", closed=False)
        self.gradual_epochs = check_positive(gradual_epochs, "gradual_epochs", allow_zero=True)
        self.loss_name = loss_name(loss)
        self.loss_fn = per_sample_loss_fn(loss)
        self.peer: nn.Module | None = None

    def setup(self, trainer: Trainer) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(trainer.config.seed * 1_000_003 + 1)
            self.peer = fresh_copy(trainer.model)

    def current_forget_rate(self, ctx: StepContext) -> float:
        """``R(T)`` of Eq. 1 at fractional epoch ``T``."""
        epochs_done = ctx.step / max(1, ctx.steps_per_epoch)
        return self.forget_rate * ramp(epochs_done, 0.0, self.gradual_epochs)

    def compute_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        if self.peer is None:
            raise RobustlabError("co-teaching needs its peer network: call setup(trainer) first.")
        logits, peer_logits = model(batch.x), self.peer(batch.x)
        loss, peer_loss = self.loss_fn(logits, batch.y), self.loss_fn(peer_logits, batch.y)
        rate = self.current_forget_rate(ctx)
        keep = max(1, int((1 - rate) * len(batch.y)))
        picked_by_model = loss.detach().argsort()[:keep]
        picked_by_peer = peer_loss.detach().argsort()[:keep]
        total = loss[picked_by_peer].mean() + peer_loss[picked_by_model].mean()
        agree = float((logits.argmax(1) == peer_logits.argmax(1)).float().mean())
        return LossOutput(total, logits, {"forget_rate": rate, "peer_agreement": agree})

    def config(self) -> dict:
        return {
            "name": self.name,
            "forget_rate": self.forget_rate,
            "gradual_epochs": self.gradual_epochs,
            "loss": self.loss_name,
        }


# ---------------------------------------------------------------------------------- M166
@METHODS.register("late-stopping")
class LateStopping(Method):
    """Late Stopping (Yuan, Feng & Liu, ICCV 2023): shrink the training set in rounds by FkL.

    After every epoch the model predicts the (noisy) training labels in eval mode; past the
    round's first ``warmup_epochs``, a sample that has been predicted as its label for ``k``
    consecutive epochs meets the FkL ("first k-epoch learning") criterion. Once
    ``ceil(N * keep_rate^(r + 1))`` of the samples still in use meet it, round ``r`` ends: only
    those samples are kept, and (``reinit=True``, as in the paper) the model restarts from fresh
    weights and optimiser state. After ``rounds`` rounds training continues on the final set.
    Removed samples still pass through the model (their loss weight is zero), so the trainer's
    batches are unchanged. A constant learning-rate schedule suits the restarts.
    """

    name = "late-stopping"

    def __init__(
        self,
        rounds: int = 3,
        keep_rate: float = 0.9,
        k: int = 2,
        warmup_epochs: int = 1,
        reinit: bool = True,
        loss: str | nn.Module = "ce",
    ) -> None:
        super().__init__()
        self.rounds = check_int(rounds, "rounds", minimum=0)
        self.keep_rate = check_unit_interval(keep_rate, "keep_rate", closed=False)
        self.k = check_int(k, "k")
        self.warmup_epochs = check_int(warmup_epochs, "warmup_epochs", minimum=0)
        self.reinit = bool(reinit)
        self.loss_name = loss_name(loss)
        self.loss_fn = per_sample_loss_fn(loss)
        for buffer in ("active", "streak", "learned"):
            self.register_buffer(buffer, torch.zeros(0))
        self.register_buffer("round", torch.tensor(0))
        self.register_buffer("round_epoch", torch.tensor(0))
        self.register_buffer("restart", torch.tensor(False))

    def setup(self, trainer: Trainer) -> None:
        n, device = len(trainer.train_data), trainer.device
        self.active = torch.ones(n, dtype=torch.bool, device=device)
        self.streak = torch.zeros(n, dtype=torch.long, device=device)
        self.learned = torch.zeros(n, dtype=torch.bool, device=device)

    def compute_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        logits = model(batch.x)
        weight = self.active[batch.index].to(logits.dtype)
        loss = (self.loss_fn(logits, batch.y) * weight).sum() / weight.sum().clamp_min(1)
        return LossOutput(loss, logits)

    def target_count(self) -> int:
        """How many FkL samples end the current round."""
        return math.ceil(len(self.active) * self.keep_rate ** (int(self.round) + 1))

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> dict[str, float]:
        metrics = {"kept_share": float(self.active.float().mean()), "round": float(self.round)}
        if int(self.round) >= self.rounds:
            return metrics
        self.round_epoch += 1
        data = trainer.train_data
        pred = predict(trainer.model, data.x, 512, trainer.device).to(self.streak.device)
        correct = pred == data.y.to(pred.device)
        self.streak = torch.where(correct, self.streak + 1, torch.zeros_like(self.streak))
        if int(self.round_epoch) > self.warmup_epochs:
            self.learned |= self.active & (self.streak >= self.k)
        metrics["fkl_share"] = float(self.learned.float().mean())
        if int(self.learned.sum()) >= self.target_count():
            self.active = self.learned.clone()
            self.learned.zero_()
            self.streak.zero_()
            self.round += 1
            self.round_epoch.zero_()
            self.restart.fill_(self.reinit)
            metrics["kept_share"] = float(self.active.float().mean())
        return metrics

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        # The restart waits for the next epoch so that the round's last validation sees the
        # trained model; the trainer has seeded the RNG for this epoch (same draws on resume).
        if bool(self.restart):
            unwrap(trainer.model).load_state_dict(fresh_copy(trainer.model).state_dict())
            dist.broadcast_module(trainer.model)  # ranks draw differently: keep rank 0's weights
            trainer.optimizer.state.clear()
            self.restart.fill_(False)

    def config(self) -> dict:
        return {
            "name": self.name,
            "rounds": self.rounds,
            "keep_rate": self.keep_rate,
            "k": self.k,
            "warmup_epochs": self.warmup_epochs,
            "reinit": self.reinit,
            "loss": self.loss_name,
        }
