"""Corruption-robustness metrics and the result that holds them (the evaluation loop that fills it
is :mod:`robustlab.evaluation.corruptions`).

* Corruption error (Hendrycks & Dietterich, ICLR 2019, Sec. 4): for corruption ``c``,
  ``CE_c = sum_s E_{s,c} / sum_s E^base_{s,c}``; ``mCE`` is its mean over corruptions. The
  relative CE subtracts each model's clean error:
  ``rCE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^base_{s,c} - E^base_clean)``. The baseline is
  a model the user evaluated (any :class:`CorruptionResult`), never hard-coded AlexNet numbers.
* Flip probability (ImageNet-P, same paper): on a sequence of frames ``x_1..x_T``,
  ``FP = mean_{i, j>=2} 1[f(x_j) != f(x_{j-1})]`` (for noise, against the first frame ``x_1``);
  ``FR_c = FP_c / FP^base_c`` and ``mFR`` is its mean.
* Expected calibration error (Naeini et al. 2015; used under corruption by Grabinski et al.,
  "Robust models are less over-confident", NeurIPS 2022): 15 equal-width confidence bins,
  ``ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from robustlab.corruptions.base import CORRUPTIONS, check_severity
from robustlab.corruptions.sets import derive_seed
from robustlab.errors import RobustlabError
from robustlab.io import atomic_write_json
from robustlab.validation import check_int

SCHEMA = "robustlab-corruptions/1"
ECE_BINS = 15

# Corruptions whose ImageNet-P sequences are independent noise draws compared with frame 1.
NOISE_SEQUENCES = frozenset({
    "gaussian-noise", "shot-noise", "impulse-noise", "speckle-noise",
    "mnist-shot-noise", "mnist-impulse-noise",
})


# ----------------------------------------------------------------------------- metrics
def expected_calibration_error(confidence: Tensor, correct: Tensor, n_bins: int = ECE_BINS) -> float:
    """ECE with ``n_bins`` equal-width bins (i/n, (i+1)/n] of the top-class confidence."""
    check_int(n_bins, "n_bins")
    conf = confidence.detach().double().flatten().cpu()
    hit = correct.detach().double().flatten().cpu()
    if conf.numel() == 0 or conf.shape != hit.shape:
        raise RobustlabError(
            f"ECE needs as many confidences as correctness flags (> 0), got {conf.numel()} and "
            f"{hit.numel()}."
        )
    if float(conf.min()) < 0 or float(conf.max()) > 1:
        raise RobustlabError("confidences must lie in [0, 1].")
    idx = (conf * n_bins).ceil().long().clamp(1, n_bins) - 1
    gap = torch.bincount(idx, weights=hit - conf, minlength=n_bins)
    return float(gap.abs().sum() / conf.numel())


def _check_errors(values: Sequence[float], name: str) -> list[float]:
    out = [float(v) for v in values]
    if not out or any(not 0.0 <= v <= 1.0 for v in out):
        raise RobustlabError(f"{name} must be a non-empty list of error rates in [0, 1], got {values!r}.")
    return out


def corruption_error(errors: Sequence[float], baseline_errors: Sequence[float]) -> float:
    """CE_c = sum_s E_{s,c} / sum_s E^base_{s,c} over the same severities."""
    e = _check_errors(errors, "errors")
    b = _check_errors(baseline_errors, "baseline_errors")
    if len(e) != len(b):
        raise RobustlabError(f"errors and baseline_errors cover {len(e)} and {len(b)} severities.")
    if sum(b) <= 0:
        raise RobustlabError("the baseline makes no errors on this corruption; CE is undefined.")
    return sum(e) / sum(b)


def relative_corruption_error(
    errors: Sequence[float], clean_error: float,
    baseline_errors: Sequence[float], baseline_clean_error: float,
) -> float:
    """Relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^base_{s,c} - E^base_clean)."""
    e = _check_errors(errors, "errors")
    b = _check_errors(baseline_errors, "baseline_errors")
    if len(e) != len(b):
        raise RobustlabError(f"errors and baseline_errors cover {len(e)} and {len(b)} severities.")
    den = sum(v - baseline_clean_error for v in b)
    if den <= 0:
        raise RobustlabError(
            "the baseline's corruption errors do not exceed its clean error; relative CE is "
            "undefined."
        )
    return sum(v - clean_error for v in e) / den


def mean_corruption_error(values: Mapping[str, float] | Sequence[float]) -> float:
    """Mean over corruptions (mCE from CE values, mFR from FR values, ...)."""
    v = list(values.values()) if isinstance(values, Mapping) else list(values)
    if not v:
        raise RobustlabError("no values to average.")
    return float(sum(v) / len(v))


def flip_probability(predictions: Tensor, reference: str = "previous") -> float:
    """Fraction of frames whose prediction differs from the previous frame (``"previous"``) or
    from the first frame (``"first"``, for noise sequences); ``predictions`` is (T, N), T >= 2."""
    if predictions.dim() != 2 or predictions.shape[0] < 2:
        raise RobustlabError(
            f"predictions must have shape (T, N) with T >= 2 frames, got {tuple(predictions.shape)}."
        )
    if reference not in ("previous", "first"):
        raise RobustlabError(f"reference must be 'previous' or 'first', got {reference!r}.")
    ref = predictions[:-1] if reference == "previous" else predictions[:1]
    return float((predictions[1:] != ref).double().mean())


def sequence_frames(
    x: Tensor, name: str, length: int, seed: int = 0, severity: int = 1
) -> Iterator[Tensor]:
    """Frames of an ImageNet-P-style perturbation sequence of ``length`` frames.

    Noise corruptions (:data:`NOISE_SEQUENCES`): independent draws of the corruption of the clean
    image. Others: the clean image, then the corruption at ``severity`` applied again to the
    previous frame at each step (fresh randomness), so the perturbation grows step by step.
    """
    fn = CORRUPTIONS.get(name)
    check_int(length, "length", minimum=2)
    check_severity(severity)
    frame = x
    for t in range(length):
        gen = torch.Generator().manual_seed(derive_seed(seed, "sequence", name, t))
        if name in NOISE_SEQUENCES:
            yield fn(x, severity, gen)
        else:
            frame = frame if t == 0 else fn(frame, severity, gen)
            yield frame


def perturbation_sequence(
    x: Tensor, name: str, length: int = 10, seed: int = 0, severity: int = 1
) -> Tensor:
    """The whole sequence (length, N, C, H, W); see :func:`sequence_frames`."""
    return torch.stack(list(sequence_frames(x, name, length, seed, severity)))


# ----------------------------------------------------------------------------- result
Table = dict[str, dict[str, float]]  # corruption -> str(severity) -> value


@dataclass
class CorruptionResult:
    """Accuracy, calibration and flip rates of one model under a set of corruptions.

    Tables are keyed ``[corruption][str(severity)]`` so the JSON round trip is exact. CE, mCE,
    relative CE/mCE, FR and mFR are filled only when a baseline was given.
    """

    model: str
    dataset: str
    n: int
    corruption_set: str
    corruptions: list[str]
    severities: dict[str, list[int]]
    clean_accuracy: float
    clean_ece: float
    accuracy: Table
    ece: Table
    confidence: Table
    error: dict[str, float]  # mean error over severities, per corruption
    mean_error: float  # mean of ``error`` over corruptions (MNIST-C's headline number)
    mean_ece: float
    sequence_length: int = 0
    flip_probability: dict[str, float] = field(default_factory=dict)
    mean_flip_probability: float | None = None
    baseline: str | None = None
    ce: dict[str, float] | None = None
    mce: float | None = None
    relative_ce: dict[str, float | None] | None = None
    relative_mce: float | None = None
    flip_rate: dict[str, float | None] | None = None
    mfr: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def errors(self, corruption: str) -> list[float]:
        """Error at each evaluated severity of ``corruption``, in severity order."""
        if corruption not in self.accuracy:
            raise RobustlabError(
                f"no result for corruption '{corruption}'; evaluated: {', '.join(self.corruptions)}."
            )
        return [1.0 - self.accuracy[corruption][str(s)] for s in self.severities[corruption]]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CorruptionResult:
        if data.get("schema") != SCHEMA:
            raise RobustlabError(
                f"not a robustlab corruption result (schema {data.get('schema')!r}, expected "
                f"{SCHEMA!r})."
            )
        return cls(**{k: v for k, v in data.items() if k != "schema"})

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> CorruptionResult:
        return as_result(path)

    def to_markdown(self) -> str:
        """A per-corruption table: error at each severity, mean error, CE and flip probability."""
        sev = sorted({s for v in self.severities.values() for s in v})
        head = ["corruption", *[f"err s{s}" for s in sev], "mean err", "ECE"]
        head += ["CE"] if self.ce else []
        head += ["FP"] if self.flip_probability else []
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in self.corruptions:
            cells = [c] + [
                f"{100 * (1 - self.accuracy[c][str(s)]):.1f}" if str(s) in self.accuracy[c] else ""
                for s in sev
            ]
            cells += [f"{100 * self.error[c]:.1f}",
                      f"{100 * sum(self.ece[c].values()) / len(self.ece[c]):.1f}"]
            cells += [f"{100 * self.ce[c]:.1f}"] if self.ce else []
            cells += [f"{100 * self.flip_probability[c]:.2f}"] if self.flip_probability else []
            rows.append("| " + " | ".join(cells) + " |")
        return "\n".join(rows)


def as_result(obj: Any) -> CorruptionResult:
    """A baseline given as a result, its dict, an evaluation result dict, or a JSON file."""
    if isinstance(obj, CorruptionResult):
        return obj
    if isinstance(obj, (str, Path)):
        try:
            obj = json.loads(Path(obj).read_text())
        except FileNotFoundError:
            raise RobustlabError(f"result file {obj} does not exist.") from None
        except json.JSONDecodeError as e:
            raise RobustlabError(f"result file {obj} is not valid JSON ({e.msg}).") from None
    if isinstance(obj, Mapping):
        sections = obj.get("sections")
        if isinstance(sections, Mapping) and "corruptions" in sections:
            obj = sections["corruptions"]
        return CorruptionResult.from_dict(obj)
    raise RobustlabError(
        f"baseline must be a CorruptionResult, its dict or a JSON file, got {type(obj).__name__}."
    )


def add_baseline(result: CorruptionResult, base: CorruptionResult) -> None:
    """Fill CE, mCE, relative CE/mCE and (where the baseline has flip probabilities) FR, mFR of
    ``result`` against ``base`` (Hendrycks & Dietterich 2019, Sec. 4; equations above)."""
    result.baseline = base.model
    base_clean = 1.0 - base.clean_accuracy
    ce, rce = {}, {}
    for c in result.corruptions:
        e = result.errors(c)
        b = [1.0 - base.accuracy[c][str(s)] for s in result.severities[c]]
        ce[c] = corruption_error(e, b)
        den = sum(v - base_clean for v in b)  # relative CE is undefined when this is <= 0
        rce[c] = (relative_corruption_error(e, 1.0 - result.clean_accuracy, b, base_clean)
                  if den > 0 else None)
    result.ce, result.mce = ce, mean_corruption_error(ce)
    defined = [v for v in rce.values() if v is not None]
    result.relative_ce = rce
    result.relative_mce = mean_corruption_error(defined) if defined else None
    if result.flip_probability and all(c in base.flip_probability for c in result.corruptions):
        fr = {c: (result.flip_probability[c] / base.flip_probability[c]
                  if base.flip_probability[c] > 0 else None) for c in result.corruptions}
        defined = [v for v in fr.values() if v is not None]
        result.flip_rate = fr
        result.mfr = mean_corruption_error(defined) if defined else None
