"""Every adversarial-training method on scikit-learn's digits: a small-budget sanity table.

One seed, an MLP (one hidden layer of 128), 15 epochs, batch 64, SGD lr 0.05 cosine, eps ramp over
2 epochs, training threat ``linf:0.1`` with 5 PGD steps (VAT: ``l2:0.5``), evaluated on the 360
digits test images with PGD-20 x 2 restarts at ``linf:0.1``. Train time is wall clock with one
thread. MTARD is left out (it needs trained teachers). Prints and writes JSON:

    .venv/bin/python bench/methods_digits.py --out bench/results/methods_digits.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from robustlab.attacks import PGD
from robustlab.data import load_dataset
from robustlab.io import atomic_write_json
from robustlab.models import build_model
from robustlab.provenance import provenance
from robustlab.training.methods import METHODS
from robustlab.training.trainer import TrainConfig, Trainer

DEFAULT = ("standard pgd-at trades mart score arow awp rwp done hr dafa sovr iat avmixup adr "
           "mutual-at fomo beta-at vat dial rotation").split()


def run(name: str) -> dict:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=train.input_shape, num_classes=10, hidden=(128,))
    kw = {} if name == "standard" else {"threat": "linf:0.1", "steps": 5}
    kw = {"threat": "l2:0.5"} if name == "vat" else kw
    cfg = TrainConfig(epochs=15, batch_size=64, lr=0.05, eps_ramp_epochs=2.0, seed=0)
    t0 = time.perf_counter()
    Trainer(model, METHODS.build(name, **kw), train, cfg, progress=False).fit()
    dt = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        clean = (model(test.x).argmax(1) == test.y).float().mean().item()
    r = PGD("linf:0.1", steps=20, restarts=2, seed=0).run(model, test.x, test.y)
    return {"method": name, "method_kwargs": kw, "clean": clean,
            "pgd20x2": float(r.robust_accuracy), "train_s": dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=DEFAULT)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.methods:
        rows.append(run(name))
        r = rows[-1]
        print(f"{name:10s} clean {r['clean']:.3f} pgd20x2 {r['pgd20x2']:.3f} "
              f"train_s {r['train_s']:.1f}", flush=True)
    out = {
        "benchmark": "methods_digits",
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "threads": 1,
        "results": rows,
        "provenance": provenance(seed=0, device="cpu", config={"methods": args.methods}),
    }
    print(json.dumps(out, indent=2))
    if args.out:
        atomic_write_json(args.out, out)


if __name__ == "__main__":
    main()
