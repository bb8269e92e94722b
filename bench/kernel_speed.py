"""robustlab.runtime.kernels against PyTorch's default CPU kernels, side by side in one run.

    .venv/bin/python bench/kernel_speed.py --out bench/results/kernel_speed.json

Part 1, models: the time of one forward pass without gradients (Square's query, FAB's check) and of
one forward+backward to the input (a gradient attack's step) on a batch, with the rerouting of
``fast_kernels`` off and on, the input as given and channels-last (what attacks pass on the CPU).
Part 2, the rule: for first-layer shapes, the time of each input-gradient kernel (oneDNN's through
``convolution_backward``, the flipped convolution, col2im, depthwise), with the one
:func:`robustlab.runtime.kernels.input_gradient_kernel` picks.
Part 3, max pooling with gradients (forward and backward to the input): PyTorch's kernel against
oneDNN's, which ``fast_kernels`` uses.
Best of ``--repeats`` timings, one thread; the two sides of a comparison alternate call by call, so
that a change in the machine's load hits both.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from contextlib import nullcontext
from functools import partial

import torch
import torch.nn.functional as F

from robustlab.io import atomic_write_json
from robustlab.models import build_model
from robustlab.runtime import kernels
from robustlab.runtime.kernels import fast_kernels, input_gradient_kernel

MODELS = [("lenet", (1, 28, 28), 200), ("madry-cnn", (1, 28, 28), 100), ("smallcnn", (1, 28, 28), 100),
          ("cnn-small", (3, 32, 32), 100)]  # fmt: skip
FIRST_LAYERS = [(1, 6, 5, 28), (1, 32, 5, 28), (1, 32, 3, 28), (3, 16, 3, 32), (3, 64, 3, 32)]
#: the pooling inputs of lenet (batch 200) and smallcnn (batch 100): (batch, channels, size)
POOLINGS = [(200, 6, 28), (200, 16, 10), (100, 32, 24), (100, 64, 8)]


def best_ms(calls: dict, repeats: int) -> dict:
    """Best time in ms of each zero-argument call, the calls alternating in every repetition."""
    best = dict.fromkeys(calls, float("inf"))
    for fn in calls.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: round(t * 1000, 3) for name, t in best.items()}


def forward(model, x: torch.Tensor, fast: bool) -> None:
    """A forward pass without gradients (a Square query, FAB's check)."""
    with torch.no_grad(), fast_kernels() if fast else nullcontext():
        model(x)


def forward_backward(model, x: torch.Tensor, fast: bool) -> None:
    """A gradient attack's step: forward, then the gradient of a loss to the input."""
    x = x.detach().requires_grad_(True)
    with fast_kernels(weight_gradients=False) if fast else nullcontext():
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.autograd.grad(out.logsumexp(1).sum(), x)


def onednn_input_gradient(g, x, w, padding) -> torch.Tensor:
    """PyTorch's own kernel (what autograd runs without the rerouting)."""
    return torch.ops.aten.convolution_backward(
        g, x, w, None, [1, 1], list(padding), [1, 1], False, [0, 0], 1, [True, False, False]
    )[0]


def model_rows(repeats: int) -> list[dict]:
    rows = []
    for name, shape, n in MODELS:
        torch.manual_seed(0)
        model = build_model(name, shape, 10).eval()
        x = torch.rand(n, *shape)
        row = {"model": name, "batch": n}
        for step in (forward, forward_backward):
            times = best_ms(
                {fast: partial(step, model, x, fast) for fast in (False, True)}, repeats
            )
            for fast, ms in times.items():
                row[f"{step.__name__}_ms_{'fast' if fast else 'pytorch'}"] = ms
        row["forward_speedup"] = round(row["forward_ms_pytorch"] / row["forward_ms_fast"], 2)
        row["forward_backward_speedup"] = round(
            row["forward_backward_ms_pytorch"] / row["forward_backward_ms_fast"], 2
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def rule_rows(repeats: int, n: int = 100) -> list[dict]:
    rows = []
    for cin, cout, k, hw in FIRST_LAYERS:
        x = torch.rand(n, cin, hw, hw)
        w = torch.randn(cout, cin, k, k)
        p = (k // 2, k // 2)
        g = torch.randn_like(F.conv2d(x, w, padding=p))
        calls = {"onednn": partial(onednn_input_gradient, g, x, w, p)}
        for kname, fn in kernels._INPUT_GRADIENTS.items():
            calls[kname] = partial(fn, g, w, p, x.shape[-2:])
        times = best_ms(calls, repeats)
        row = {
            "layer": f"{cin}->{cout} k{k} {hw}x{hw}",
            "batch": n,
            "ms": times,
            "chosen": input_gradient_kernel(cin, cout) or "onednn",
            "fastest": min(times, key=times.get),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def pool_forward_backward(pool, x: torch.Tensor) -> None:
    x = x.detach().requires_grad_(True)
    out = pool(x)
    torch.autograd.grad(out, x, torch.ones_like(out))


def pooling_rows(repeats: int) -> list[dict]:
    rows = []
    for n, c, hw in POOLINGS:
        x = torch.rand(n, c, hw, hw).sub(0.5).relu()  # a ReLU's output: half zeros, many ties
        calls = {
            "pytorch": partial(pool_forward_backward, lambda z: F.max_pool2d(z, 2), x),
            "onednn": partial(
                pool_forward_backward, lambda z: kernels._onednn_max_pool2d(z, (2, 2)), x
            ),
        }
        times = best_ms(calls, repeats)
        row = {"input": f"{n}x{c}x{hw}x{hw}", "window": 2, "ms": times}
        row["speedup"] = round(times["pytorch"] / times["onednn"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="bench/results/kernel_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = {
        "benchmark": "kernel_speed",
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": 1,
        "models": model_rows(args.repeats),
        "first_layer_input_gradient": rule_rows(args.repeats),
        "max_pool_with_gradients": pooling_rows(args.repeats),
    }
    atomic_write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
