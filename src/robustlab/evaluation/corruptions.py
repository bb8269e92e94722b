"""The corruption stage: a model's accuracy, calibration and flip rates under common corruptions.

The metrics it reports (CE, mCE, relative CE and mCE after Hendrycks & Dietterich 2019; flip
probability and rate of ImageNet-P; ECE after Naeini et al. 2015) are defined in
:mod:`robustlab.corruptions.metrics`; this module runs the model on the corrupted data.
:func:`evaluate_corruptions` is the stage on its own, returning a
:class:`~robustlab.corruptions.metrics.CorruptionResult`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.corruptions.base import SEVERITIES, check_batch, check_severity
from robustlab.corruptions.metrics import (
    ECE_BINS,
    NOISE_SEQUENCES,
    CorruptionResult,
    Table,
    add_baseline,
    as_result,
    expected_calibration_error,
    flip_probability,
    mean_corruption_error,
    sequence_frames,
)
from robustlab.corruptions.mnist_c import MNIST_C_BENCHMARK_SEVERITY
from robustlab.corruptions.sets import corrupt_chunks, corruption_names, derive_seed
from robustlab.errors import RobustlabError
from robustlab.evaluation.pipeline import Context, Stage
from robustlab.progress import progress_bar
from robustlab.provenance import provenance
from robustlab.runtime.modes import eval_mode
from robustlab.validation import check_int, check_labels, check_logits


def severity_plan(names: Sequence[str], severities: Sequence[int] | str) -> dict[str, list[int]]:
    """Corruption -> its severities: the same sorted list for every corruption, or for
    ``"benchmark"`` MNIST-C's one fixed severity per corruption."""
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


class CorruptionStage(Stage):
    """Every corruption of ``corruption_set`` (a set name such as ``"mnist-c"`` or
    ``"imagenet-c"``, a corruption, or a comma-separated list) at each of ``severities`` (or
    ``"benchmark"``: MNIST-C's fixed ones), into ``sections["corruptions"]``.

    Reports accuracy, ECE (``n_bins`` bins) and mean confidence per corruption x severity, mean
    error, and the flip probability on ``sequence_length``-frame perturbation sequences (0 skips
    them). With ``baseline`` (a :class:`CorruptionResult` of another model on the same corruptions
    and severities, its dict, an evaluation JSON holding it, or a path), also CE, mCE, relative CE
    and mCE, FR and mFR.
    """

    name = "corruptions"

    def __init__(
        self,
        corruption_set: str = "mnist-c",
        severities: Sequence[int] | str = SEVERITIES,
        baseline: CorruptionResult | Mapping[str, Any] | str | Path | None = None,
        *,
        sequence_length: int = 10,
        n_bins: int = ECE_BINS,
        model_name: str | None = None,
    ) -> None:
        self.corruption_set = corruption_set
        self.names = corruption_names(corruption_set)
        self.plan = severity_plan(self.names, severities)
        check_int(sequence_length, "sequence_length", minimum=0)
        if sequence_length == 1:
            raise RobustlabError("sequence_length must be 0 (no sequences) or at least 2 frames.")
        self.sequence_length = sequence_length
        self.n_bins = n_bins
        self.model_name = model_name
        self.baseline = as_result(baseline) if baseline is not None else None
        if self.baseline is not None:
            _check_baseline(self.baseline, self.plan)

    def run(self, ctx: Context) -> None:
        ctx.sections["corruptions"] = self.measure(
            ctx.model, ctx.dataset, batch_size=ctx.batch_size, seed=ctx.seed, device=ctx.device,
            progress=ctx.progress,
        ).to_dict()  # fmt: skip

    def measure(
        self,
        model: nn.Module,
        dataset: Any,
        *,
        batch_size: int = 256,
        seed: int = 0,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> CorruptionResult:
        """The stage's result for ``model`` on ``dataset`` (see :func:`evaluate_corruptions`)."""
        names, plan = self.names, self.plan
        sequence_length, n_bins = self.sequence_length, self.n_bins
        check_int(batch_size, "batch_size")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise RobustlabError(f"seed must be an integer, got {seed!r}.")
        x = check_batch(dataset.x, names[0])
        y = check_labels(dataset.y, len(x), int(dataset.num_classes), "dataset labels")
        device = torch.device(device)
        model = model.to(device)

        def logits_of(xb: Tensor) -> Tensor:
            return check_logits(model(xb), len(xb))

        cells = {n: {str(s): _Cell() for s in sev} for n, sev in plan.items()}
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
                        yb = y[start : start + len(xb)].to(device)
                        cells[name][str(s)].add(logits_of(xb), yb)
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
            model=self.model_name or type(model).__name__,
            dataset=str(getattr(dataset, "name", "dataset")),
            n=len(x),
            corruption_set=self.corruption_set,
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
        if self.baseline is not None:
            add_baseline(result, self.baseline)
        result.provenance = provenance(seed=seed, device=device, config={
            "dataset": result.dataset, "corruption_set": self.corruption_set,
            "severities": result.severities, "batch_size": batch_size,
            "sequence_length": sequence_length, "n_bins": n_bins, "baseline": result.baseline,
        })  # fmt: skip
        return result


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
    ``corruption_set`` at each of ``severities``: the :class:`CorruptionStage` on its own.

    Corruptions are drawn per chunk of ``batch_size`` from ``seed``; the model runs on ``device``
    in eval mode (its previous mode is restored).
    """
    stage = CorruptionStage(
        corruption_set, severities, baseline, sequence_length=sequence_length, n_bins=n_bins,
        model_name=model_name,
    )  # fmt: skip
    return stage.measure(
        model, dataset, batch_size=batch_size, seed=seed, device=device, progress=progress
    )
