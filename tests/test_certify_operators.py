"""Each bound-propagation operator's rules are sound on its own (Gowal et al. 2018, eq. 6 for
the interval rule; Zhang et al. 2018, Theorem 3.2 for the linear relaxation).

For random input boxes and points sampled in them (uniformly and at random vertices, where a
relaxation of a piecewise-linear map is tight):

* interval: ``lower <= op(x) <= upper`` for ``(lower, upper) = op.interval(box)``;
* linear relaxation: ``<A, op(x)> >= sum_i <A_i, x_i> + d`` for ``(A_i, d) = op.backward(A)``
  (through ``op.relax(box)`` for a non-linear operator), every lower slope of the ReLU included.

And the table from exact layer types to operator classes covers every supported type.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robustlab.certify import LiResNetBlock, compile_model
from robustlab.certify.graph import SUPPORTED_LAYERS, SUPPORTED_TYPES
from robustlab.certify.operators import (
    LOWER_SLOPES,
    OPERATORS,
    AddOp,
    IdentityOp,
    Operator,
    ReLUOp,
)
from robustlab.models.layers import Normalize, Residual

TOL = 1e-9  # float64 throughout
SAMPLES = 12


def _bn(cls, c: int) -> nn.Module:
    bn = cls(c, eps=0.1)
    with torch.no_grad():
        bn.weight.uniform_(-2, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3)
    return bn


#: one small instance per supported layer type: (module, per-sample input shape)
LAYERS: dict[type[nn.Module], Callable[[], tuple[nn.Module, tuple[int, ...]]]] = {
    nn.Linear: lambda: (nn.Linear(5, 4), (5,)),
    nn.Conv2d: lambda: (nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (4, 5, 5)),
    nn.ReLU: lambda: (nn.ReLU(), (6,)),
    nn.Flatten: lambda: (nn.Flatten(), (2, 3, 2)),
    nn.Identity: lambda: (nn.Identity(), (5,)),
    nn.BatchNorm1d: lambda: (_bn(nn.BatchNorm1d, 6).eval(), (6,)),
    nn.BatchNorm2d: lambda: (_bn(nn.BatchNorm2d, 3).train(), (3, 2, 2)),
    nn.AvgPool2d: lambda: (nn.AvgPool2d(3, stride=2, padding=1), (2, 5, 5)),
    nn.AdaptiveAvgPool2d: lambda: (nn.AdaptiveAvgPool2d((2, 1)), (2, 4, 4)),
    Normalize: lambda: (Normalize([0.2, 0.5, 0.7], [0.3, 0.2, 0.6]), (3, 2, 2)),
    Residual: lambda: (Residual(nn.Linear(4, 4)), (4,)),
    LiResNetBlock: lambda: (LiResNetBlock(2), (2, 3, 3)),
}
#: more configurations of one type: a first convolution (the matrix product and F.fold path of
#: the transpose) and a stride-1 average pooling without padding
MORE: dict[str, Callable[[], tuple[nn.Module, tuple[int, ...]]]] = {
    "Conv2d-first": lambda: (nn.Conv2d(2, 3, (3, 2), stride=(1, 2), padding=(1, 0)), (2, 6, 7)),
    "AvgPool2d-overlap": lambda: (nn.AvgPool2d(2, stride=1), (2, 3, 4)),
}


def compiled(module: nn.Module, shape: tuple[int, ...]) -> list[Operator]:
    """The operators ``module`` compiles to (a Flatten appended makes the output flat)."""
    graph = compile_model(nn.Sequential(module, nn.Flatten()), shape)
    return [n.op for n in graph.nodes[1:-1]]


def operator_case(name: str):
    """(operator, input shapes, output shape) of a test case, in float64."""
    if name == "Residual":  # two inputs of one shape
        return AddOp(), [(3, 2), (3, 2)], (3, 2)
    if name == "ReLU pattern":  # the linearisation of a ReLU: a per-sample 0/1 scale
        torch.manual_seed(1)
        return ReLUOp().linearize(torch.randn(2, 7, dtype=torch.float64)), [(7,)], (7,)
    if name == "Identity":
        return IdentityOp(), [(5,)], (5,)
    make = MORE.get(name) or LAYERS[next(k for k in LAYERS if k.__name__ == name)]
    torch.manual_seed(0)
    module, shape = make()
    module = module.double()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # constant weights (average pooling) in float64 too
    try:
        op = compiled(module, shape)[-1]
    finally:
        torch.set_default_dtype(default)
    if getattr(op, "batch_stats", False):  # BatchNorm in training mode: fix the batch statistics
        op.evaluate(torch.rand(8, *shape, dtype=torch.float64))
    with torch.no_grad():
        out = op.forward(torch.zeros(1, *shape, dtype=torch.float64)).shape[1:]
    return op, [shape], tuple(out)


CASES = [k.__name__ for k in LAYERS if k not in (Residual, LiResNetBlock, nn.Identity)]
CASES += [*MORE, "Identity", "Residual", "ReLU pattern"]


def points(lo: torch.Tensor, hi: torch.Tensor, g: torch.Generator) -> list[torch.Tensor]:
    """Random points of the box: uniform ones, random vertices, both corners."""
    uniform = [lo + (hi - lo) * torch.rand(lo.shape, generator=g, dtype=lo.dtype)
               for _ in range(SAMPLES // 2)]
    vertices = [torch.where(torch.rand(lo.shape, generator=g) < 0.5, lo, hi)
                for _ in range(SAMPLES // 2)]
    return uniform + vertices + [lo, hi]


@pytest.mark.parametrize("name", CASES)
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), spread=st.floats(0.0, 2.0), width=st.floats(0.0, 1.5),
       slope=st.sampled_from(LOWER_SLOPES))
def test_interval_and_linear_relaxation_are_sound(name, seed, spread, width, slope):
    op, in_shapes, out_shape = operator_case(name)
    g = torch.Generator().manual_seed(seed)
    batch, rows = 2, 3
    boxes = []
    for shape in in_shapes:
        lo = spread * torch.randn(batch, *shape, generator=g, dtype=torch.float64)
        hi = lo + width * torch.rand(batch, *shape, generator=g, dtype=torch.float64)
        boxes.append((lo, hi))
    with torch.no_grad():
        out_lo, out_hi = op.interval(*boxes)
        relaxation = op.relax(*boxes[0], slope) if op.relaxed else None
        a = torch.randn(batch, rows, *out_shape, generator=g, dtype=torch.float64)
        coefs, const = op.backward(a, relaxation)
        assert len(coefs) == len(boxes)
        samples = [points(lo, hi, g) for lo, hi in boxes]
        for xs in zip(*samples, strict=True):
            y = op.forward(*xs)
            assert y.shape == (batch, *out_shape)
            assert bool((y >= out_lo - TOL).all() and (y <= out_hi + TOL).all()), "interval"
            value = (a * y.unsqueeze(1)).flatten(2).sum(-1)
            bound = sum((c * x.unsqueeze(1)).flatten(2).sum(-1) for c, x in zip(coefs, xs,
                                                                                 strict=True))
            if const is not None:
                bound = bound + const
            assert bool((value >= bound - TOL * (1 + value.abs())).all()), "relaxation"


@pytest.mark.parametrize("make", [*LAYERS.values(), *MORE.values()])
def test_the_operators_compute_the_layer(make):
    """``forward`` is the layer's own map (BatchNorm in training mode: on the batch whose
    statistics it takes)."""
    torch.manual_seed(0)
    module, shape = make()
    model = nn.Sequential(module, nn.Flatten())
    x = 2 * torch.rand(5, *shape) - 1  # both signs: the ReLU's two pieces
    with torch.no_grad():
        out, ref = compile_model(model, shape).forward(x), model(x)
    assert out.shape == ref.shape and torch.allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_the_table_maps_every_supported_exact_type():
    assert SUPPORTED_TYPES == (nn.Sequential, *OPERATORS)
    assert SUPPORTED_LAYERS == tuple(t.__name__ for t in SUPPORTED_TYPES)
    assert set(LAYERS) == set(OPERATORS)  # a new operator needs a case above
    for kind, operator in OPERATORS.items():
        assert issubclass(operator, Operator)
        module, shape = LAYERS[kind]()
        assert type(module) is kind
        ops = compiled(module, shape)
        if kind is nn.Identity:
            assert ops == []  # an Identity adds no node
        else:
            assert type(ops[-1]) is operator, kind
    # exact types only: a subclass (which may override forward) is in no entry
    assert all(type(m) not in OPERATORS for m in (type("MyReLU", (nn.ReLU,), {})(),
                                                  type("MySeq", (nn.Sequential,), {})()))
