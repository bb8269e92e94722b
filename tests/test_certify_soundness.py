"""The certifier bounds exactly the model the user gave (issue #15).

A bound is a bound of the compiled graph, so a model whose call computes something else -- a
subclass with its own ``forward`` (of ``nn.Sequential`` or of a supported layer), a forward hook or
pre-hook (on a module or global), a replaced ``forward``, a custom module built from supported
children -- must be refused by every bound entry point, and the graph must be checked against
``model(x)`` on every bounded batch. Each case below is first shown to be a real counterexample:
the model's outputs lie outside the bounds of the plain network its layers form, which is what
the compiler bounded before the fix.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)

import robustlab.certify.lipschitz as lipschitz_module
import robustlab.certify.propagation as propagation_module
import robustlab.training.methods.certified as certified_module
from robustlab.certify import (
    GraphMismatchError,
    LipschitzCertifier,
    LiResNetBlock,
    UnsupportedLayerError,
    certify,
    compile_model,
    compute_bounds,
    crown_bounds,
    crown_ibp_bounds,
    ibp_bounds,
    interval_bounds,
    lipschitz_certify,
    propagation_tightness,
    verify_graph,
)
from robustlab.certify.graph import MATCH_RTOL
from robustlab.models.layers import Normalize, Residual
from robustlab.training.method import Batch, StepContext
from robustlab.training.methods import METHODS

SHAPE = (6,)


def base() -> nn.Sequential:
    """A supported network: Normalize, Linear, ReLU, a residual block, Linear to 3 logits."""
    torch.manual_seed(0)
    return nn.Sequential(
        Normalize(0.5, 0.25), nn.Linear(6, 16), nn.ReLU(),
        Residual(nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))), nn.ReLU(),
        nn.Linear(16, 3),
    ).eval()  # fmt: skip


class SkipSequential(nn.Sequential):
    def forward(self, x):
        return super().forward(x) + 3 * x[:, :3]


class ScaledSequential(nn.Sequential):
    def forward(self, x):
        return -2 * super().forward(x)


class LeakyReLU(nn.ReLU):
    def forward(self, x):
        return torch.where(x > 0, x, 0.5 * x)


class Doubled(nn.Linear):
    def forward(self, x):
        return F.linear(x, 2 * self.weight, self.bias)


class Difference(Residual):
    def forward(self, x):
        return self.body(x) - x


class Shifted(Normalize):
    def forward(self, x):
        return super().forward(x) + 1


class CustomBlock(LiResNetBlock):
    def forward(self, x):
        return self.body(x)


class Net(nn.Module):
    """Supported children, a custom forward with a functional op."""

    def __init__(self, seq: nn.Sequential) -> None:
        super().__init__()
        self.layers = seq

    def forward(self, x):
        h = self.layers[:5](x)
        return self.layers[5](torch.sigmoid(h))


def _with(seq: nn.Sequential, index: int, layer: nn.Module) -> nn.Sequential:
    if hasattr(layer, "weight") and hasattr(seq[index], "weight"):
        layer.load_state_dict(seq[index].state_dict())
    seq[index] = layer
    return seq


def _hooked(register: Callable[[nn.Sequential], object], target: int | None = None):
    def make() -> nn.Sequential:
        model = base()
        register(model if target is None else model[target])
        return model
    return make


def _replaced_forward() -> nn.Sequential:
    model = base()
    model[2].forward = lambda x: x.abs()
    return model


# name: (builder, a word the refusal must contain)
CASES: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "sequential subclass adds a skip": (lambda: SkipSequential(*base()), "SkipSequential"),
    "sequential subclass scales": (lambda: ScaledSequential(*base()), "ScaledSequential"),
    "forward hook": (_hooked(lambda m: m.register_forward_hook(lambda mod, i, o: -o)),
                     "forward hook"),
    "forward hook with kwargs": (_hooked(lambda m: m.register_forward_hook(
        lambda mod, args, kwargs, o: o * 2, with_kwargs=True), 1), "forward hook"),
    "forward hook always called": (_hooked(lambda m: m.register_forward_hook(
        lambda mod, i, o: o + 1, always_call=True), 3), "forward hook"),
    "forward pre-hook": (_hooked(lambda m: m.register_forward_pre_hook(
        lambda mod, i: (1 - i[0],))), "pre-hook"),
    "forward pre-hook with kwargs": (_hooked(lambda m: m.register_forward_pre_hook(
        lambda mod, args, kwargs: ((args[0] * 3,), kwargs), with_kwargs=True), 5), "pre-hook"),
    "replaced forward": (_replaced_forward, "'forward'"),
    "ReLU subclass": (lambda: _with(base(), 2, LeakyReLU()), "LeakyReLU"),
    "Linear subclass": (lambda: _with(base(), 5, Doubled(16, 3)), "Doubled"),
    "Residual subclass": (lambda: _with(base(), 3, Difference(base()[3].body)), "Difference"),
    "Normalize subclass": (lambda: _with(base(), 0, Shifted(0.5, 0.25)), "Shifted"),
    "custom forward from supported children": (lambda: Net(base()), "Net"),
}


def data(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, *SHAPE, generator=g), torch.randint(3, (n,), generator=g)


def entry_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable]:
    """Every public way to bound a model: bound functions, certify(), certified training."""
    t = "linf:0.05"
    batch = Batch(x, y, torch.arange(len(x)))
    ctx = StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1, eps_scale=1.0)
    calls: dict[str, Callable] = {
        f"compute_bounds {m}": (lambda m=m: compute_bounds(model, x, t, y=y, method=m))
        for m in ("ibp", "crown-ibp", "crown")
    }
    calls.update({
        "ibp_bounds": lambda: ibp_bounds(model, x, t),
        "interval_bounds": lambda: interval_bounds(model, x, t),
        "crown_ibp_bounds": lambda: crown_ibp_bounds(model, x, t),
        "crown_bounds": lambda: crown_bounds(model, x, t),
        "propagation_tightness": lambda: propagation_tightness(model, x, t, y),
        "lipschitz_certify": lambda: lipschitz_certify(model, x, y),
    })  # fmt: skip
    for m in ("ibp", "crown-ibp", "crown", "lipschitz"):
        calls[f"certify {m}"] = lambda m=m: certify(model, (x, y), m, t)
    for m in ("ibp", "crown-ibp", "cc-ibp", "emma"):
        kw = {"threat": "l2:0.3"} if m == "emma" else {"threat": t, "tightness_samples": 0}
        calls[f"train {m}"] = lambda m=m, kw=kw: METHODS.build(m, **kw).compute_loss(model, batch,
                                                                                   ctx)
    return calls


def assert_refused_everywhere(model: nn.Module, word: str, error=UnsupportedLayerError) -> None:
    x, y = data()
    for name, call in entry_points(model, x, y).items():
        with pytest.raises(error) as err:
            call()
        msg = str(err.value)
        assert word in msg, (name, msg)
        assert "\n" not in msg and msg.endswith("."), (name, msg)


def assert_real_counterexample(model: nn.Module, plain: nn.Module) -> None:
    """The model's outputs leave the bounds of its plain layer stack (what used to be bounded)."""
    x, _ = data()
    with torch.no_grad():
        z = model(x)
    lo, hi = interval_bounds(plain, x, "linf:0.001")
    assert ((z < lo - 1e-3) | (z > hi + 1e-3)).any()


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_model_that_is_not_its_layer_stack_is_refused_by_every_bound_method(case):
    make, word = CASES[case]
    model = make()
    assert_real_counterexample(model, base())
    assert_refused_everywhere(model, word)


@pytest.mark.parametrize("register", [register_module_forward_hook,
                                      register_module_forward_pre_hook])
def test_global_forward_hooks_are_refused(register):
    model = base()
    if register is register_module_forward_hook:
        hook = lambda mod, i, o: o + 1 if type(mod) is nn.Linear else None  # noqa: E731
    else:
        hook = lambda mod, i: (i[0] * 2,) if type(mod) is nn.Linear else None  # noqa: E731
    x, _ = data()
    lo, hi = interval_bounds(model, x, "linf:0.001")  # what was bounded: the hook-free network
    handle = register(hook)
    try:
        with torch.no_grad():
            z = model(x)
        assert ((z < lo - 1e-3) | (z > hi + 1e-3)).any()
        assert_refused_everywhere(model, "global module forward hook")
    finally:
        handle.remove()
    x, y = data()
    compute_bounds(model, x, "linf:0.05", y=y)  # accepted again once the hook is gone


def test_supported_models_are_accepted_and_wrappers_looked_through():
    model = base()
    x, y = data()
    compute_bounds(model, x, "linf:0.05", y=y, method="crown")
    block = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), LiResNetBlock(2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(32, 3)).eval()
    xi = torch.rand(2, 1, 4, 4)
    compute_bounds(block, xi, "linf:0.01", method="crown")
    LipschitzCertifier(block, (1, 4, 4))(xi)
    wrapped = nn.DataParallel(model)  # on CPU it calls the module itself
    compute_bounds(wrapped, x, "linf:0.05", y=y)
    wrapped.register_forward_hook(lambda mod, i, o: -o)
    with pytest.raises(GraphMismatchError, match="forward hook"):
        compute_bounds(wrapped, x, "linf:0.05", y=y)
    sub = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), CustomBlock(2), nn.Flatten(),
                        nn.Linear(32, 3)).eval()
    with pytest.raises(UnsupportedLayerError, match="CustomBlock .*a subclass of Residual"):
        compute_bounds(sub, xi, "linf:0.01")


# ------------------------------------------------------------------------- the numerical check
def test_tolerance_is_per_sample_and_relative_to_one_plus_the_largest_logit():
    """|graph(x) - model(x)| <= 1e-4 (1 + max_k |z_k|), sample by sample."""
    model = base()
    x = torch.rand(2, *SHAPE)
    graph = compile_model(model, SHAPE)
    out = torch.tensor([[100.0, 0.0, -3.0], [0.1, 0.0, 0.05]])
    scale = 1 + out.abs().amax(1)  # 101, 1.1

    def check(delta_0: float, delta_1: float) -> None:
        ref = out.clone()
        ref[0, 1] += delta_0 * float(scale[0])
        ref[1, 2] += delta_1 * float(scale[1])
        verify_graph(graph, model, x, out=out, logits=ref)

    check(0.5 * MATCH_RTOL, 0.5 * MATCH_RTOL)
    check(0.99 * MATCH_RTOL, -0.99 * MATCH_RTOL)
    with pytest.raises(GraphMismatchError, match="on sample 1"):
        check(0.0, 2 * MATCH_RTOL)  # within a batch-wide tolerance, not within sample 1's
    with pytest.raises(GraphMismatchError, match="on sample 0"):
        check(-2 * MATCH_RTOL, 0.0)
    nan = out.clone()
    nan[1, 0] = float("nan")
    with pytest.raises(GraphMismatchError, match="on sample 1"):
        verify_graph(graph, model, x, out=nan, logits=out)
    with pytest.raises(GraphMismatchError, match="not all finite"):
        verify_graph(graph, model, x, out=out, logits=nan)
    with pytest.raises(GraphMismatchError, match=r"shape \(2, 2\) where"):
        verify_graph(graph, model, x, out=out, logits=out[:, :2])
    # the model's own outputs are within float rounding of the graph's
    verify_graph(graph, model, torch.rand(64, *SHAPE))


def test_every_bound_path_checks_the_graph_against_the_model(monkeypatch):
    """A compiler that gets the model wrong (here: it compiles a twin with other weights) is
    caught on every path by the comparison with model(x) on the batch."""
    model = base()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin[5].bias.add_(0.5)
    real = compile_model

    def wrong(m, shape):
        return real(twin, shape)

    for module in (propagation_module, lipschitz_module, certified_module):
        monkeypatch.setattr(module, "compile_model", wrong)
    assert_refused_everywhere(model, "differ from the model's", GraphMismatchError)


def test_lipschitz_certifier_rechecks_the_model_on_every_call():
    model = base()
    x, y = data()
    cert = LipschitzCertifier(model, SHAPE)
    cert(x, y)
    handle = model[1].register_forward_pre_hook(lambda mod, i: (i[0] + 1,))
    with pytest.raises(GraphMismatchError, match="pre-hook"):
        cert(x, y)
    handle.remove()
    model[5].weight = nn.Parameter(model[5].weight.detach() * 3)  # the graph holds the old one
    with pytest.raises(GraphMismatchError, match="differ from the model's"):
        cert(x, y)


def test_the_check_leaves_batchnorm_running_statistics_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).train()
    bn = model[1]
    x, y = data()
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    compute_bounds(model, x, "linf:0.05", y=y, method="crown-ibp")
    propagation_tightness(model, x, "linf:0.05", y)
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k
    model(x)  # the model's own training-mode forward does update them
    assert not torch.equal(bn.running_mean, before["running_mean"])
