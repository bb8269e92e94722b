"""One trainer for every method.

The :class:`Trainer` owns the loop: shuffling, the optimiser (optionally wrapped in SAM/ASAM) and
learning-rate schedule, the eps ramp and any other named ramps (``ctx.scale("beta")``), mixed
precision on GPU, weight EMA, validation (clean every epoch, PGD every ``k`` epochs with early
stopping and ``best.pt``), data-parallel runs over ``torch.distributed``, a JSON-lines metrics
log, an atomic checkpoint after every epoch, and resuming from it. What loss to minimise on a batch
is the business of the :class:`~robustlab.training.method.Method`.

One optimisation step is a closure (zero the gradients, ``compute_loss``, ``backward``, average
the gradients over ranks, ``method.before_optimizer_step``, clip) handed to ``optimizer.step``; SAM
calls it twice, at ``w`` and at ``w + e(w)``. Then ``method.after_optimizer_step`` and the EMA.

Determinism: the shuffling order and the random draws of epoch ``e`` are seeded from
``(seed, e, rank)`` alone, and everything that carries over epochs (weights, optimiser, method
state, EMA, AMP scaler, early-stopping record) is in the checkpoint, so a run resumed from the
checkpoint of epoch ``e`` continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab.attacks import PGD
from robustlab.data import ArrayDataset
from robustlab.errors import RobustlabError
from robustlab.progress import progress_bar
from robustlab.runtime import distributed as dist
from robustlab.training.checkpoint import (  # noqa: F401  (names of the run's files, re-exported)
    BEST_NAME,
    CHECKPOINT_NAME,
    EMA_NAME,
    METRICS_NAME,
    resume_run,
    save_best,
    save_run,
    training_state,
)
from robustlab.training.config import (  # noqa: F401  (re-exported: the trainer's public API)
    AMP_DTYPES,
    OPTIMIZERS,
    TrainConfig,
    build_optimizer,
)
from robustlab.training.early_stopping import EarlyStopping, split_accuracy
from robustlab.training.ema import WeightEMA
from robustlab.training.method import Batch, LossOutput, Method, StepContext
from robustlab.training.sam import SAM
from robustlab.training.schedules import lr_factor, ramp, ramp_values


class Trainer:
    """Train ``model`` with ``method`` on ``train``; validate on ``val`` after each epoch.

    With ``out_dir`` set, every epoch writes ``checkpoint.pt`` (model, optimiser, method state,
    EMA, history; atomically) and ``metrics.jsonl``; ``fit(resume=True)`` continues from it.
    Robust validation writes ``best.pt`` and EMA writes ``ema.pt``: model checkpoints that
    ``robustlab evaluate`` reads. Inside a ``torch.distributed`` process group (``torchrun``) the
    global batch is split over the ranks and only rank 0 writes files.
    """

    def __init__(
        self,
        model: nn.Module,
        method: Method,
        train: ArrayDataset,
        config: TrainConfig | None = None,
        *,
        val: ArrayDataset | None = None,
        out_dir: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        self.config = cfg = config or TrainConfig()
        self.device = torch.device(cfg.device)
        self.model = model.to(self.device)
        self.method = method.to(self.device)
        self.train_data = train
        self.val_data = val
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.show_progress = progress and dist.is_main()
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        n = len(train)
        self.steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if n == 0:
            raise RobustlabError(f"the training set '{train.name}' is empty.")
        smallest = min(n, n - (self.steps_per_epoch - 1) * cfg.batch_size)
        if smallest < dist.world_size():
            raise RobustlabError(
                f"a global batch of {smallest} samples cannot be split over {dist.world_size()} "
                f"ranks; choose a batch_size that leaves every batch of the {n} samples at least "
                f"{dist.world_size()} samples."
            )
        self.method.setup(self)
        # The method may create parameters in setup (a head, a peer model): optimise them too.
        params = [p for p in self.model.parameters() if p.requires_grad]
        params += [p for p in self.method.parameters() if p.requires_grad]
        self.params = params
        self.optimizer = build_optimizer(params, cfg)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.amp_dtype = getattr(torch, cfg.amp_dtype)
        self.scaler = (
            torch.amp.GradScaler("cuda")
            if self.use_amp and self.amp_dtype == torch.float16
            else None
        )
        if self.scaler is not None and isinstance(self.optimizer, SAM):
            raise RobustlabError(
                "SAM with float16 mixed precision is not supported; use amp_dtype='bfloat16'."
            )
        self.ema = WeightEMA(self.model, cfg.ema_decay) if cfg.ema_decay is not None else None
        self.stopper = EarlyStopping(cfg.patience) if cfg.robust_val_every > 0 else None
        self.val_attack = self._make_val_attack() if self.stopper is not None else None

    def _make_val_attack(self) -> PGD:
        cfg = self.config
        if self.val_data is None:
            raise RobustlabError("robust validation (robust_val_every > 0) needs a validation set.")
        threat = cfg.robust_val_threat or getattr(self.method, "threat", None)
        if threat is None:
            raise RobustlabError(
                f"method '{self.method.name}' has no threat; set robust_val_threat, e.g. 'linf:0.3'."
            )
        return PGD(
            threat, steps=cfg.robust_val_steps, restarts=cfg.robust_val_restarts, seed=cfg.seed
        )

    @property
    def eval_model(self) -> nn.Module:
        """The weights evaluation uses: the EMA average when enabled, else the model."""
        return self.ema.module if self.ema is not None else self.model

    # ------------------------------------------------------------------ schedules
    def eps_scale(self, step: int) -> float:
        cfg = self.config
        return ramp(step / self.steps_per_epoch, cfg.eps_ramp_start, cfg.eps_ramp_epochs)

    def context(self, epoch: int, step: int) -> StepContext:
        """The :class:`StepContext` of global step ``step``, with every ramp's value."""
        cfg = self.config
        eps = self.eps_scale(step)
        ramps = ramp_values(cfg.ramps, step / self.steps_per_epoch)
        ramps["eps"] = eps
        return StepContext(epoch, step, cfg.epochs, self.steps_per_epoch, eps, ramps)

    def _set_lr(self, step: int) -> float:
        warmup = int(self.config.warmup_epochs * self.steps_per_epoch)
        factor = lr_factor(self.config.schedule, step, self.total_steps, warmup)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        return self.base_lrs[0] * factor

    # ------------------------------------------------------------------ one step
    def _closure(self, batch: Batch, ctx: StepContext, share: float) -> LossOutput:
        """Zero the gradients, compute the loss, back-propagate, average the gradients over
        ranks (``share`` = this rank's fraction of the global batch), run the method's
        ``before_optimizer_step`` and clip. SAM calls this twice per step."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            out = self.method.compute_loss(self.model, batch, ctx)
        if not torch.isfinite(out.loss):
            self.method.before_optimizer_step(self.model)  # undo weight perturbations (AWP/RWP)
            raise RobustlabError(
                f"the training loss became {float(out.loss)} at epoch {ctx.epoch + 1}, step "
                f"{ctx.step + 1}; lower the learning rate or check the inputs."
            )
        (self.scaler.scale(out.loss) if self.scaler is not None else out.loss).backward()
        dist.all_reduce_gradients(self.params, share)
        self.method.before_optimizer_step(self.model)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.config.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        return out

    def train_step(self, batch: Batch, ctx: StepContext, share: float = 1.0) -> dict[str, float]:
        """One optimisation step on ``batch`` (this rank's ``share`` of the global batch);
        returns the batch's metrics (loss and accuracy at the weights before the step)."""
        self.model.train()
        self.method.train()
        closure = partial(self._closure, batch, ctx, share)
        if self.scaler is not None:
            out = closure()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            out = self.optimizer.step(closure)
        self.method.after_optimizer_step(self.model)
        if self.ema is not None:
            self.ema.update(self.model)
        metrics = {"loss": float(out.loss.detach())}
        if out.logits is not None:
            metrics["acc"] = float((out.logits.detach().argmax(1) == batch.y).float().mean())
        metrics.update(out.metrics)
        return metrics

    # ------------------------------------------------------------------ the loop
    def _seed_epoch(self, epoch: int) -> torch.Tensor:
        """Seed the epoch's random draws (per rank) and return the global shuffling order."""
        cfg = self.config
        torch.manual_seed(cfg.seed * 100_003 + epoch + 1_000_003 * dist.rank())
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        return torch.randperm(len(self.train_data), generator=gen)

    def _validate(self, epoch: int, record: dict[str, Any]) -> None:
        """Clean validation accuracy every epoch; PGD every ``robust_val_every`` epochs, with
        ``best.pt`` on a new best and the early-stopping record."""
        if self.val_data is None:
            return
        cfg = self.config
        robust_now = self.stopper is not None and (epoch + 1) % cfg.robust_val_every == 0
        result = split_accuracy(
            self.eval_model, self.val_data, self.val_attack if robust_now else None
        )
        record["val_acc"] = result.clean
        if not robust_now or self.stopper is None or result.robust is None:
            return
        record["val_robust_acc"] = result.robust
        if self.stopper.update(epoch + 1, result.robust):
            save_best(self, epoch + 1, result.clean, result.robust)
        record["best_epoch"] = self.stopper.best_epoch

    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train for ``config.epochs`` epochs (continuing from the checkpoint if ``resume``)."""
        if resume:
            self.resume()
        for part in (self.model, self.method, self.ema.module if self.ema else None):
            if part is not None:
                dist.broadcast_module(part)  # every rank starts from rank 0's weights
        cfg = self.config
        x_all, y_all = self.train_data.x, self.train_data.y
        with progress_bar(self.show_progress) as bar:
            task = bar.add_task(
                "train", total=self.total_steps, completed=self.start_epoch * self.steps_per_epoch
            )
            for epoch in range(self.start_epoch, cfg.epochs):
                if self.stopper is not None and self.stopper.stopped:
                    break
                t0 = time.perf_counter()
                order = self._seed_epoch(epoch)
                self.method.on_epoch_start(self, epoch)
                sums: dict[str, float] = {}
                for b in range(self.steps_per_epoch):
                    global_idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                    idx = dist.shard(global_idx)
                    step = epoch * self.steps_per_epoch + b
                    lr = self._set_lr(step)
                    ctx = self.context(epoch, step)
                    batch = Batch(x_all[idx], y_all[idx], idx).to(self.device)
                    metrics = self.train_step(batch, ctx, len(idx) / len(global_idx))
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + v * len(idx)
                    sums["_seen"] = sums.get("_seen", 0.0) + len(idx)
                    bar.update(
                        task,
                        advance=1,
                        description=f"epoch {epoch + 1}/{cfg.epochs} loss {metrics['loss']:.3f}",
                    )
                sums = dist.reduce_sums(sums)
                seen = max(1.0, sums.pop("_seen", 0.0))
                record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "eps_scale": ctx.eps_scale}
                record.update({f"ramp_{k}": v for k, v in ctx.ramps.items() if k != "eps"})
                record.update({f"train_{k}": v / seen for k, v in sums.items()})
                record.update(self.method.on_epoch_end(self, epoch))
                self._validate(epoch, record)
                record["time_s"] = time.perf_counter() - t0
                self.history.append(record)
                self.save(epoch + 1)
        dist.barrier()
        self.model.eval()
        return self.history

    # ------------------------------------------------------------------ checkpoints
    def state(self, epoch: int) -> dict[str, Any]:
        """The training state after ``epoch`` epochs (:func:`.checkpoint.training_state`)."""
        return training_state(self, epoch)

    def save(self, epoch: int) -> None:
        """Write the run's files after ``epoch`` epochs (:func:`.checkpoint.save_run`)."""
        save_run(self, epoch)

    def resume(self) -> None:
        """Load the checkpoint in ``out_dir`` if there is one (:func:`.checkpoint.resume_run`)."""
        resume_run(self)
