"""Metrics for learning with noisy labels.

* clean-label test accuracy at the best and at the last epoch (:func:`best_and_last`), the gap
  between them measuring how much the model degrades once it starts fitting the noise;
* memorisation (:func:`memorization`): on the training samples whose label was corrupted, the
  share where the model predicts the *noisy* label (it memorised the noise), the clean one
  (it ignored the noise) or another class (Liu et al. 2020 call these memorised / correct);
* noisy-label detection (:func:`detection_auc`): ROC AUC of per-sample training losses as a
  score for "this label is wrong", the small-loss criterion of Co-teaching and of the BMM;
* :func:`compare_with_cleanlab`: the same detection by cleanlab's ``find_label_issues``
  (confident learning, Northcutt et al. 2021), when cleanlab is installed, next to the loss
  ranking flagging as many samples.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.data.noise import NoisyLabels
from robustlab.errors import RobustlabError
from robustlab.losses import per_sample_loss_fn
from robustlab.runtime.predict import batched_logits


def model_logits(
    model: nn.Module, x: Tensor, batch_size: int = 512, device: str | torch.device | None = None
) -> Tensor:
    """Logits of ``model`` on ``x``, batched, in eval mode, without gradients, as float32 on the
    CPU."""
    return batched_logits(model, x, batch_size, device).float()


def per_sample_losses(logits: Tensor, labels: Tensor, loss: str | nn.Module = "ce") -> Tensor:
    """The ``(N,)`` losses of ``logits`` against ``labels``; a loss given by name is built with
    ``reduction="none"``, a module must already return per-sample values."""
    with torch.no_grad():
        values = per_sample_loss_fn(loss)(logits, labels)
    if values.shape != labels.shape:
        raise RobustlabError(
            f"the loss must return one value per sample (shape {tuple(labels.shape)}), got "
            f"{tuple(values.shape)}; build it with reduction='none'."
        )
    return values


def memorization(predictions: Tensor, noise: NoisyLabels) -> dict[str, float]:
    """Where the model's training-set ``predictions`` land, split by clean and corrupted labels.

    ``memorized``: share of corrupted samples predicted as their noisy label; ``corrected``: as
    their clean label; ``other``: neither. ``clean_fit``: share of uncorrupted samples predicted
    as their (correct) label. NaN where a group is empty.
    """
    if predictions.shape != noise.y_noisy.shape:
        raise RobustlabError(
            f"predictions must have shape {tuple(noise.y_noisy.shape)} (one per training sample), "
            f"got {tuple(predictions.shape)}."
        )
    pred = predictions.cpu()
    noisy, clean, mask = noise.y_noisy.cpu(), noise.y_clean.cpu(), noise.is_noisy.cpu()

    def share(hit: Tensor, group: Tensor) -> float:
        return float(hit[group].double().mean()) if bool(group.any()) else float("nan")

    memorized = share(pred == noisy, mask)
    corrected = share(pred == clean, mask)
    return {
        "memorized": memorized,
        "corrected": corrected,
        "other": 1.0 - memorized - corrected,
        "clean_fit": share(pred == clean, ~mask),
    }


def detection_auc(scores: Tensor, is_noisy: Tensor) -> float:
    """ROC AUC of ``scores`` (higher = more likely mislabelled, e.g. the per-sample loss) for
    the corrupted-label mask; 0.5 is chance, 1.0 a perfect ranking."""
    from sklearn.metrics import roc_auc_score

    if scores.shape != is_noisy.shape:
        raise RobustlabError(
            f"scores must have shape {tuple(is_noisy.shape)} to match the noise mask, got "
            f"{tuple(scores.shape)}."
        )
    truth = is_noisy.cpu().bool()
    if bool(truth.all()) or not bool(truth.any()):
        raise RobustlabError(
            "detection AUC needs both clean and corrupted labels; the noise mask is all "
            f"{'corrupted' if bool(truth.all()) else 'clean'}."
        )
    return float(roc_auc_score(truth.numpy(), scores.detach().cpu().double().numpy()))


def best_and_last(history: Sequence[dict[str, Any]], key: str = "val_acc") -> dict[str, float]:
    """Best and last value of ``key`` over a trainer history (1-based ``best_epoch``)."""
    values = [(r.get("epoch", i + 1), r[key]) for i, r in enumerate(history) if key in r]
    if not values:
        raise RobustlabError(f"the training history has no {key!r} entries; pass val data.")
    best_epoch, best = max(values, key=lambda ev: ev[1])
    return {"best": float(best), "best_epoch": int(best_epoch), "last": float(values[-1][1])}


def _flag_quality(flagged: Tensor, is_noisy: Tensor) -> dict[str, float]:
    hits = int((flagged & is_noisy).sum())
    n_flag, n_noisy = int(flagged.sum()), int(is_noisy.sum())
    precision = hits / n_flag if n_flag else float("nan")
    recall = hits / n_noisy if n_noisy else float("nan")
    f1 = 2 * hits / (n_flag + n_noisy) if n_flag + n_noisy else float("nan")
    return {"flagged": n_flag, "precision": precision, "recall": recall, "f1": f1}


def cleanlab_available() -> bool:
    return importlib.util.find_spec("cleanlab") is not None


def compare_with_cleanlab(logits: Tensor, noise: NoisyLabels, scores: Tensor) -> dict[str, Any]:
    """Precision, recall and F1 of cleanlab's ``find_label_issues`` (from ``softmax(logits)``)
    and of the top-``m`` samples by ``scores`` (``m`` = the number cleanlab flags).

    cleanlab expects out-of-sample probabilities (cross-validation); in-sample ones from a model
    that fitted the noise make it flag fewer issues. Raises if cleanlab is not installed.
    """
    if not cleanlab_available():
        raise RobustlabError("the cleanlab comparison needs cleanlab: pip install cleanlab.")
    from cleanlab.filter import find_label_issues

    probs = torch.softmax(logits.double(), 1).cpu().numpy()
    flagged = torch.as_tensor(
        find_label_issues(labels=noise.y_noisy.cpu().numpy(), pred_probs=probs)
    ).bool()
    truth = noise.is_noisy.cpu().bool()
    top = torch.zeros_like(truth)
    top[scores.cpu().argsort(descending=True)[: int(flagged.sum())]] = True
    return {"cleanlab": _flag_quality(flagged, truth), "loss_ranking": _flag_quality(top, truth)}


def noisy_label_report(
    model: nn.Module,
    train_x: Tensor,
    noise: NoisyLabels,
    *,
    history: Sequence[dict[str, Any]] | None = None,
    loss: str | nn.Module = "ce",
    batch_size: int = 512,
    with_cleanlab: bool = True,
) -> dict[str, Any]:
    """Every metric above for a trained ``model`` and its noisy training set, as plain data.

    ``history`` (the trainer's, validated on clean test data) adds best/last test accuracy;
    the detection scores are the per-sample ``loss`` against the noisy labels.
    """
    logits = model_logits(model, train_x, batch_size)
    losses = per_sample_losses(logits, noise.y_noisy.cpu(), loss)
    report: dict[str, Any] = {
        "noise": noise.summary(),
        "memorization": memorization(logits.argmax(1), noise),
    }
    if bool(noise.is_noisy.any()) and not bool(noise.is_noisy.all()):
        report["detection_auc"] = detection_auc(losses, noise.is_noisy)
    if history:
        report["test_accuracy"] = best_and_last(history)
    if with_cleanlab and cleanlab_available() and "detection_auc" in report:
        report["cleanlab"] = compare_with_cleanlab(logits, noise, losses)
    return report
