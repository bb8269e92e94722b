"""Incremental forward passes (Square's Linf queries): the same logits as the whole model for any
window, after any sequence of accepted and dropped points, and only for models it can handle."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.attacks import Square, incremental
from robustlab.attacks.incremental import IncrementalForward
from robustlab.models import build_model


def _predict(module: nn.Module, features: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(features)


def _odd_block() -> nn.Sequential:
    """Strided, non-square conv with uneven padding, BatchNorm, average pooling of overlapping
    windows (kernel 3, stride 2)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 5, (3, 5), stride=(1, 2), padding=(1, 2)), nn.BatchNorm2d(5), nn.LeakyReLU(),
        nn.AvgPool2d(3, stride=2), nn.Tanh(), nn.Flatten(), nn.LazyLinear(4),
    )  # fmt: skip
    model(torch.rand(2, 3, 13, 11))  # sizes the lazy layer
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


MODELS = {
    "lenet": lambda: build_model("lenet", (1, 28, 28)),
    "lenet-normalized": lambda: build_model("lenet", (1, 28, 28), normalize=(0.13, 0.31)),
    "smallcnn": lambda: build_model("smallcnn", (1, 28, 28)),
    "cnn7": lambda: build_model("cnn7", (3, 16, 16), width=8, linear_size=16),
    "odd": _odd_block,
}
SHAPES = {"lenet": (1, 28, 28), "lenet-normalized": (1, 28, 28), "smallcnn": (1, 28, 28),
          "cnn7": (3, 16, 16), "odd": (3, 13, 11)}  # fmt: skip


def _always_patch(inc: IncrementalForward) -> IncrementalForward:
    """The patch path for every window that leaves part of the block unchanged, whatever the cost
    rule says (the tests check the arithmetic of the patch on small batches)."""
    assert inc is not None
    inc.max_share, inc.min_block_macs, inc.min_macs_per_output = 1.0, 0, 0
    return inc


def _change_windows(x: torch.Tensor, size, gen):
    """``x`` with a random window per sample replaced by noise, and the windows' corners."""
    n, _, h, w = x.shape
    top = torch.randint(0, h - size[0] + 1, (n,), generator=gen)
    left = torch.randint(0, w - size[1] + 1, (n,), generator=gen)
    new = x.clone()
    for i in range(n):
        r, c = int(top[i]), int(left[i])
        new[i, :, r : r + size[0], c : c + size[1]] = torch.rand(x.shape[1], *size, generator=gen)
    return new, top, left


@pytest.mark.parametrize("name", sorted(MODELS))
def test_queries_give_the_whole_models_logits(name):
    torch.manual_seed(1)
    model = MODELS[name]().eval()
    shape = SHAPES[name]
    inc = _always_patch(IncrementalForward.of(model, shape, _predict))
    block_inputs = []  # spy: the block runs on patches for small windows
    block = inc._block
    inc._block = lambda z, padded=False: block_inputs.append(z.shape[-2:]) or block(z, padded)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(12, *shape, generator=gen)
    torch.testing.assert_close(inc.reset(x), model(x), rtol=0, atol=0)
    sizes = [(1, 1), (2, 2), (3, 1), (1, 4), (shape[1], shape[2]), (shape[1] // 2, 3)]
    for step in range(24):  # a random walk: queries, accepted subsets, dropped points
        size = sizes[step % len(sizes)]
        cand, top, left = _change_windows(x, size, gen)
        with torch.no_grad():
            torch.testing.assert_close(
                inc.query(cand, top, left, size), model(cand), rtol=1e-5, atol=1e-5
            )
        if size == (1, 1):
            assert block_inputs[-1].numel() < shape[1] * shape[2]  # a patch, not the image
        accept = torch.rand(len(x), generator=gen) < 0.5
        inc.accept(accept)
        x = torch.where(accept.view(-1, 1, 1, 1), cand, x)
        if step % 8 == 7:
            keep = torch.rand(len(x), generator=gen) < 0.8
            inc.keep(keep)
            x = x[keep]


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("name", ["lenet", "odd"])
def test_windows_at_the_corners_and_edges(name, layout):
    model, (c, h, w) = MODELS[name]().eval(), SHAPES[name]
    inc = _always_patch(IncrementalForward.of(model, (c, h, w), _predict))
    x = torch.rand(4, c, h, w).contiguous(memory_format=layout)
    inc.reset(x)
    for sh, sw in [(1, 1), (2, 2), (5, 5)]:
        for top, left in [(0, 0), (0, w - sw), (h - sh, 0), (h - sh, w - sw)]:
            cand = x.clone()
            window = (slice(None), slice(None), slice(top, top + sh), slice(left, left + sw))
            cand[window] = 1 - cand[window]
            corner = torch.full((4,), top), torch.full((4,), left)
            with torch.no_grad():
                logits = inc.query(cand, *corner, (sh, sw))
                torch.testing.assert_close(logits, model(cand), rtol=1e-5, atol=1e-5)


def _hooked_lenet() -> nn.Module:
    model = build_model("lenet", (1, 28, 28))
    model[0].register_forward_hook(lambda *args: None)
    return model


class _CustomForward(nn.Sequential):
    def forward(self, x):
        return super().forward(x) * 2


@pytest.mark.parametrize(
    "make",
    [
        lambda: build_model("mlp", (1, 28, 28), hidden=[8]),  # Flatten, Linear first
        lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), nn.Flatten()),
        lambda: nn.Sequential(nn.Conv2d(1, 2, 3, dilation=2), nn.Flatten()),
        lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding="same"), nn.Flatten()),
        lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()),  # nothing after the block
        lambda: _CustomForward(nn.Conv2d(1, 2, 3), nn.Flatten()),
        _hooked_lenet,
        lambda: nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3)), nn.Flatten()),
    ],
)
def test_models_it_cannot_reuse_get_none(make):
    assert IncrementalForward.of(make(), (1, 28, 28), _predict) is None


def test_a_training_mode_batchnorm_stays_in_the_tail():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten()).train()
    inc = IncrementalForward.of(model, (1, 8, 8), _predict)
    assert isinstance(inc.tail[0], nn.BatchNorm2d)  # batch statistics: not pointwise


def test_the_cost_rule_picks_the_patch_only_where_it_pays():
    lenet = IncrementalForward.of(build_model("lenet", (1, 28, 28)), (1, 28, 28), _predict)
    assert lenet.worth_it(400, (2, 2)) and lenet.worth_it(400, (8, 8))
    assert not lenet.worth_it(8, (2, 2))  # too little work for the bookkeeping
    assert not lenet.worth_it(400, (20, 20))  # the patch would cover most of the block
    smallcnn = IncrementalForward.of(build_model("smallcnn", (1, 28, 28)), (1, 28, 28), _predict)
    assert not smallcnn.worth_it(400, (2, 2))  # 9 multiply-adds per kept output: copying costs


def test_square_gives_the_same_points_with_and_without_it(monkeypatch):
    monkeypatch.setattr(IncrementalForward, "min_block_macs", 0)  # the patch at 16 points
    patches = []
    scatter = incremental._scatter_windows
    monkeypatch.setattr(
        incremental, "_scatter_windows", lambda *a: patches.append(1) or scatter(*a)
    )
    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28)).eval()
    x = torch.rand(16, 1, 28, 28)
    y = model(x).argmax(1)
    results = [
        Square("linf:0.5", queries=300, seed=0, incremental=flag).run(model, x, y)
        for flag in (True, False)
    ]
    assert len(patches) > 250  # all but the first, large windows went through the patch
    assert results[0].success.any()  # accepted proposals and dropped points along the way
    assert torch.equal(results[0].success, results[1].success)
    assert torch.allclose(results[0].x_adv, results[1].x_adv)
    assert results[0].forward_passes == results[1].forward_passes
