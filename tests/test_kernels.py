"""The faster CPU kernels of robustlab.runtime.kernels give PyTorch's results (outputs and gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustlab.attacks import PGD
from robustlab.models import build_model
from robustlab.runtime import kernels
from robustlab.runtime.kernels import fast_kernels, set_fast_kernels


def _grad(fn, x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    (g,) = torch.autograd.grad((out * upstream).sum(), x)
    return out.detach(), g


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 3, 7, 9), (1, 2, 6, 6)])
@pytest.mark.parametrize("k", [2, 3, (2, 3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_max_pool_matches_pytorch_exactly(shape, k, channels_last, monkeypatch):
    calls = []
    tiled = kernels._tiled_max
    monkeypatch.setattr(kernels, "_tiled_max", lambda *a: calls.append(1) or tiled(*a))
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = F.max_pool2d(x, k)
        with fast_kernels():
            out = torch.nn.MaxPool2d(k)(x)
    assert calls == [1]  # the rerouted kernel ran, once
    assert torch.equal(out, ref)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.fixture
def onednn_calls(monkeypatch) -> list:
    """A list that grows by one at every call of the oneDNN pooling path (the one-time check of
    that path runs first, so that it does not count)."""
    kernels._onednn_pooling_matches_pytorch()
    calls = []
    onednn = kernels._onednn_max_pool2d
    monkeypatch.setattr(kernels, "_onednn_max_pool2d", lambda *a: calls.append(1) or onednn(*a))
    return calls


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 3, 7, 9), (1, 6, 28, 28)])
@pytest.mark.parametrize("k", [2, 3, (2, 3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_max_pool_with_gradients_is_onednn_and_matches_pytorch_bit_for_bit(
    shape, k, channels_last, onednn_calls
):
    if not kernels._onednn_pooling_matches_pytorch():
        pytest.skip("this PyTorch build's oneDNN pooling is unavailable or differs")
    calls = onednn_calls
    # small integers: most windows hold several maxima, and the first one must get the gradient
    x = torch.randint(0, 3, shape, generator=torch.Generator().manual_seed(2)).float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out_ref, g_ref = _grad(lambda z: F.max_pool2d(z, k), x)
    with fast_kernels():
        out, g = _grad(lambda z: F.max_pool2d(z, k), x)
    assert calls == [1]
    assert torch.equal(out, out_ref) and torch.equal(g, g_ref)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # printed by torch.backends.mkldnn.flags
def test_max_pool_with_gradients_falls_back_on_nan_and_when_the_check_fails(
    onednn_calls, monkeypatch
):
    calls = onednn_calls
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    x[0, 1, 2, 3] = float("nan")  # oneDNN's maximum would skip it
    out_ref, g_ref = _grad(lambda z: F.max_pool2d(z, 2), x)
    with fast_kernels():
        out, g = _grad(lambda z: F.max_pool2d(z, 2), x)
    assert calls == []
    assert torch.equal(out.isnan(), out_ref.isnan()) and out.isnan().sum() == 1
    assert torch.equal(g.nan_to_num(), g_ref.nan_to_num())
    with torch.backends.mkldnn.flags(enabled=False), fast_kernels():  # the user's switch
        _grad(lambda z: F.max_pool2d(z, 2), x.nan_to_num())
    monkeypatch.setattr(kernels, "_onednn_pooling_matches_pytorch", lambda: False)
    with fast_kernels():
        _grad(lambda z: F.max_pool2d(z, 2), x.nan_to_num())
    assert calls == []
    with fast_kernels():  # the spy itself works
        _grad(lambda z: kernels._onednn_max_pool2d(z, (2, 2)), x.nan_to_num())
    assert calls == [1]


def test_gradients_through_the_block_are_first_order_only():
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.MaxPool2d(2))
    with fast_kernels():
        out = model(x)
    (g,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):  # the documented limit: PyTorch's kernels for this
        torch.autograd.grad(g.square().sum(), x)
    set_fast_kernels(False)
    try:
        with fast_kernels():
            out = model(x)
    finally:
        set_fast_kernels(True)
    (g,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    assert torch.autograd.grad(g.square().sum(), x)[0].shape == x.shape


def test_max_pool_propagates_nan_like_pytorch():
    x = torch.rand(1, 1, 4, 4)
    x[0, 0, 1, 1] = float("nan")
    with fast_kernels():
        out = F.max_pool2d(x, 2)
    assert torch.equal(out.isnan(), F.max_pool2d(x, 2).isnan())
    assert out.isnan().sum() == 1


@pytest.mark.parametrize(
    "cin,cout,k,padding",
    [(1, 6, 5, 2), (3, 8, 3, 1), (6, 16, 5, 0), (4, 5, (3, 5), (1, 2)), (2, 3, 3, (0, 2))],
)
@pytest.mark.parametrize("kernel", sorted(kernels._INPUT_GRADIENTS))
def test_every_conv_input_gradient_kernel_equals_autograd(cin, cout, k, padding, kernel):
    gen = torch.Generator().manual_seed(0)
    kh, kw = (k, k) if isinstance(k, int) else k
    x = torch.rand(3, cin, 12, 11, generator=gen, dtype=torch.float64)
    w = torch.randn(cout, cin, kh, kw, generator=gen, dtype=torch.float64)
    upstream = torch.randn(F.conv2d(x, w, padding=padding).shape, generator=gen, dtype=x.dtype)
    xr = x.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad((F.conv2d(xr, w, padding=padding) * upstream).sum(), xr)
    g = kernels._INPUT_GRADIENTS[kernel](upstream, w, kernels._pair(padding), x.shape[-2:])
    assert torch.allclose(g, g_ref, atol=1e-10)


def test_the_input_gradient_rule_covers_first_layers_only():
    assert kernels.input_gradient_kernel(1, 6) == "depthwise"
    assert kernels.input_gradient_kernel(3, 16) == "flipped"
    assert kernels.input_gradient_kernel(3, 64) == "col2im"
    assert kernels.input_gradient_kernel(16, 32) is None  # PyTorch's kernel


@pytest.mark.parametrize("cin,cout", [(1, 6), (3, 32)])
def test_first_layer_conv_gives_pytorch_gradients_for_input_weight_and_bias(cin, cout):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, cin, 10, 10, generator=gen).requires_grad_(True)
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1)

    def grads():
        conv.zero_grad()
        x.grad = None
        out = conv(x)
        out.square().sum().backward()
        return out.grad_fn.name(), x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone()

    name_ref, *ref = grads()
    with fast_kernels():
        name, *out = grads()
    assert "FirstLayer" in name and "FirstLayer" not in name_ref
    for a, b in zip(out, ref, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "call",
    [
        lambda z, w: F.conv2d(z, w, stride=2, padding=1),
        lambda z, w: F.conv2d(z, w, dilation=2, padding=2),
        lambda z, w: F.conv2d(z, w, padding="same"),
        lambda z, w: F.max_pool2d(z, 3, stride=1),
        lambda z, w: F.max_pool2d(z, 2, padding=1),
        lambda z, w: F.max_pool2d(z, 3, ceil_mode=True),
        lambda z, w: F.max_pool2d(z, 2, return_indices=True)[0],
        lambda z, w: F.max_pool2d(z.double(), 2),  # oneDNN's pooling: float32 only
    ],
)
def test_calls_outside_the_fast_cases_fall_back_to_pytorch(call):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 9, 9, generator=gen)
    w = torch.randn(3, 3, 3, 3, generator=gen)
    out_ref, g_ref = _grad(lambda z: call(z, w), x)
    with fast_kernels():
        out, g = _grad(lambda z: call(z, w), x)
    assert torch.equal(out, out_ref)
    assert torch.equal(g, g_ref)


def test_switched_off_and_non_cpu_devices_leave_torch_untouched():
    x = torch.rand(1, 2, 6, 6, requires_grad=True)
    w = torch.randn(3, 2, 3, 3)

    def rerouted() -> bool:
        return "FirstLayer" in F.conv2d(x, w, padding=1).grad_fn.name()

    set_fast_kernels(False)
    try:
        with fast_kernels():
            assert not rerouted()
    finally:
        set_fast_kernels(True)
    with fast_kernels("meta"):
        assert not rerouted()
    with fast_kernels():
        assert rerouted()
    assert not rerouted()


def test_weight_gradients_false_skips_weight_gradients():
    x = torch.rand(2, 2, 6, 6, requires_grad=True)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    with fast_kernels(weight_gradients=False):
        out = conv(x)
    out.sum().backward()
    assert x.grad is not None and conv.weight.grad is None and conv.bias.grad is None


def test_attack_gradients_with_and_without_fast_kernels_agree():
    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10).eval()
    x = torch.rand(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    attack = PGD("linf:0.1", steps=5, seed=0)
    set_fast_kernels(False)
    try:
        _, loss_ref, g_ref = attack.loss_gradient(model, x, y)
    finally:
        set_fast_kernels(True)
    _, loss, g = attack.loss_gradient(model, x, y)
    assert torch.allclose(loss, loss_ref, atol=1e-6)
    assert torch.allclose(g, g_ref, atol=1e-6, rtol=1e-4)
