"""Fast paths taken only where proven equal to the plain path, and the record of which ran.

An attack may call the model through three fast paths: the rerouted CPU kernels of
:mod:`robustlab.runtime.kernels`, channels-last inputs (faster oneDNN convolutions with gradients) and, for
Square's Linf queries, the incremental forward of :mod:`robustlab.attacks.incremental`. Each is an
optimisation of the same function, so each must give the plain path's outputs for *this* model:
a subclass of a known layer, a hook, or a forward that calls ``.view`` on a channels-last tensor
would make it give other numbers, or fail.

:class:`FastPathGuard` (one per attack run) proves the kernels and channels-last at the first call
of each grad mode on a module, unless that model object was already proven with the same
structure and kind of input (see :class:`FastPathGuard`):

- with gradients on CPU images, the fast configuration is run on a probe of the batch's first 2
  points, forward and input gradient (of a fixed random projection of the logits), next to the
  plain path (NCHW, PyTorch's kernels); a configuration that raises or disagrees (:func:`agree`)
  is dropped, trying channels-last and the kernels each alone before the plain path;
- otherwise the first call itself runs with the kernels, and only where it rerouted a layer are
  its first 2 rows compared with the plain path on those points (a model the kernels never touch
  costs no extra call).

Two points keep a batch dimension (a layout error shows as it would on the whole batch) at the
least cost: a proof costs a few milliseconds on one CPU thread (LeNet), once per model object,
structure and kind of input, not once per run (a one-step attack in training would otherwise pay
it every batch).

Probe calls are verification, not queries: they are not counted in ``forward_passes``. Module
identity is taken by ``id`` within one run. :class:`FastPaths` records per path ``"used"``,
``"not used: <why>"``, ``"refused: <why>"`` or ``"failed check, fell back: <why>"``; attack results
carry it as ``extras["fast_paths"]`` and evaluation results in ``provenance["fast_paths"]``.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from robustlab.runtime.kernels import fast_kernels, fast_kernels_enabled

PATHS = ("fast_kernels", "channels_last", "incremental_forward")
USED = "used"
FELL_BACK = "failed check, fell back"
NOT_REACHED = "not reached"
#: a merged record keeps the most telling status: a failed check, then use, refusal, non-use
_RANK = {FELL_BACK: 4, USED: 3, "refused": 2, "not used": 1, NOT_REACHED: 0}
#: agreement tolerance in units of the dtype's rounding error, relative to the largest magnitude
ULPS = 1000
PROBE_SIZE = 2


def _rank(status: str) -> int:
    return _RANK.get(status.split(":", 1)[0], 0)


def agree(fast: Any, plain: Tensor) -> bool:
    """Whether a fast path's output equals the plain path's up to float rounding: same shape, NaN
    and infinities in the same places, and ``max |fast - plain| <= 1000 u max |plain|`` (``u`` the
    dtype's unit roundoff; 1.2e-4 relative in float32).

    Both paths evaluate the same sums of the same products, in another order at most: reordering a
    sum of ``L`` terms moves it by about ``L u`` of its magnitude, and the networks measured differ
    by under 1e-6 of the largest logit or gradient (about 8 u), so 1000 u leaves a wide margin. A
    path that reads other positions or other weights (a layer that is not pointwise, a hook that
    is skipped) moves the outputs by a large fraction of their size.
    """
    if not isinstance(fast, Tensor) or fast.shape != plain.shape or fast.dtype != plain.dtype:
        return False
    finite = torch.isfinite(plain)
    if not torch.equal(finite, torch.isfinite(fast)):
        return False
    if not torch.equal(plain[~finite].nan_to_num(0.0), fast[~finite].nan_to_num(0.0)):
        return False  # a NaN where the other has an infinity, or infinities of opposite sign
    if not finite.any():
        return True
    a, b = fast[finite].double(), plain[finite].double()
    tol = ULPS * torch.finfo(plain.dtype).eps * float(b.abs().max())
    return float((a - b).abs().max()) <= tol


def difference(fast: Any, plain: Tensor) -> str:
    """Why :func:`agree` said no, in a few words."""
    if not isinstance(fast, Tensor):
        return f"it returned {type(fast).__name__}, not a tensor"
    if fast.shape != plain.shape:
        return f"shape {tuple(fast.shape)} instead of {tuple(plain.shape)}"
    finite = torch.isfinite(plain) & torch.isfinite(fast)
    diff = (fast[finite].double() - plain[finite].double()).abs()
    scale = plain[finite].abs().max() if finite.any() else torch.tensor(0.0)
    rel = float(diff.max() / scale) if diff.numel() and float(scale) > 0 else float("inf")
    return f"outputs differ from the plain path's by {rel:.2g} of their size"


def reason(error: BaseException) -> str:
    """An exception as a short status reason: its type and the first line of its message."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text[:160]}" if text else type(error).__name__


@dataclass
class FastPaths:
    """Which fast paths one attack run took; see the module docstring for the statuses."""

    fast_kernels: str = NOT_REACHED
    channels_last: str = NOT_REACHED
    incremental_forward: str = NOT_REACHED

    def note(self, path: str, status: str) -> None:
        """Record ``status`` for ``path`` unless a more telling status is already there."""
        if _rank(status) > _rank(getattr(self, path)):
            setattr(self, path, status)

    def merge(self, other: FastPaths | Mapping[str, str]) -> FastPaths:
        items = asdict(other) if isinstance(other, FastPaths) else other
        for path, status in items.items():
            if path in PATHS:
                self.note(path, status)
        return self

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def merge_fast_paths(total: dict[str, str], new: Mapping[str, str]) -> dict[str, str]:
    """``total`` updated in place with the statuses of ``new`` (e.g. over batches); returned."""
    merged = FastPaths().merge(total).merge(new).to_dict()
    total.update(merged)
    return total


class Plan(NamedTuple):
    channels_last: bool
    kernels: bool


PLAIN = Plan(False, False)


def run_plan(model: nn.Module, x: Tensor, plan: Plan) -> tuple[Any, bool]:
    """``model(x)`` on the paths of ``plan``, and whether a kernel was rerouted."""
    if plan.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if not plan.kernels:
        return model(x), False
    with fast_kernels(x.device, weight_gradients=False) as mode:
        out = model(x)
    return out, mode is not None and mode.rerouted


def plain_forward(model: nn.Module, x: Tensor) -> Tensor:
    """The plain path without gradients: NCHW as given, PyTorch's kernels (the reference)."""
    with torch.no_grad():
        return model(x)


def _probe(
    model: nn.Module, x: Tensor, grad: bool, plan: Plan
) -> tuple[Tensor, Tensor | None, bool]:
    """Logits of the probe on ``plan``, their input gradient along a fixed projection (with
    ``grad``), and whether a kernel was rerouted."""
    z = x.detach().clone()
    if not grad:
        with torch.no_grad():
            out, rerouted = run_plan(model, z, plan)
        return out, None, rerouted
    z.requires_grad_(True)
    with torch.enable_grad():
        out, rerouted = run_plan(model, z, plan)
        if not isinstance(out, Tensor):
            return out, None, rerouted
        gen = torch.Generator(device=out.device).manual_seed(0)
        upstream = torch.randn(out.shape, generator=gen, device=out.device, dtype=out.dtype)
        (g,) = torch.autograd.grad(out, z, upstream)
    return out.detach(), g, rerouted


def _structure(model: nn.Module) -> tuple:
    """What a proof depends on besides the weights' values: each module's type, mode, hooks and
    instance ``forward``, and the global module hooks."""
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    glob = nn.modules.module
    return (
        tuple(len(getattr(glob, f"_global{h}", ())) for h in hooks),
        *(
            (id(m), type(m), m.training, "forward" in vars(m), *(len(getattr(m, h)) for h in hooks))
            for m in model.modules()
        ),
    )


#: proofs per model object (dropped with the model): {(grad, input shape, dtype, device, kernels
#: switched on, structure): (plan, statuses)}
_PROOFS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[Plan, FastPaths]]] = (
    weakref.WeakKeyDictionary()
)


class FastPathGuard:
    """Runs an attack's model calls on the fast paths proven for them (one guard per run).

    A proof holds for the model object as long as its structure (:func:`_structure`), the input
    shape, dtype and device, and the kernel switch stay the same: the weights' values change what
    the model computes, not whether a layout or kernel computes it the same way. So a model
    attacked batch after batch, or trained with an attack each step, is proven once, and each run's
    record carries the statuses of that proof.
    """

    def __init__(self) -> None:
        self.record = FastPaths()
        self._plans: dict[tuple[bool, int], Plan] = {}

    def forward(self, model: nn.Module, x: Tensor) -> Any:
        grad = torch.is_grad_enabled() and x.requires_grad
        plan = self._plans.get((grad, id(model)))
        if plan is None:
            return self._first(model, x, grad)
        return run_plan(model, x, plan)[0]

    def _first(self, model: nn.Module, x: Tensor, grad: bool) -> Any:
        key = (grad, tuple(x.shape[1:]), x.dtype, x.device, fast_kernels_enabled())
        key += (_structure(model),)
        proofs = _PROOFS.setdefault(model, {})
        if key in proofs:
            plan, notes = proofs[key]
            out = run_plan(model, x, plan)[0]
        else:
            notes = FastPaths()
            plan, out = self._choose(model, x, grad, notes)
            if len(proofs) >= 8:  # a few input kinds and structures per model, oldest dropped
                proofs.pop(next(iter(proofs)))
            proofs[key] = (plan, notes)
        self._plans[(grad, id(model))] = plan
        self.record.merge(notes)
        return out

    def _choose(
        self, model: nn.Module, x: Tensor, grad: bool, notes: FastPaths
    ) -> tuple[Plan, Any]:
        """The proven plan for ``model`` and the logits of ``x`` on it."""
        cpu = x.device.type == "cpu"
        kernels = fast_kernels_enabled() and cpu
        if not kernels:
            why = "switched off" if cpu else f"no fast kernels on {x.device.type}"
            notes.note("fast_kernels", f"not used: {why}")
        channels_last = grad and cpu and x.dim() == 4
        if grad and not channels_last:
            notes.note("channels_last", "not used: the inputs are not CPU images")
        if channels_last:  # channels-last may raise: prove it on the probe before the real call
            plan = _prove(model, x, grad, Plan(True, kernels), notes)
            return plan, run_plan(model, x, plan)[0]
        if not kernels:
            return PLAIN, run_plan(model, x, PLAIN)[0]
        out, rerouted = run_plan(model, x, Plan(False, True))
        if not rerouted:  # nothing rerouted: the call was the plain path
            notes.note("fast_kernels", "not used: no layer it reroutes")
            return PLAIN, out
        first = out[:PROBE_SIZE].detach() if isinstance(out, Tensor) and not grad else None
        plan = _prove(model, x, grad, Plan(False, True), notes, first)
        return plan, out if plan.kernels else run_plan(model, x, plan)[0]


def _prove(
    model: nn.Module,
    x: Tensor,
    grad: bool,
    plan: Plan,
    notes: FastPaths,
    first: Tensor | None = None,
) -> Plan:
    """The first of ``plan``, its paths each alone, and the plain path that gives the plain path's
    logits (and input gradient) on a probe of the batch; ``notes`` records why. ``first``: the
    logits ``plan`` already gave the probe's points (no gradients), reused."""
    probe = x[:PROBE_SIZE]
    try:
        ref, ref_grad, _ = _probe(model, probe, grad, PLAIN)
    except Exception as error:  # noqa: BLE001 - the real call will raise it where it belongs
        for path, on in zip(("channels_last", "fast_kernels"), plan):
            if on:
                notes.note(path, f"not used: the plain path failed ({reason(error)})")
        return PLAIN
    candidates = [plan]
    if plan.channels_last and plan.kernels:
        candidates += [Plan(False, True), Plan(True, False)]
    failures: dict[str, str] = {}
    chosen, rerouted = PLAIN, False
    for cand in candidates:
        try:
            if cand == plan and first is not None:
                out, g, rerouted = first, None, True
            else:
                out, g, rerouted = _probe(model, probe, grad, cand)
            why = None
            if not agree(out, ref):
                why = difference(out, ref)
            elif grad and not agree(g, ref_grad):
                why = "input " + difference(g, ref_grad).replace("outputs", "gradients")
        except Exception as error:  # noqa: BLE001 - a fast path that raises is not taken
            why = reason(error)
        if why is None:
            chosen = cand
            break
        for path, on in zip(("channels_last", "fast_kernels"), cand):
            if on:
                failures.setdefault(path, why)
    for path, wanted, taken in zip(("channels_last", "fast_kernels"), plan, chosen):
        if wanted and not taken:
            notes.note(path, f"{FELL_BACK}: {failures[path]}")
    if chosen.channels_last:
        notes.note("channels_last", USED)
    if chosen.kernels:
        if rerouted:
            notes.note("fast_kernels", USED)
        else:
            notes.note("fast_kernels", "not used: no layer it reroutes")
            chosen = Plan(chosen.channels_last, False)
    return chosen
