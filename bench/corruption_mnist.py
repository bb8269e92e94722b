"""Reference run: a small CNN trained on real MNIST, evaluated on robustlab's MNIST-C.

Budget (CPU, shared cores): the first 10,000 training images, 2 epochs of Adam, then the first
2,000 test images under the 15 MNIST-C corruptions at the benchmark severities and at 1-5.
Prints the per-corruption error table (markdown) and writes the JSON results with ``--out``.

    .venv/bin/python bench/corruption_mnist.py --data-dir ../shared/data/mnist --out runs/mnist_c

The figures in docs/corruptions.md come from ``--parts benchmark --out bench/results/mnist_c``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from robustlab.data import load_dataset
from robustlab.evaluation import evaluate_corruptions


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default="../shared/data/mnist")
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("runs/mnist_c"))
    ap.add_argument("--parts", nargs="+", choices=("benchmark", "all"), default=["benchmark", "all"],
                    help="benchmark: the MNIST-C severities; all: severities 1-5 with 10-frame"
                         " flip sequences (slow: several minutes of corruption on 2,000 images)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train = load_dataset("mnist", "train", data_dir=args.data_dir, limit=args.train)
    test = load_dataset("mnist", "test", data_dir=args.data_dir, limit=args.test)
    model = cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(args.epochs):
        perm = torch.randperm(len(train.x))
        for i in range(0, len(perm), 128):
            idx = perm[i:i + 128]
            loss = nn.functional.cross_entropy(model(train.x[idx]), train.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    args.out.mkdir(parents=True, exist_ok=True)
    parts = {"benchmark": "benchmark", "all": (1, 2, 3, 4, 5)}
    for tag in args.parts:
        sev = parts[tag]
        res = evaluate_corruptions(model, test, "mnist-c", sev, progress=False,
                                   sequence_length=10 if tag == "all" else 0, model_name="cnn")
        res.save(args.out / f"mnist_c_{tag}.json")  # CorruptionResult JSON with provenance
        print(f"## {tag}: clean error {100 * (1 - res.clean_accuracy):.2f} %, mean error "
              f"{100 * res.mean_error:.2f} %")
        print(res.to_markdown())


if __name__ == "__main__":
    main()
