"""Each graph operation against the PyTorch layer it stands for.

For a layer ``y = M x + b`` (``M`` its dense matrix on one sample, read off the layer itself with
autograd), the operation's five maps must be the defining ones: ``linear`` is ``M``,
``linear_abs`` is ``|M|`` (interval radii, Gowal et al. 2018, eq. 6), ``linear_sq`` is ``M**2``
(squared L2 row norms), ``transpose`` is the adjoint (``<A, M x> = <A M, x>``: the backward step
of CROWN, Zhang et al. 2018, Theorem 3.2) and ``bias_term`` is ``<A, b>``. Then, through the
public entry points, IBP of one layer is the hand formula ``M c + b -+ |M| r`` (and, for L2, its
intersection with ``M x + b -+ eps ||M_i||_2``), and every bound method is exact on one layer:
``min c (M x' + b) = c (M x + b) - eps ||c M||_dual`` on a ball inside the box.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robustlab.certify import BOUND_METHODS, compile_model, compute_bounds, interval_bounds
from robustlab.certify.graph import BatchNormOp, ConvOp
from robustlab.models.layers import Normalize


def _bn(cls, c: int, affine: bool = True) -> nn.Module:
    bn = cls(c, affine=affine, eps=0.1)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 2)
        if affine:
            bn.weight.uniform_(-2, 2)
            bn.bias.uniform_(-1, 1)
    return bn.eval()


#: (id, layer factory, per-sample input shape); conv shapes cover both transpose paths (F.fold for
#: up to 3 input channels without groups, conv_transpose2d otherwise) and sizes the stride does
#: not divide (a non-zero output padding)
LAYERS = [
    ("linear", lambda: nn.Linear(5, 4), (5,)),
    ("linear-no-bias", lambda: nn.Linear(5, 3, bias=False), (5,)),
    ("conv", lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 5, 5)),
    ("conv-stride-uneven", lambda: nn.Conv2d(3, 2, 3, stride=2, padding=1), (3, 8, 7)),
    ("conv-dilated-groups", lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2),
     (4, 7, 7)),
    ("conv-rect", lambda: nn.Conv2d(1, 4, (3, 2), stride=(1, 2), padding=(1, 0)), (1, 6, 7)),
    ("conv-wide-stride", lambda: nn.Conv2d(5, 3, 3, stride=2, padding=1, bias=False), (5, 6, 6)),
    ("conv-wide-uneven", lambda: nn.Conv2d(4, 2, (2, 3), stride=(3, 2), padding=(1, 2)),
     (4, 8, 7)),
    ("conv-same", lambda: nn.Conv2d(2, 2, 3, padding="same", dilation=2), (2, 6, 6)),
    ("conv-valid", lambda: nn.Conv2d(2, 3, 2, padding="valid"), (2, 4, 5)),
    ("avgpool", lambda: nn.AvgPool2d(2), (2, 6, 6)),
    ("avgpool-padded", lambda: nn.AvgPool2d(3, stride=2, padding=1), (2, 7, 7)),
    ("avgpool-rect", lambda: nn.AvgPool2d((2, 3), stride=(1, 2)), (1, 5, 7)),
    ("adaptive-avgpool", lambda: nn.AdaptiveAvgPool2d((2, 3)), (2, 4, 6)),
    ("adaptive-avgpool-none", lambda: nn.AdaptiveAvgPool2d((None, 2)), (1, 3, 4)),
    ("adaptive-avgpool-int", lambda: nn.AdaptiveAvgPool2d(2), (3, 4, 6)),
    ("batchnorm2d", lambda: _bn(nn.BatchNorm2d, 3), (3, 4, 4)),
    ("batchnorm2d-no-affine", lambda: _bn(nn.BatchNorm2d, 2, affine=False), (2, 3, 3)),
    ("batchnorm1d", lambda: _bn(nn.BatchNorm1d, 5), (5,)),
    ("normalize", lambda: Normalize([0.2, 0.5], [0.3, 0.7]), (2, 3, 3)),
    ("normalize-flat", lambda: Normalize([0.1, 0.2, 0.3, 0.4], [0.5, 2.0, 0.25, 1.0]), (4,)),
    ("flatten", lambda: nn.Flatten(), (2, 3, 3)),
]
IDS = [name for name, _, _ in LAYERS]


def single(index: int):
    """(layer, model = the layer followed by Flatten when its output is not flat, shape)."""
    torch.manual_seed(index)
    _, make, shape = LAYERS[index]
    layer = make()
    model = nn.Sequential(layer) if isinstance(layer, nn.Flatten) else nn.Sequential(
        layer, nn.Flatten())
    return layer, model.eval(), shape


def affine_of(layer: nn.Module, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, b) of an affine layer on one sample: ``layer(x).flatten() = M x.flatten() + b``."""
    d = math.prod(shape)

    def f(v: torch.Tensor) -> torch.Tensor:
        return layer(v.reshape(1, *shape)).flatten()

    with torch.no_grad():
        b = f(torch.zeros(d))
    m = torch.autograd.functional.jacobian(f, torch.zeros(d))
    return m.detach(), b


def close(a, b):
    """Assert ``a == b`` to float32 rounding (the assertion of the tests below)."""
    torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("index", range(len(LAYERS)), ids=IDS)
def test_operation_maps_are_the_layer_and_its_adjoint(index):
    layer, model, shape = single(index)
    graph = compile_model(model, shape)
    node = graph.nodes[1]
    op = node.op
    m, b = affine_of(layer, shape)
    out_shape = node.shape
    assert math.prod(out_shape) == m.shape[0]
    x = torch.rand(3, *shape)
    flat = x.flatten(1)
    with torch.no_grad():
        close(op.forward(x).reshape(3, -1), layer(x).reshape(3, -1))
        close(op.forward(x).reshape(3, -1), flat @ m.T + b)
        close(op.linear(x).reshape(3, -1), flat @ m.T)
        close(op.linear_abs(x).reshape(3, -1), flat @ m.abs().T)
        close(op.linear_sq(x).reshape(3, -1), flat @ m.square().T)
        a = torch.randn(3, 4, *out_shape)
        back = op.transpose(a)
        assert back.shape == (3, 4, *shape)
        close(back.reshape(3, 4, -1), a.reshape(3, 4, -1) @ m)
        # the adjoint identity itself, <A, M x> = <A M, x>
        lhs = (a.reshape(3, 4, -1) * op.linear(x).reshape(3, 1, -1)).sum(-1)
        rhs = (back.reshape(3, 4, -1) * flat.reshape(3, 1, -1)).sum(-1)
        close(lhs, rhs)
        bias = op.bias_term(a)
        if bias is None:
            assert float(b.abs().max()) == 0.0
        else:
            close(bias, a.reshape(3, 4, -1) @ b)
    # only general linear maps are "mixing": an elementwise map or a reshape has at most one
    # non-zero per row, so IBP stays exact through it (see propagation.refinable)
    assert op.mixing == bool(((m != 0).sum(1) > 1).any())


@pytest.mark.parametrize("index", range(len(LAYERS)), ids=IDS)
@pytest.mark.parametrize("threat", ["linf:0.1", "l2:0.2"])
def test_ibp_of_one_layer_is_the_hand_formula(index, threat):
    """Gowal et al. 2018, eq. 6: centre ``M c + b``, radius ``|M| r`` on the input box; for an L2
    ball intersected with ``M x + b -+ eps ||M_i||_2`` (exact on the ball)."""
    layer, model, shape = single(index)
    m, b = affine_of(layer, shape)
    norm, eps = threat.split(":")[0], float(threat.split(":")[1])
    x = torch.rand(4, *shape)
    x[0].fill_(0.02)  # near the box edge: the box clips the ball
    lo_in, hi_in = (x - eps).clamp(0, 1).flatten(1), (x + eps).clamp(0, 1).flatten(1)
    c, r = (hi_in + lo_in) / 2, (hi_in - lo_in) / 2
    lo, hi = c @ m.T + b - r @ m.abs().T, c @ m.T + b + r @ m.abs().T
    if norm == "l2":
        value, rad = x.flatten(1) @ m.T + b, eps * m.norm(dim=1)
        lo, hi = torch.maximum(lo, value - rad), torch.minimum(hi, value + rad)
    with torch.no_grad():
        got_lo, got_hi = interval_bounds(model, x, threat)
    close(got_lo, lo)
    close(got_hi, hi)


@pytest.mark.parametrize("index", range(len(LAYERS)), ids=IDS)
@pytest.mark.parametrize("method", BOUND_METHODS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_bound_method_is_exact_on_one_layer(index, method, norm):
    """On a ball inside [0, 1], ``min c (M x' + b) = c (M x + b) - eps ||c M||_q`` with q the
    dual norm (1 for Linf, 2 for L2): the backward pass (transpose and bias term) must give it."""
    layer, model, shape = single(index)
    m, b = affine_of(layer, shape)
    eps = 0.05
    x = torch.rand(2, *shape) * (1 - 2 * eps) + eps
    spec = torch.randn(2, 3, m.shape[0])
    cm = spec @ m  # (N, S, D)
    value = (spec @ (x.flatten(1) @ m.T + b).unsqueeze(-1)).squeeze(-1)
    dual = cm.abs().sum(-1) if norm == "linf" else cm.norm(dim=-1)
    with torch.no_grad():
        got = compute_bounds(model, x, f"{norm}:{eps}", spec, method=method, tighten=False)
    close(got, value - eps * dual)


def test_conv_output_padding_restores_the_input_size():
    """``conv_transpose2d`` of a stride-2 convolution needs the output padding that gives back the
    exact input size: 8 -> 4 -> 8 needs 1, 7 -> 4 -> 7 needs 0 (with k = 3, p = 1)."""
    conv = nn.Conv2d(4, 2, 3, stride=2, padding=1)
    op = compile_model(nn.Sequential(conv, nn.Flatten()), (4, 8, 7)).nodes[1].op
    assert isinstance(op, ConvOp)
    assert op.output_padding == (1, 0)


def test_batchnorm_in_training_mode_is_the_clean_batch_statistics():
    """With batch statistics, the operation is ``(x - mean) / sqrt(var + eps) * w + b`` with the
    biased variance of the batch being bounded (as ``F.batch_norm(training=True)``)."""
    bn = _bn(nn.BatchNorm2d, 3).train()
    model = nn.Sequential(bn, nn.Flatten())
    x = torch.rand(5, 3, 2, 2)
    graph = compile_model(model, (3, 2, 2))
    op = graph.nodes[1].op
    assert isinstance(op, BatchNormOp) and op.batch_stats and graph.uses_batch_statistics()
    graph.forward(x)
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    scale = bn.weight / torch.sqrt(var + bn.eps)
    close(op.scale.flatten(), scale)
    close(op.shift.flatten(), bn.bias - mean * scale)
    assert not compile_model(model.eval(), (3, 2, 2)).uses_batch_statistics()


@settings(max_examples=25, deadline=None)
@given(
    c_in=st.integers(1, 4), c_out=st.integers(1, 3), groups=st.sampled_from([1, 2]),
    k=st.tuples(st.integers(1, 3), st.integers(1, 3)), s=st.tuples(st.integers(1, 3),
                                                                    st.integers(1, 3)),
    p=st.tuples(st.integers(0, 2), st.integers(0, 2)), d=st.tuples(st.integers(1, 2),
                                                                    st.integers(1, 2)),
    size=st.tuples(st.integers(4, 8), st.integers(4, 8)), seed=st.integers(0, 2**16),
)
def test_conv_transpose_is_the_adjoint_for_any_geometry(c_in, c_out, groups, k, s, p, d, size,
                                                        seed):
    """``<A, conv(x)> = <transpose(A), x>`` for random kernels, strides, paddings, dilations,
    groups and input sizes (both implementation paths)."""
    if c_in % groups:
        groups = 1
    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out * groups, k, stride=s, padding=p, dilation=d, groups=groups)
    shape = (c_in, *size)
    if any(size[i] + 2 * p[i] < d[i] * (k[i] - 1) + 1 for i in range(2)):
        return  # no output
    graph = compile_model(nn.Sequential(conv, nn.Flatten()), shape)
    op = graph.nodes[1].op
    x = torch.randn(2, *shape)
    a = torch.randn(2, 3, *graph.nodes[1].shape)
    with torch.no_grad():
        y = conv(x) - conv.bias.view(-1, 1, 1)
        lhs = (a * y.unsqueeze(1)).flatten(2).sum(-1)
        back = op.transpose(a)
        rhs = (back * x.unsqueeze(1)).flatten(2).sum(-1)
        close(lhs, rhs)
        close(op.bias_term(a), (a * conv.bias.view(1, 1, -1, 1, 1)).flatten(2).sum(-1))
