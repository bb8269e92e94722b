"""Synthetic label noise, seeded, with the mask of corrupted labels kept for evaluation.

``apply_label_noise(y, kind, rate, num_classes, seed, dataset_name=None, x=None)`` returns
:class:`NoisyLabels`; ``parse_noise_spec("symmetric:0.4")`` turns a string into a
:class:`NoiseSpec`. The kinds:

``symmetric``
    The APL protocol (Ma et al. 2020): exactly ``round(rate * N)`` labels, spread over the classes
    in proportion to their sizes, each replaced by a uniformly drawn *different* class.
    ``T = (1 - rate) I + rate / (K - 1) (1 1^T - I)``.
``uniform``
    The other common convention (e.g. DivideMix): exactly ``round(rate * N)`` labels are redrawn
    uniformly from *all* K classes, so about ``rate (K - 1) / K`` of them change.
    ``T = (1 - rate) I + rate / K 1 1^T``.
``asymmetric``
    Class-dependent flips between similar classes: in each source class ``c`` of the dataset's map,
    exactly ``round(rate * n_c)`` labels become ``map[c]``. The maps (:data:`CLASS_MAPS`):

    * MNIST (and scikit-learn digits): 7->1, 2->7, 5<->6, 3->8 (Ma et al. 2018, 2020).
    * Fashion-MNIST: boot->sneaker, sneaker->sandal, pullover->shirt, coat<->dress
      (9->7, 7->5, 2->6, 4<->3; Zhang & Sabuncu 2018).
    * CIFAR-10: truck->automobile, bird->airplane, deer->horse, cat<->dog
      (9->1, 2->0, 4->7, 3<->5; Patrini et al. 2017).
``pairflip``
    Han et al. 2018: in every class ``c`` exactly ``round(rate * n_c)`` labels become
    ``c + 1 mod K``.
``instance``
    Instance-dependent noise after Xia et al. 2020 (Part-dependent label noise, Alg. 2): each
    sample draws a flip propensity ``q_n ~ N(rate, 0.1^2)`` truncated to [0, 1], and a flipped label
    is drawn from ``softmax(x_n W_{y_n})`` over the other classes, with the standardised,
    flattened input ``x_n`` and Gaussian ``W_c`` (S x K) per class. Unlike the original, where
    each sample flips with probability ``q_n`` independently, exactly ``round(rate * N)`` samples
    flip, drawn without replacement with weights ``q_n``: the share is exact and samples with a
    larger propensity are still more likely to flip.

Randomness comes from a ``torch.Generator`` seeded with ``seed``: the same call gives the same
labels on any machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from robustlab.data.dataset import ArrayDataset
from robustlab.errors import RobustlabError
from robustlab.io import atomic_write, atomic_write_text
from robustlab.registry import _normalize as normalize_name
from robustlab.validation import check_int, check_labels

NOISE_KINDS = ("none", "symmetric", "uniform", "asymmetric", "pairflip", "instance")
_ALIASES = {
    "clean": "none",
    "sym": "symmetric",
    "asym": "asymmetric",
    "pair": "pairflip",
    "pair-flip": "pairflip",
    "idn": "instance",
    "instance-dependent": "instance",
}

_MNIST_MAP = {7: 1, 2: 7, 5: 6, 6: 5, 3: 8}
CLASS_MAPS: dict[str, dict[int, int]] = {
    "mnist": _MNIST_MAP,
    "digits": _MNIST_MAP,
    "fashion-mnist": {9: 7, 7: 5, 2: 6, 4: 3, 3: 4},
    "cifar10": {9: 1, 2: 0, 4: 7, 3: 5, 5: 3},
}

# Standard deviation of the flip propensities of instance-dependent noise (Xia et al. 2020).
INSTANCE_RATE_STD = 0.1


@dataclass(frozen=True)
class NoisyLabels:
    """Noisy labels with the clean ones, the mask of changed labels, and the noise model.

    ``transition[i, j]`` is the probability that clean class ``i`` is labelled ``j`` under the
    generating model (None for instance-dependent noise, where it differs per sample);
    :meth:`empirical_transition` is the realised one.
    """

    y_noisy: Tensor
    y_clean: Tensor
    is_noisy: Tensor
    kind: str
    rate: float
    num_classes: int
    seed: int
    transition: Tensor | None = field(default=None, repr=False)

    @property
    def noise_rate(self) -> float:
        """The realised share of changed labels."""
        return float(self.is_noisy.double().mean()) if self.is_noisy.numel() else 0.0

    def empirical_transition(self) -> Tensor:
        """``T[i, j]`` = share of samples of clean class ``i`` that carry label ``j`` (float64)."""
        k = self.num_classes
        counts = torch.bincount(
            self.y_clean.cpu() * k + self.y_noisy.cpu(), minlength=k * k
        ).reshape(k, k)
        return counts.double() / counts.sum(1, keepdim=True).clamp_min(1)

    def summary(self) -> dict:
        """Plain-data description, for results and provenance."""
        return {
            "kind": self.kind,
            "rate": self.rate,
            "seed": self.seed,
            "num_classes": self.num_classes,
            "n": int(self.y_noisy.numel()),
            "n_noisy": int(self.is_noisy.sum()),
            "noise_rate": self.noise_rate,
        }


@dataclass(frozen=True)
class NoiseSpec:
    """A noise kind and rate, e.g. ``NoiseSpec("symmetric", 0.4)``; see :func:`parse_noise_spec`."""

    kind: str
    rate: float = 0.0

    def __str__(self) -> str:
        return self.kind if self.kind == "none" else f"{self.kind}:{self.rate:g}"

    def apply(
        self,
        y: Tensor,
        num_classes: int,
        seed: int = 0,
        dataset_name: str | None = None,
        x: Tensor | None = None,
        class_map: dict[int, int] | None = None,
    ) -> NoisyLabels:
        return apply_label_noise(
            y, self.kind, self.rate, num_classes, seed, dataset_name, x, class_map=class_map
        )


def _check_kind(kind: str) -> str:
    key = normalize_name(kind) if isinstance(kind, str) else None
    key = _ALIASES.get(key, key)
    if key not in NOISE_KINDS:
        raise RobustlabError(
            f"Unknown label-noise kind {kind!r}; known kinds: {', '.join(NOISE_KINDS)}."
        )
    return key


def _check_rate(rate: float) -> float:
    try:
        r = float(rate)
    except (TypeError, ValueError):
        r = math.nan
    if isinstance(rate, bool) or not 0.0 <= r <= 1.0:
        raise RobustlabError(f"the noise rate must be a number in [0, 1], got {rate!r}.")
    return r


def parse_noise_spec(spec: str) -> NoiseSpec:
    """Parse ``"kind:rate"`` (``"symmetric:0.4"``, ``"asymmetric:0.4"``, ``"pairflip:0.45"``,
    ``"instance:0.2"``, ``"uniform:0.5"``) or ``"none"``."""
    if not isinstance(spec, str) or not spec.strip():
        raise RobustlabError(
            f"a label-noise spec is a string 'kind:rate' such as 'symmetric:0.4', got {spec!r}."
        )
    kind_text, sep, rate_text = spec.strip().partition(":")
    kind = _check_kind(kind_text)
    if kind == "none":
        if sep and _check_rate(rate_text) != 0:
            raise RobustlabError(f"noise 'none' takes no rate, got {spec!r}.")
        return NoiseSpec("none", 0.0)
    if not sep or not rate_text.strip():
        raise RobustlabError(
            f"the noise spec {spec!r} has no rate; write '{kind}:RATE' with RATE in [0, 1], "
            f"e.g. '{kind}:0.4'."
        )
    return NoiseSpec(kind, _check_rate(rate_text.strip()))


# ---------------------------------------------------------------------------------- selection
def _rank_within_class(y: Tensor, num_classes: int, gen: torch.Generator) -> Tensor:
    """A uniformly random order inside each class: ``rank[i]`` in [0, n_{y_i})."""
    perm = torch.randperm(len(y), generator=gen)
    order = torch.sort(y[perm], stable=True).indices  # grouped by class, random inside a class
    grouped = perm[order]
    counts = torch.bincount(y, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(y)
    rank[grouped] = torch.arange(len(y)) - starts[y[grouped]]
    return rank


def _proportional_counts(class_sizes: Tensor, total: int) -> Tensor:
    """Split ``total`` over classes in proportion to their sizes (largest remainder method)."""
    quota = class_sizes.double() * total / max(1, int(class_sizes.sum()))
    counts = quota.floor().long()
    left = total - int(counts.sum())
    if left > 0:
        # Ties broken by class index (stable sort), so the split is deterministic.
        by_remainder = torch.sort(quota - counts, descending=True, stable=True).indices
        counts[by_remainder[:left]] += 1
    return counts


def _select(y: Tensor, counts: Tensor, num_classes: int, gen: torch.Generator) -> Tensor:
    """A mask picking exactly ``counts[c]`` uniformly random samples of each class ``c``."""
    return _rank_within_class(y, num_classes, gen) < counts[y]


def _round_half_up(x: Tensor) -> Tensor:
    """Round to the nearest integer, halves up (not to even, as ``round`` does)."""
    return (x + 0.5).floor().long()


def _total(rate: float, n: int) -> int:
    return math.floor(rate * n + 0.5)


def _choose_share(y: Tensor, rate: float, k: int, gen: torch.Generator) -> Tensor:
    """A mask of exactly ``round(rate * N)`` samples, spread over the classes in proportion."""
    sizes = torch.bincount(y, minlength=k)
    return _select(y, _proportional_counts(sizes, _total(rate, len(y))), k, gen)


# ---------------------------------------------------------------------------------- generators
def _symmetric(y: Tensor, rate: float, k: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    chosen = _choose_share(y, rate, k, gen)
    shift = torch.randint(1, k, (len(y),), generator=gen)  # uniform over the K - 1 other classes
    eye = torch.eye(k, dtype=torch.float64)
    transition = (1 - rate) * eye + rate / (k - 1) * (1 - eye)
    return torch.where(chosen, (y + shift) % k, y), transition


def _uniform(y: Tensor, rate: float, k: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    chosen = _choose_share(y, rate, k, gen)
    redrawn = torch.randint(0, k, (len(y),), generator=gen)
    transition = (1 - rate) * torch.eye(k, dtype=torch.float64) + rate / k
    return torch.where(chosen, redrawn, y), transition


def _class_map_flip(
    y: Tensor, rate: float, k: int, mapping: dict[int, int], gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    target = torch.arange(k)
    for src, dst in mapping.items():
        target[src] = dst
    mapped = target != torch.arange(k)
    sizes = torch.bincount(y, minlength=k)
    counts = torch.where(mapped, _round_half_up(rate * sizes.double()), 0)
    chosen = _select(y, counts, k, gen)
    transition = torch.eye(k, dtype=torch.float64)
    rows = mapped.nonzero().flatten()
    transition[rows, rows] = 1 - rate
    transition[rows, target[rows]] += rate
    return torch.where(chosen, target[y], y), transition


def _instance(
    y: Tensor, rate: float, k: int, x: Tensor, gen: torch.Generator
) -> tuple[Tensor, None]:
    n = len(y)
    feats = x.detach().reshape(n, -1).cpu()
    var, mean = torch.var_mean(feats.float(), 0, correction=0)
    std = torch.where(var > 0, var.sqrt(), torch.ones_like(var)).double()
    propensity = torch.nn.init.trunc_normal_(
        torch.empty(n, dtype=torch.float64), rate, INSTANCE_RATE_STD, 0.0, 1.0, generator=gen
    )
    weights = torch.randn(k, feats.shape[1], k, generator=gen, dtype=torch.float64)
    # Scores of the standardised inputs, ((x - mean) / std) W_c, without a standardised copy of x.
    weights = weights / std[None, :, None]
    offsets = torch.einsum("s,csk->ck", mean.double(), weights)
    scores = torch.empty(n, k, dtype=torch.float64)
    for c in range(k):  # one matrix product per class, not per sample
        members = y == c
        scores[members] = feats[members].double() @ weights[c] - offsets[c]
    scores[torch.arange(n), y] = -math.inf  # a flip never keeps the class
    new_label = torch.multinomial(torch.softmax(scores, 1), 1, generator=gen).squeeze(1)
    n_flip = _total(rate, n)
    chosen = torch.zeros(n, dtype=torch.bool)
    if n_flip > 0:
        picked = torch.multinomial(propensity + 1e-12, n_flip, replacement=False, generator=gen)
        chosen[picked] = True
    return torch.where(chosen, new_label, y), None


# ---------------------------------------------------------------------------------- the entry point
def class_map_for(dataset_name: str) -> dict[int, int]:
    """The asymmetric-noise class map of a dataset (``mnist``, ``digits``, ``fashion-mnist``,
    ``cifar10``)."""
    key = normalize_name(dataset_name) if isinstance(dataset_name, str) else None
    if key not in CLASS_MAPS:
        raise RobustlabError(
            f"no asymmetric-noise class map for dataset {dataset_name!r}; known datasets: "
            f"{', '.join(sorted(CLASS_MAPS))} (or pass class_map={{source: target, ...}})."
        )
    return CLASS_MAPS[key]


def _check_class_map(mapping: dict[int, int], k: int) -> dict[int, int]:
    if not isinstance(mapping, dict) or not mapping:
        raise RobustlabError(
            f"class_map must be a non-empty dict source -> target, got {mapping!r}."
        )
    for src, dst in mapping.items():
        for c in (src, dst):
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < k:
                raise RobustlabError(
                    f"class_map entries must be classes in [0, {k}), got {src!r} -> {dst!r}."
                )
    return {int(s): int(d) for s, d in mapping.items()}


def apply_label_noise(
    y: Tensor,
    kind: str,
    rate: float,
    num_classes: int,
    seed: int = 0,
    dataset_name: str | None = None,
    x: Tensor | None = None,
    *,
    class_map: dict[int, int] | None = None,
) -> NoisyLabels:
    """Corrupt the labels ``y`` (N,) with ``kind`` noise at ``rate`` (see the module docstring).

    ``asymmetric`` needs ``dataset_name`` (or an explicit ``class_map``); ``instance`` needs the
    inputs ``x`` (N, ...). The result lives on the device of ``y``.
    """
    key = _check_kind(kind)
    r = _check_rate(rate)
    k = check_int(num_classes, "num_classes", minimum=2)
    check_int(seed, "seed", minimum=0)
    if not isinstance(y, Tensor):
        y = torch.as_tensor(np.asarray(y))
    labels = check_labels(y, int(y.shape[0]) if y.dim() else -1, k, "labels").cpu()
    gen = torch.Generator().manual_seed(seed)
    if key == "none" or r == 0.0:
        noisy, transition = labels.clone(), torch.eye(k, dtype=torch.float64)
    elif key == "symmetric":
        noisy, transition = _symmetric(labels, r, k, gen)
    elif key == "uniform":
        noisy, transition = _uniform(labels, r, k, gen)
    elif key in ("asymmetric", "pairflip"):
        if key == "pairflip":
            mapping = {c: (c + 1) % k for c in range(k)}
        elif class_map is not None:
            mapping = _check_class_map(class_map, k)
        elif dataset_name is not None:
            mapping = _check_class_map(class_map_for(dataset_name), k)
        else:
            raise RobustlabError(
                "asymmetric noise needs dataset_name (one of "
                f"{', '.join(sorted(CLASS_MAPS))}) or an explicit class_map."
            )
        noisy, transition = _class_map_flip(labels, r, k, mapping, gen)
    else:
        if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] != labels.shape[0]:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise RobustlabError(
                f"instance-dependent noise needs the inputs x of shape ({labels.shape[0]}, ...), "
                f"got {shape}."
            )
        noisy, transition = _instance(labels, r, k, x, gen)
    return NoisyLabels(
        y_noisy=noisy.to(y.device),
        y_clean=labels.to(y.device),
        is_noisy=(noisy != labels).to(y.device),
        kind=key,
        rate=r,
        num_classes=k,
        seed=seed,
        transition=transition,
    )


def with_label_noise(
    data: ArrayDataset, spec: str, seed: int, out_dir: str | Path
) -> tuple[ArrayDataset, NoisyLabels]:
    """``data`` with its labels corrupted by ``spec`` (e.g. ``"symmetric:0.4"``, see
    :func:`parse_noise_spec`), and the noise; the clean and noisy labels and the mask are written
    to ``out_dir/label_noise.npz`` and the summary to ``out_dir/label_noise.json``."""
    noisy = parse_noise_spec(spec).apply(data.y, data.num_classes, seed, data.name, data.x)
    arrays = {"y_noisy": noisy.y_noisy.numpy(), "y_clean": noisy.y_clean.numpy(),
              "is_noisy": noisy.is_noisy.numpy()}  # fmt: skip
    out = Path(out_dir)
    atomic_write(out / "label_noise.npz", lambda f: np.savez_compressed(f, **arrays))
    atomic_write_text(out / "label_noise.json", json.dumps(noisy.summary(), indent=2) + "\n")
    return dataclasses.replace(data, y=noisy.y_noisy), noisy
