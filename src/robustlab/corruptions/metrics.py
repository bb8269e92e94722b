"""Corruption-robustness metrics and the corruption evaluation loop.

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
from torch import Tensor, nn

from robustlab.corruptions.base import CORRUPTIONS, SEVERITIES, check_batch, check_severity
from robustlab.corruptions.mnist_c import MNIST_C_BENCHMARK_SEVERITY
from robustlab.corruptions.sets import corrupt_chunks, corruption_names, derive_seed
from robustlab.errors import RobustlabError
from robustlab.io import atomic_write_json
from robustlab.progress import progress_bar
from robustlab.provenance import provenance
from robustlab.runtime.modes import eval_mode
from robustlab.validation import check_int, check_labels, check_logits

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
        return _as_result(path)

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


def _as_result(obj: Any) -> CorruptionResult:
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


# ----------------------------------------------------------------------------- evaluation
def _plan(names: Sequence[str], severities: Sequence[int] | str) -> dict[str, list[int]]:
    if isinstance(severities, str):
        if severities != "benchmark":
            raise RobustlabError(
                f"severities must be a list of 1-5 or 'benchmark', got {severities!r}."
            )
        missing = [n for n in names if n not in MNIST_C_BENCHMARK_SEVERITY]
        if missing:
            raise RobustlabError(
                f"'benchmark' severities exist only for MNIST-C corruptions, not {missing[0]}."
            )
        return {n: [MNIST_C_BENCHMARK_SEVERITY[n]] for n in names}
    if isinstance(severities, int) or not len(severities):
        raise RobustlabError(f"severities must be a non-empty list of 1-5, got {severities!r}.")
    sev = sorted({check_severity(s) for s in severities})
    return {n: list(sev) for n in names}


def _check_baseline(base: CorruptionResult, plan: Mapping[str, list[int]]) -> None:
    for name, sev in plan.items():
        for s in sev:
            if str(s) not in base.accuracy.get(name, {}):
                raise RobustlabError(
                    f"the baseline '{base.model}' has no result for {name} at severity {s}; "
                    "evaluate it on the same corruptions and severities."
                )


class _Cell:
    """Running top-class confidences and correctness flags for one evaluation cell."""

    def __init__(self) -> None:
        self.conf: list[Tensor] = []
        self.hit: list[Tensor] = []

    def add(self, logits: Tensor, y: Tensor) -> Tensor:
        p = torch.softmax(logits.float(), dim=1)
        conf, pred = p.max(dim=1)
        self.conf.append(conf.cpu())
        self.hit.append((pred == y).cpu())
        return pred

    def summary(self, n_bins: int) -> tuple[float, float, float]:
        conf, hit = torch.cat(self.conf), torch.cat(self.hit)
        return (float(hit.double().mean()), expected_calibration_error(conf, hit, n_bins),
                float(conf.double().mean()))


def evaluate_corruptions(
    model: nn.Module,
    dataset: Any,
    corruption_set: str = "mnist-c",
    severities: Sequence[int] | str = SEVERITIES,
    baseline: CorruptionResult | Mapping[str, Any] | str | Path | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    *,
    sequence_length: int = 10,
    n_bins: int = ECE_BINS,
    model_name: str | None = None,
) -> CorruptionResult:
    """Evaluate ``model`` on ``dataset`` (``x`` (N, C, H, W) in [0, 1], ``y``, ``num_classes``,
    ``name``: a :class:`robustlab.data.ArrayDataset`) under every corruption of
    ``corruption_set`` (a set name such as ``"mnist-c"`` or ``"imagenet-c"``, a corruption, or a
    comma-separated list) at each of ``severities`` (or ``"benchmark"``: MNIST-C's fixed ones).

    Reports accuracy, ECE (``n_bins`` bins) and mean confidence per corruption x severity, mean
    error, and the flip probability on ``sequence_length``-frame perturbation sequences (0 skips
    them). With ``baseline`` (a :class:`CorruptionResult` of another model on the same corruptions
    and severities, its dict, an evaluation JSON holding it, or a path), also CE, mCE, relative CE
    and mCE, FR and mFR. Corruptions are drawn per chunk of ``batch_size`` from ``seed``; the
    model runs on ``device`` in eval mode (its previous mode is restored).
    """

    names = corruption_names(corruption_set)
    plan = _plan(names, severities)
    check_int(batch_size, "batch_size")
    check_int(sequence_length, "sequence_length", minimum=0)
    if sequence_length == 1:
        raise RobustlabError("sequence_length must be 0 (no sequences) or at least 2 frames.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RobustlabError(f"seed must be an integer, got {seed!r}.")
    x = check_batch(dataset.x, names[0])
    y = check_labels(dataset.y, len(x), int(dataset.num_classes), "dataset labels")
    base = _as_result(baseline) if baseline is not None else None
    if base is not None:
        _check_baseline(base, plan)
    device = torch.device(device)
    model = model.to(device)

    def logits_of(xb: Tensor) -> Tensor:
        return check_logits(model(xb), len(xb))

    cells: dict[str, dict[str, _Cell]] = {n: {str(s): _Cell() for s in sev} for n, sev in plan.items()}
    clean = _Cell()
    flips: dict[str, float] = {}
    units = len(x) * (1 + sum(len(v) for v in plan.values()) + sequence_length * len(names))
    with eval_mode(model), torch.no_grad(), progress_bar(progress) as bar:
        task = bar.add_task("clean", total=units)
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(device)
            clean.add(logits_of(xb), y[start : start + len(xb)].to(device))
            bar.update(task, advance=len(xb))
        for name, sev in plan.items():
            for s in sev:
                bar.update(task, description=f"{name} {s}")
                for start, xb in corrupt_chunks(x, name, s, seed, batch_size, device):
                    cells[name][str(s)].add(logits_of(xb), y[start : start + len(xb)].to(device))
                    bar.update(task, advance=len(xb))
            if sequence_length:
                bar.update(task, description=f"{name} sequence")
                changed = 0.0
                for i, start in enumerate(range(0, len(x), batch_size)):
                    xb = x[start : start + batch_size].to(device)
                    frames = sequence_frames(xb, name, sequence_length, derive_seed(seed, i))
                    preds = torch.stack([logits_of(f).argmax(1).cpu() for f in frames])
                    mode = "first" if name in NOISE_SEQUENCES else "previous"
                    changed += flip_probability(preds, mode) * len(xb)
                    bar.update(task, advance=len(xb) * sequence_length)
                flips[name] = changed / len(x)

    clean_acc, clean_ece, _ = clean.summary(n_bins)
    acc: Table = {}
    ece: Table = {}
    conf: Table = {}
    for name, row in cells.items():
        stats = {s: c.summary(n_bins) for s, c in row.items()}
        acc[name] = {s: v[0] for s, v in stats.items()}
        ece[name] = {s: v[1] for s, v in stats.items()}
        conf[name] = {s: v[2] for s, v in stats.items()}
    error = {n: 1.0 - sum(acc[n].values()) / len(acc[n]) for n in names}
    result = CorruptionResult(
        model=model_name or type(model).__name__,
        dataset=str(getattr(dataset, "name", "dataset")),
        n=len(x),
        corruption_set=corruption_set,
        corruptions=list(names),
        severities={n: list(v) for n, v in plan.items()},
        clean_accuracy=clean_acc,
        clean_ece=clean_ece,
        accuracy=acc,
        ece=ece,
        confidence=conf,
        error=error,
        mean_error=mean_corruption_error(error),
        mean_ece=mean_corruption_error([v for row in ece.values() for v in row.values()]),
        sequence_length=sequence_length,
        flip_probability=flips,
        mean_flip_probability=mean_corruption_error(flips) if flips else None,
    )
    if base is not None:
        _add_baseline(result, base)
    result.provenance = provenance(seed=seed, device=device, config={
        "dataset": result.dataset, "corruption_set": corruption_set, "severities": result.severities,
        "batch_size": batch_size, "sequence_length": sequence_length, "n_bins": n_bins,
        "baseline": result.baseline,
    })
    return result


def _add_baseline(result: CorruptionResult, base: CorruptionResult) -> None:
    """Fill CE, mCE, relative CE/mCE and (where the baseline has flip probabilities) FR, mFR."""
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
