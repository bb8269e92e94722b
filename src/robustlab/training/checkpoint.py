"""The files of a training run and resuming from them.

``checkpoint.pt`` holds the model with everything that carries over epochs (optimiser, method
state, EMA, AMP scaler, early-stopping record, history; written atomically after every epoch),
``metrics.jsonl`` the epoch log, ``best.pt`` the best model under robust validation and ``ema.pt``
the averaged weights. Only rank 0 of a distributed run writes. A run resumes only with the
method, model and configuration parts that wrote its checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from robustlab.errors import CheckpointError, RobustlabError
from robustlab.io import atomic_write_text
from robustlab.models import load_checkpoint, make_checkpoint, model_spec, save_checkpoint
from robustlab.runtime import distributed as dist

if TYPE_CHECKING:
    from robustlab.training.trainer import Trainer

CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
EMA_NAME = "ema.pt"
METRICS_NAME = "metrics.jsonl"


def _optional_parts(trainer: Trainer) -> tuple[tuple[str, Any], ...]:
    """The checkpoint keys of the parts a configuration may or may not have, with the part."""
    return (("ema", trainer.ema), ("scaler", trainer.scaler), ("early_stopping", trainer.stopper))


def training_state(trainer: Trainer, epoch: int) -> dict[str, Any]:
    """Everything besides the weights that a resumed run needs after ``epoch`` epochs."""
    state = {
        "epoch": epoch,
        "optimizer": trainer.optimizer.state_dict(),
        "method_name": trainer.method.name,
        "method_config": trainer.method.config(),
        "method_state": trainer.method.state_dict(),
        "train_config": asdict(trainer.config),
        "history": trainer.history,
    }
    for key, part in _optional_parts(trainer):
        if part is not None:
            state[key] = part.state_dict()
    return state


def save_run(trainer: Trainer, epoch: int) -> None:
    """Write ``checkpoint.pt``, ``ema.pt`` (with EMA) and ``metrics.jsonl`` (rank 0 only)."""
    out_dir = trainer.out_dir
    if out_dir is None or not dist.is_main():
        return
    save_checkpoint(
        out_dir / CHECKPOINT_NAME, make_checkpoint(trainer.model, **trainer.state(epoch))
    )
    if trainer.ema is not None:
        save_checkpoint(
            out_dir / EMA_NAME,
            make_checkpoint(trainer.ema.module, epoch=epoch, ema_decay=trainer.ema.decay),
        )
    lines = "".join(json.dumps(r) + "\n" for r in trainer.history)
    atomic_write_text(out_dir / METRICS_NAME, lines)


def save_best(trainer: Trainer, epoch: int, clean: float, robust: float) -> None:
    """Write ``best.pt``: the evaluation weights at a new best robust validation accuracy."""
    if trainer.out_dir is None or not dist.is_main():
        return
    extra = {"epoch": epoch, "val_acc": clean, "val_robust_acc": robust}
    save_checkpoint(
        trainer.out_dir / BEST_NAME,
        make_checkpoint(trainer.eval_model, **extra, train_config=asdict(trainer.config)),
    )


def resume_run(trainer: Trainer) -> None:
    """Load the checkpoint in ``trainer.out_dir`` if there is one (a fresh run otherwise)."""
    if trainer.out_dir is None:
        raise RobustlabError("resuming needs an output directory (out_dir).")
    path = trainer.out_dir / CHECKPOINT_NAME
    if not path.exists():
        return
    method, model = trainer.method, trainer.model
    ckpt = load_checkpoint(path)
    if "optimizer" not in ckpt or "epoch" not in ckpt:
        raise CheckpointError(f"{path} is a model checkpoint without training state to resume.")
    if ckpt.get("method_name") != method.name:
        raise CheckpointError(
            f"{path} was written by method '{ckpt.get('method_name')}', not '{method.name}'."
        )
    if model_spec(model) and ckpt.get("model_name") != model_spec(model)["name"]:
        raise CheckpointError(
            f"{path} holds a '{ckpt.get('model_name')}' model, not '{model_spec(model)['name']}'."
        )
    for key, part in _optional_parts(trainer):
        if part is not None and key not in ckpt:
            raise CheckpointError(
                f"{path} was written without {key.replace('_', ' ')}; resume with the "
                "configuration that wrote it or start a new run directory."
            )
    try:
        model.load_state_dict(ckpt["state_dict"])
        method.load_state_dict(ckpt["method_state"])
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
        for key, part in _optional_parts(trainer):
            if part is not None:
                part.load_state_dict(ckpt[key])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path} does not match this model and method: {e}") from None
    trainer.start_epoch = int(ckpt["epoch"])
    trainer.history = list(ckpt.get("history", []))
