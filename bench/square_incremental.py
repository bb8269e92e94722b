"""Square's Linf queries: incremental forward passes against the whole model, side by side.

    .venv/bin/python bench/square_incremental.py --out bench/results/square_incremental.json

For each model, batch size and window side ``s``: the time of one query evaluated by the whole model
(a forward pass without gradients, through ``fast_kernels`` as attacks run it) and by
:class:`robustlab.attacks.incremental.IncrementalForward` (the first block recomputed on a patch,
the rest of the model as usual, then the accepted points recorded), with random windows of side
``s`` and random weights. Best of ``--repeats``, one thread, the two sides alternating call by call.
The incremental side always takes the patch path; the last column is what Square's rule picks
(``IncrementalForward.worth_it``).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

from robustlab.attacks.incremental import IncrementalForward
from robustlab.io import atomic_write_json
from robustlab.models import build_model
from robustlab.runtime.kernels import fast_kernels

MODELS = [("lenet", (1, 28, 28)), ("madry-cnn", (1, 28, 28)), ("smallcnn", (1, 28, 28)),
          ("cnn7", (3, 32, 32))]  # fmt: skip


def _predict(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), fast_kernels(x.device, weight_gradients=False):
        return module(x)


def time_queries(name: str, shape, batch: int, s: int, repeats: int, gen) -> dict:
    model = build_model(name, shape).eval()
    x = torch.rand(batch, *shape, generator=gen)
    inc = IncrementalForward.of(model, shape, _predict)
    picks = "incremental" if inc.worth_it(batch, (s, s)) else "whole"
    inc.min_block_macs = inc.min_macs_per_output = 0  # time the patch path whatever the rule says
    inc.reset(x)
    top = torch.randint(0, shape[1] - s + 1, (batch,), generator=gen)
    left = torch.randint(0, shape[2] - s + 1, (batch,), generator=gen)
    cand = x.clone()
    for i in range(batch):  # the window of each sample changed
        cand[i, :, top[i] : top[i] + s, left[i] : left[i] + s] = torch.rand(
            shape[0], s, s, generator=gen
        )
    accept = torch.rand(batch, generator=gen) < 0.1

    def whole():
        _predict(model, cand)

    def incremental():
        inc.query(cand, top, left, (s, s))
        inc.accept(accept)

    best = {"whole_ms": float("inf"), "incremental_ms": float("inf")}
    whole(), incremental()
    for _ in range(repeats):
        for key, fn in (("whole_ms", whole), ("incremental_ms", incremental)):
            t0 = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t0)
    row = {k: round(v * 1000, 3) for k, v in best.items()}
    row["speedup"] = round(row["whole_ms"] / row["incremental_ms"], 2)
    row["rule_picks"] = picks
    return {"model": name, "batch": batch, "window": s, **row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="8,16,32,64,128,256")
    parser.add_argument("--windows", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="bench/results/square_incremental.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name, shape in MODELS:
        for batch in (int(b) for b in args.batches.split(",")):
            for s in (int(w) for w in args.windows.split(",")):
                row = time_queries(name, shape, batch, s, args.repeats, gen)
                rows.append(row)
                print(row, flush=True)
    atomic_write_json(
        args.out,
        {
            "benchmark": "square_incremental",
            "command": " ".join(["python", *sys.argv]),
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "threads": 1,
            "results": rows,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
