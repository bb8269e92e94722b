"""The training-method interface: a small object that turns a batch into a loss.

The :class:`~robustlab.training.trainer.Trainer` owns the loop, optimiser, schedules, checkpoints and
logging; a :class:`Method` only says what loss to minimise on a batch. A method is an
``nn.Module`` so that any parameters it owns (an auxiliary head, a discriminator, a peer model) are
optimised and checkpointed with the model, and any buffers (an EMA teacher, per-sample statistics)
are saved and restored on resume.
"""

from __future__ import annotations

import inspect
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from robustlab.training.trainer import Trainer


@dataclass
class Batch:
    """One training batch: inputs in [0, 1], labels, and the samples' indices in the dataset."""

    x: Tensor
    y: Tensor
    index: Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.x.to(device), self.y.to(device), self.index.to(device))


@dataclass
class StepContext:
    """Where training is when a loss is computed."""

    epoch: int  # 0-based
    step: int  # global optimisation step, 0-based
    epochs: int
    steps_per_epoch: int
    eps_scale: float = 1.0  # the trainer's eps ramp: multiply the method's eps by this
    #: every ramp of the trainer by name, in [0, 1] ("eps" included); see :meth:`scale`
    ramps: dict[str, float] = field(default_factory=dict)

    def scale(self, name: str) -> float:
        """The trainer's ramp ``name`` (e.g. ``"beta"``): 1.0 when no such ramp is configured."""
        if name == "eps":
            return self.eps_scale
        return self.ramps.get(name, 1.0)

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return min(1.0, self.step / max(1, self.epochs * self.steps_per_epoch))


@dataclass
class LossOutput:
    """A scalar loss plus the logits on the clean batch (for accuracy) and extra metrics."""

    loss: Tensor
    logits: Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class Method(nn.Module, metaclass=ABCMeta):
    """Base class of training methods. Subclasses implement :meth:`compute_loss`."""

    name: ClassVar[str] = "method"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in vars(cls):  # a signature set by @forwards_base on a base is not ours
            cls.__signature__ = None

    def setup(self, trainer: Trainer) -> None:
        """Called once before training starts (the model, data and device are known)."""

    @abstractmethod
    def compute_loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> LossOutput:
        """The loss to minimise on ``batch`` (the model is in train mode)."""

    def before_optimizer_step(self, model: nn.Module) -> None:
        """Called after ``backward`` and before ``optimizer.step`` (e.g. to restore weights)."""

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Called after each optimiser step (e.g. to update an EMA teacher)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Called at the start of each epoch."""

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> dict[str, float]:
        """Called at the end of each epoch; returned metrics go into the epoch log."""
        return {}

    def config(self) -> dict:
        """The method's hyper-parameters, recorded with every result and checkpoint: its public
        attributes that are plain data (threats as their string form)."""
        return {"name": self.name, **_plain_attributes(self)}


M = TypeVar("M", bound=type)


def forwards_base(cls: M) -> M:
    """Class decorator for a method whose ``__init__(self, <its own parameters>, **base)`` passes
    ``**base`` on to its base class: ``inspect.signature(cls)`` then lists its own parameters
    followed by the base class's others (keyword-only), so that every accepted keyword is
    declared once and still seen by ``Registry.build`` (which rejects unknown keywords) and by
    ``robustlab list``."""
    own = inspect.signature(cls.__init__)
    params = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD][1:]  # no self
    names = {p.name for p in params}
    base = inspect.signature(cls.__mro__[1]).parameters.values()
    params += [
        p.replace(kind=p.KEYWORD_ONLY)
        for p in base
        if p.name not in names and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    cls.__signature__ = own.replace(parameters=params)
    return cls


def _plain(value: Any) -> Any:
    """``value`` as JSON/weights_only-safe data, or ``_SKIP`` when it is not plain data."""
    from robustlab.threat import Threat

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Threat):
        return str(value)
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _SKIP if any(v is _SKIP for v in items) else items
    return _SKIP


_SKIP = object()


def _plain_attributes(obj: nn.Module) -> dict[str, Any]:
    out = {}
    for key, value in vars(obj).items():
        if key.startswith("_") or key == "training":
            continue
        plain = _plain(value)
        if plain is not _SKIP:
            out[key] = plain
    return out
