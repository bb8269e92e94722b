"""``certify(model, data, method, threat)``: certified accuracy of a model on a dataset.

A certifier turns a batch into per-sample certificates; :func:`certify` runs it over the data in
batches (model in eval mode, previous mode restored) and gathers a :class:`CertificationResult`
with provenance. Methods, by name in :data:`CERTIFIERS`:

* ``ibp``, ``crown-ibp``, ``crown`` -- a lower bound of every margin ``z_y - z_j`` over the
  threat's ball intersected with [0, 1]; certified when all are positive (Linf or L2 threats);
* ``smoothing`` -- Gaussian randomized smoothing (Cohen et al. 2019): certified when the smoothed
  classifier is right, does not abstain, and its certified L2 radius is at least the threat's eps;
* ``lipschitz`` -- Lipschitz margins (M18): certified when the margin exceeds ``K_yj eps`` for
  every class (an Linf threat is turned into the L2 ball that contains it, radius ``eps sqrt(d)``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from rich.progress import Progress
from torch import Tensor, nn

from robustlab.certify.bounds import compute_bounds
from robustlab.certify.crown import MAX_ELEMENTS
from robustlab.certify.lipschitz import LipschitzCertifier, l2_radius
from robustlab.certify.propagation import LOWER_SLOPES, CompiledGraphs
from robustlab.certify.registry import CERTIFIERS
from robustlab.certify.smoothing import (
    ABSTAIN,
    SmoothedClassifier,
    average_certified_radius,
    certified_accuracy_at,
    check_alpha,
)
from robustlab.certify.spec import as_bound_threat, worst_margin
from robustlab.errors import RobustlabError
from robustlab.progress import progress_bar
from robustlab.provenance import provenance
from robustlab.runtime.devices import model_device
from robustlab.runtime.modes import eval_mode
from robustlab.threat import Threat
from robustlab.validation import check_inputs, check_int, check_labels, check_logits, check_positive


@dataclass
class BatchCertificate:
    """Per-sample outcome on one batch."""

    certified: Tensor  # (B,) bool
    lower_bound: Tensor | None = None  # (B,) smallest margin lower bound
    radius: Tensor | None = None  # (B,) certified L2 radius
    extra: dict[str, Tensor] = field(default_factory=dict)  # more per-sample tensors


class Certifier(ABC):
    """Base class: subclasses set ``name`` and ``defaults`` (their options) and implement
    :meth:`batch`."""

    name: ClassVar[str] = "certifier"
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, threat: Threat | str, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            valid = ", ".join(self.defaults) or "none"
            raise RobustlabError(
                f"Unknown option {unknown[0]!r} for certification method '{self.name}'; valid "
                f"options: {valid}."
            )
        self.threat = self.check_threat(Threat.parse(threat))
        self.options = {**self.defaults, **options}

    def check_threat(self, threat: Threat) -> Threat:
        return threat

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...], num_classes: int,
                seed: int | None) -> None:
        """Called once before the first batch, with the model in eval mode."""
        return None

    @abstractmethod
    def batch(self, model: nn.Module, x: Tensor, y: Tensor, bar: Progress,
              logits: Tensor | None = None) -> BatchCertificate:
        """Certify one batch (model in eval mode); ``logits`` is ``model(x)`` when known."""

    def summary(self, result: CertificationResult) -> dict[str, Any]:
        """Method-specific figures added to the result."""
        return {}

    def config(self) -> dict[str, Any]:
        return {"method": self.name, "threat": str(self.threat), **self.options}


class BoundCertifier(Certifier):
    """Margin lower bounds by bound propagation (see :mod:`robustlab.certify.bounds`)."""

    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, threat: Threat | str, **options: Any) -> None:
        super().__init__(threat, **options)
        self.graphs = CompiledGraphs()

    def check_threat(self, threat: Threat) -> Threat:
        return as_bound_threat(threat)

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...], num_classes: int,
                seed: int | None) -> None:
        """The model is compiled on the first batch and its graph reused for the others (each
        batch still checks it against the model)."""
        self.graphs = CompiledGraphs()

    def batch(self, model: nn.Module, x: Tensor, y: Tensor, bar: Progress,
              logits: Tensor | None = None) -> BatchCertificate:
        with torch.no_grad():
            bounds = compute_bounds(model, x, self.threat, y=y, method=self.name, logits=logits,
                                    graphs=self.graphs, **self.options)
        low = worst_margin(bounds, y)
        return BatchCertificate(certified=low > 0, lower_bound=low)

    def summary(self, result: CertificationResult) -> dict[str, Any]:
        return {"mean_lower_bound": float(result.lower_bound.mean())}


@CERTIFIERS.register("ibp")
class IBPCertifier(BoundCertifier):
    """Interval bound propagation (Gowal et al. 2018)."""

    name = "ibp"


@CERTIFIERS.register("crown-ibp")
class CrownIBPCertifier(BoundCertifier):
    """CROWN-IBP: IBP intermediate bounds, CROWN to the input (Zhang et al. 2020)."""

    name = "crown-ibp"
    defaults: ClassVar[dict[str, Any]] = {"lower_slope": "adaptive"}

    def __init__(self, threat: Threat | str, **options: Any) -> None:
        super().__init__(threat, **options)
        if self.options["lower_slope"] not in LOWER_SLOPES:
            raise RobustlabError(
                f"Unknown lower_slope {self.options['lower_slope']!r}; known: "
                f"{', '.join(LOWER_SLOPES)}."
            )


@CERTIFIERS.register("crown")
class CrownCertifier(CrownIBPCertifier):
    """Full CROWN: every intermediate bound by backward propagation (Zhang et al. 2018)."""

    name = "crown"
    defaults: ClassVar[dict[str, Any]] = {"lower_slope": "adaptive", "max_elements": MAX_ELEMENTS}


@CERTIFIERS.register("smoothing")
class SmoothingCertifier(Certifier):
    """Gaussian randomized smoothing, CERTIFY of Cohen et al. 2019 (L2 threats)."""

    name = "smoothing"
    defaults: ClassVar[dict[str, Any]] = {
        "sigma": 0.25,
        "n0": 100,
        "n": 100_000,
        "alpha": 0.001,
        "noise_batch": 1000,
        "radii": [0.0, 0.25, 0.5, 0.75, 1.0],
    }

    def __init__(self, threat: Threat | str, **options: Any) -> None:
        super().__init__(threat, **options)
        o = self.options
        check_positive(o["sigma"], "sigma")
        check_int(o["n0"], "n0")
        check_int(o["n"], "n")
        check_int(o["noise_batch"], "noise_batch")
        check_alpha(o["alpha"])
        o["radii"] = [check_positive(r, "radii", allow_zero=True) for r in o["radii"]]

    def check_threat(self, threat: Threat) -> Threat:
        if threat.norm != "l2":
            raise RobustlabError(
                f"randomized smoothing certifies L2 radii; give an L2 threat such as l2:0.5, not "
                f"'{threat}'."
            )
        return threat

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...], num_classes: int,
                seed: int | None) -> None:
        o = self.options
        self.smoothed = SmoothedClassifier(
            model, num_classes, o["sigma"], noise_batch=o["noise_batch"], seed=seed
        )

    def batch(self, model: nn.Module, x: Tensor, y: Tensor, bar: Progress,
              logits: Tensor | None = None) -> BatchCertificate:
        o = self.options
        cert = self.smoothed.certify(x, o["n0"], o["n"], o["alpha"], bar=bar)
        right = cert.prediction == y
        return BatchCertificate(
            certified=right & (cert.radius >= self.threat.eps),
            radius=torch.where(right, cert.radius, torch.zeros_like(cert.radius)),
            extra={"smoothed_correct": right, "abstained": cert.prediction == ABSTAIN},
        )

    def summary(self, result: CertificationResult) -> dict[str, Any]:
        right = result.extra["smoothed_correct"]
        return {
            "smoothed_accuracy": float(right.float().mean()),
            "abstain_rate": float(result.extra["abstained"].float().mean()),
            "average_certified_radius": average_certified_radius(result.radius, right),
            "certified_accuracy_at": certified_accuracy_at(result.radius, right,
                                                           self.options["radii"]),
        }


@CERTIFIERS.register("lipschitz")
class LipschitzMarginCertifier(Certifier):
    """Lipschitz margins with per-class-pair constants (Hu et al. 2023)."""

    name = "lipschitz"

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...], num_classes: int,
                seed: int | None) -> None:
        self.certifier = LipschitzCertifier(model, input_shape)
        self.eps_l2 = l2_radius(self.threat, input_shape)

    def batch(self, model: nn.Module, x: Tensor, y: Tensor, bar: Progress,
              logits: Tensor | None = None) -> BatchCertificate:
        cert = self.certifier(x, y, logits=logits)
        low = worst_margin(cert.margin_lower(y, self.eps_l2), y)
        return BatchCertificate(certified=low > 0, lower_bound=low, radius=cert.radius)

    def summary(self, result: CertificationResult) -> dict[str, Any]:
        return {
            "lipschitz": float(self.certifier.total),
            "l2_radius": self.eps_l2,
            "mean_lower_bound": float(result.lower_bound.mean()),
            "mean_radius": float(result.radius.mean()),
        }


@dataclass
class CertificationResult:
    """Certified accuracy of one model on one dataset with one method and threat."""

    method: str
    threat: str
    model: str
    dataset: str
    n: int
    clean_accuracy: float  # of the model itself on the clean inputs
    certified_accuracy: float
    correct: Tensor  # (N,) bool, model correct on the clean input
    certified: Tensor  # (N,) bool
    lower_bound: Tensor | None  # (N,) smallest margin lower bound (bound methods, lipschitz)
    radius: Tensor | None  # (N,) certified L2 radius (smoothing, lipschitz)
    time_s: float
    summary: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Tensor] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def samples_per_s(self) -> float:
        return self.n / self.time_s if self.time_s > 0 else float("inf")

    def to_dict(self, per_sample: bool = False) -> dict[str, Any]:
        """JSON-ready summary; ``per_sample=True`` adds the per-sample tensors as lists."""
        out: dict[str, Any] = {
            "method": self.method,
            "threat": self.threat,
            "model": self.model,
            "dataset": self.dataset,
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "certified_accuracy": self.certified_accuracy,
            "time_s": self.time_s,
            "samples_per_s": self.samples_per_s,
            **self.summary,
            "provenance": self.provenance,
        }
        if per_sample:
            tensors = {"correct": self.correct, "certified": self.certified,
                       "lower_bound": self.lower_bound, "radius": self.radius, **self.extra}
            out["per_sample"] = {k: v.tolist() for k, v in tensors.items() if v is not None}
        return out


def _as_data(data: Any) -> tuple[Tensor, Tensor, int | None, str]:
    """(x, y, num_classes or None, name) from an ArrayDataset or an ``(x, y)`` pair."""
    if hasattr(data, "x") and hasattr(data, "y"):
        return data.x, data.y, getattr(data, "num_classes", None), getattr(data, "name", "data")
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1], None, "tensors"
    raise RobustlabError(
        f"data must be an ArrayDataset or a pair (x, y) of tensors, got {type(data).__name__}."
    )


def certify(
    model: nn.Module,
    data: Any,
    method: str | Certifier = "ibp",
    threat: Threat | str | None = None,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int | None = 0,
    progress: bool = False,
    model_name: str | None = None,
    **options: Any,
) -> CertificationResult:
    """Certify ``model`` on ``data`` (an :class:`~robustlab.data.ArrayDataset` or ``(x, y)``).

    ``method`` is one of :data:`CERTIFIERS` (ibp, crown-ibp, crown, smoothing, lipschitz), run at
    ``threat`` (default ``linf:0.1``) with ``options``, the method's own (e.g. ``sigma``, ``n0``,
    ``n``, ``alpha`` for smoothing; ``max_elements`` for crown); or a :class:`Certifier` already
    built, which brings its threat and options. ``device`` defaults to the model's; ``seed`` seeds
    the noise of randomized smoothing.
    """
    if isinstance(method, Certifier):
        if options or (threat is not None and Threat.parse(threat) != method.threat):
            raise RobustlabError(
                "a built certifier brings its own threat and options; pass neither to certify()."
            )
        certifier = method
    else:
        certifier = CERTIFIERS.get(method)(threat if threat is not None else "linf:0.1", **options)
    check_int(batch_size, "batch_size")
    x_all, y_all, k, name = _as_data(data)
    check_inputs(x_all, f"{name} inputs")
    y_all = check_labels(y_all, x_all.shape[0], k, f"{name} labels")
    dev = model_device(model, device)
    model = model.to(dev)
    n = x_all.shape[0]
    correct = torch.zeros(n, dtype=torch.bool)
    parts: list[BatchCertificate] = []
    t0 = time.perf_counter()
    with eval_mode(model), progress_bar(progress) as bar:
        task = bar.add_task(f"certify {certifier.name} {certifier.threat}", total=n)
        for i in range(0, n, batch_size):
            xb, yb = x_all[i : i + batch_size].to(dev), y_all[i : i + batch_size].to(dev)
            with torch.no_grad():
                logits = check_logits(model(xb), len(xb))
            if i == 0:
                k = k or logits.shape[1]
                check_labels(y_all, n, logits.shape[1], f"{name} labels")
                certifier.prepare(model, tuple(x_all.shape[1:]), k, seed)
            correct[i : i + len(xb)] = (logits.argmax(1) == yb).cpu()
            parts.append(certifier.batch(model, xb, yb, bar, logits))
            bar.update(task, advance=len(xb))
    elapsed = time.perf_counter() - t0

    def cat(get) -> Tensor | None:
        values = [get(p) for p in parts]
        return None if values[0] is None else torch.cat([v.detach().cpu() for v in values])

    certified = cat(lambda p: p.certified)
    result = CertificationResult(
        method=certifier.name,
        threat=str(certifier.threat),
        model=model_name or _model_name(model),
        dataset=name,
        n=n,
        clean_accuracy=float(correct.float().mean()),
        certified_accuracy=float(certified.float().mean()),
        correct=correct,
        certified=certified,
        lower_bound=cat(lambda p: p.lower_bound),
        radius=cat(lambda p: p.radius),
        time_s=elapsed,
        extra={key: cat(lambda p, key=key: p.extra[key]) for key in parts[0].extra},
    )
    result.summary = certifier.summary(result)
    config = {**certifier.config(), "batch_size": batch_size, "dataset": name, "n": n}
    result.provenance = provenance(seed=seed, device=dev, config=config)
    return result


def _model_name(model: nn.Module) -> str:
    from robustlab.models import model_spec

    spec = model_spec(model)
    return spec["name"] if spec else type(model).__name__
