"""The configuration of a training run: :class:`TrainConfig` (the loop's hyper-parameters, checked
when it is made) and the optimiser it names (:func:`build_optimizer`, SAM/ASAM on request)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustlab.errors import RobustlabError
from robustlab.threat import Threat
from robustlab.training.sam import SAM
from robustlab.training.schedules import LR_SCHEDULES, parse_ramp
from robustlab.validation import check_int, check_positive

OPTIMIZERS = ("sgd", "adam", "adamw")
AMP_DTYPES = ("bfloat16", "float16")


@dataclass
class TrainConfig:
    """Hyper-parameters of the training loop (the method has its own)."""

    epochs: int = 10
    batch_size: int = 128  # the global batch: split over the ranks of a distributed run
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    eps_ramp_start: float = 0.0  # epochs of clean (eps_scale 0) training before the ramp
    eps_ramp_epochs: float = 0.0  # epochs over which eps_scale goes from 0 to 1
    #: other linear 0 -> 1 ramps by name, {name: (start_epoch, length_epochs)}; ctx.scale(name)
    ramps: dict[str, Any] = field(default_factory=dict)
    grad_clip: float | None = None
    amp: bool = False  # mixed precision on GPU (ignored on CPU, which stays in float32)
    amp_dtype: str = "bfloat16"  # or "float16" (with a gradient scaler)
    sam_rho: float = 0.0  # > 0: SAM (Foret et al. 2021) with this radius
    sam_adaptive: bool = False  # ASAM (Kwon et al. 2021)
    sam_eta: float = 0.01  # ASAM's T_w = |w| + eta
    ema_decay: float | None = None  # weight EMA (evaluation and ema.pt use the averaged weights)
    robust_val_every: int = 0  # > 0: PGD on the validation split every k epochs, keep best.pt
    robust_val_threat: str | None = None  # default: the method's training threat
    robust_val_steps: int = 10
    robust_val_restarts: int = 1
    patience: int | None = None  # stop after this many robust evaluations without improvement
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_int(self.epochs, "epochs")
        check_int(self.batch_size, "batch_size")
        check_positive(self.lr, "lr")
        check_positive(self.momentum, "momentum", allow_zero=True)
        check_positive(self.weight_decay, "weight_decay", allow_zero=True)
        check_positive(self.warmup_epochs, "warmup_epochs", allow_zero=True)
        check_positive(self.eps_ramp_start, "eps_ramp_start", allow_zero=True)
        check_positive(self.eps_ramp_epochs, "eps_ramp_epochs", allow_zero=True)
        check_positive(self.sam_rho, "sam_rho", allow_zero=True)
        check_positive(self.sam_eta, "sam_eta", allow_zero=True)
        check_int(self.robust_val_every, "robust_val_every", minimum=0)
        check_int(self.robust_val_steps, "robust_val_steps")
        check_int(self.robust_val_restarts, "robust_val_restarts")
        if self.patience is not None:
            check_int(self.patience, "patience")
        if self.grad_clip is not None:
            check_positive(self.grad_clip, "grad_clip")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise RobustlabError(f"ema_decay must be in (0, 1), got {self.ema_decay!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise RobustlabError(
                f"Unknown optimizer '{self.optimizer}'; known: {', '.join(OPTIMIZERS)}."
            )
        if self.schedule not in LR_SCHEDULES:
            raise RobustlabError(
                f"Unknown learning-rate schedule '{self.schedule}'; known: {', '.join(LR_SCHEDULES)}."
            )
        if self.amp_dtype not in AMP_DTYPES:
            raise RobustlabError(
                f"Unknown amp_dtype '{self.amp_dtype}'; known: {', '.join(AMP_DTYPES)}."
            )
        if "eps" in self.ramps:
            raise RobustlabError(
                "the eps ramp is set with eps_ramp_start and eps_ramp_epochs, not in ramps."
            )
        # plain lists, so the config is JSON and weights_only-checkpoint data
        self.ramps = {str(k): list(parse_ramp(k, v)) for k, v in self.ramps.items()}
        if self.robust_val_threat is not None:
            self.robust_val_threat = str(Threat.parse(self.robust_val_threat))


def build_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer | SAM:
    """The base optimiser of ``cfg``, wrapped in SAM/ASAM when ``cfg.sam_rho > 0``."""
    if cfg.optimizer == "sgd":
        base: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    else:
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        base = cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.sam_rho > 0:
        return SAM(base, rho=cfg.sam_rho, adaptive=cfg.sam_adaptive, eta=cfg.sam_eta)
    return base
