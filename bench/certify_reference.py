"""Reference certified-training and certification runs on real MNIST with CPU-sized budgets.

``--part ibp``: IBP training (Gowal et al. 2018) of ``cnn-small`` at Linf eps 0.1 (train eps
0.11, kappa 1 -> 0.5 over the eps ramp), then IBP-, CROWN-IBP- and CROWN-verified accuracy on the
MNIST test set next to the published figures (97.08 % IBP-verified for the medium model trained
at eps 0.2; 97.75 % CROWN-IBP large). The checkpoint is kept for ``bench/certify_speed.py``.

``--part smoothing``: Gaussian-noise training (sigma 0.25) of ``lenet`` and CERTIFY (Cohen et al.
2019) on the first ``--n-test`` test images, certified accuracy at L2 radii 0 / 0.25 / 0.5 / 0.75
next to 99.25 / 98.45 / 96.75 / 93.12 % (N = 100,000, alpha 0.001). Cohen et al. report CIFAR-10
and ImageNet only; these MNIST figures are Cohen et al.'s training recipe as run by Jeong & Shin
2020 (their "Gaussian" baseline), the mean over the five per-image CERTIFY logs they published.

Prints JSON (and writes it with --out) with the budget and wall times.

    .venv/bin/python bench/certify_reference.py --part ibp --out bench/results/certify_reference_ibp.json
    .venv/bin/python bench/certify_reference.py --part smoothing \
        --out bench/results/certify_reference_smoothing.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from robustlab.certify import certify
from robustlab.data import load_dataset
from robustlab.io import atomic_write_json
from robustlab.models import build_model, load_model, make_checkpoint, save_checkpoint
from robustlab.training.methods import METHODS
from robustlab.training.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("ROBUSTLAB_MNIST", ROOT.parent / "shared" / "data" / "mnist"))
RUNS = ROOT / "runs" / "certify"
IBP_CHECKPOINT = RUNS / "mnist-cnn-small-ibp.pt"

PAPERS = {
    "ibp": {
        "paper": "Gowal et al. 2018 (IBP); Zhang et al. 2020 (CROWN-IBP)",
        "figures": {"IBP medium, verified at eps 0.1 (train eps 0.2)": 97.08,
                    "CROWN-IBP large, verified at eps 0.1": 97.75},
        "budget": "full MNIST, batch 100, Adam 1e-3, ~100 epochs (60k steps), 2k warm-up steps, "
                  "10k ramp steps; the medium/large models",
    },
    "smoothing": {
        "paper": "Jeong & Shin 2020 (NeurIPS), 'Gaussian' baseline = the training of Cohen et al. "
                 "2019 (whose paper has no MNIST results), LeNet, sigma 0.25; mean over the five "
                 "per-image CERTIFY logs data/certify/mnist/cohen/noise_0.25_* of "
                 "github.com/jh-jeong/smoothing-consistency (commit bc2b1a7), recomputed by us",
        "figures": {"0": 99.25, "0.25": 98.45, "0.5": 96.75, "0.75": 93.12},
        "budget": "full MNIST, 90 epochs of SGD (lr 0.01, step 30) with Gaussian noise; all 10,000 "
                  "test images; N = 100,000, N0 = 100, alpha 0.001",
    },
}  # fmt: skip


def mnist(split: str, limit: int | None = None):
    return load_dataset("mnist", split, data_dir=str(MNIST_DIR), limit=limit)


def train_model(arch: str, method, epochs: int, n_train: int | None, ramp: tuple[float, float],
                lr: float, path: Path) -> tuple[torch.nn.Module, list[dict], float]:
    torch.manual_seed(0)
    model = build_model(arch, (1, 28, 28), 10)
    config = TrainConfig(epochs=epochs, batch_size=100, optimizer="adam", lr=lr, weight_decay=0.0,
                         schedule="cosine", eps_ramp_start=ramp[0], eps_ramp_epochs=ramp[1],
                         seed=0)
    t0 = time.perf_counter()
    history = Trainer(model, method, mnist("train", n_train), config, val=mnist("test", 1000),
                      out_dir=path.parent / f"train-{path.stem}", progress=True).fit(resume=True)
    elapsed = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, make_checkpoint(model, train_config=config.__dict__))
    return model.eval(), history, elapsed


def part_ibp(args) -> dict:
    method = METHODS.build("ibp", threat="linf:0.1", tightness_samples=16)
    if IBP_CHECKPOINT.exists() and not args.retrain:
        model, _ = load_model(IBP_CHECKPOINT)
        history, train_s = None, None
    else:
        model, history, train_s = train_model("cnn-small", method, args.epochs, args.n_train,
                                              (args.ramp_start, args.ramp_epochs), 1e-3,
                                              IBP_CHECKPOINT)
    test = mnist("test", args.n_test)
    rows = {}
    subsets = [("all", test)]
    if args.n_crown is not None and args.n_crown < len(test):
        subsets.append((f"first {args.n_crown}", test.head(args.n_crown)))
    for label, data in subsets:
        for name in ("ibp", "crown-ibp", "crown"):
            if name == "crown" and label == "all" and len(subsets) > 1:
                continue  # full CROWN only on the subset
            res = certify(model, data, name, "linf:0.1", batch_size=256, progress=True)
            rows.setdefault(label, {})[name] = {
                "n": res.n, "clean_accuracy": 100 * res.clean_accuracy,
                "verified_accuracy": 100 * res.certified_accuracy,
                "mean_lower_bound": res.summary["mean_lower_bound"], "time_s": res.time_s,
            }
    return {
        "part": "ibp", "model": "cnn-small", "threat": "linf:0.1", "train_threat": "linf:0.11",
        "ours": rows,
        "budget": f"{args.n_train or 60000} MNIST training images, {args.epochs} epochs of batch "
                  f"100 (Adam 1e-3, cosine), clean for {args.ramp_start} epochs, eps ramp over "
                  f"{args.ramp_epochs} epochs, kappa 1 -> 0.5; cnn-small",
        "train_time_s": train_s,
        "last_epoch": history[-1] if history else None,
        "papers": PAPERS["ibp"],
    }  # fmt: skip


def part_smoothing(args) -> dict:
    path = RUNS / "mnist-lenet-gaussian-0.25.pt"
    if path.exists() and not args.retrain:
        model, _ = load_model(path)
        history, train_s = None, None
    else:
        model, history, train_s = train_model("lenet", METHODS.build("gaussian-noise", sigma=0.25),
                                              args.epochs, args.n_train, (0.0, 0.0), 1e-3, path)
    test = mnist("test", args.n_test)
    res = certify(model, test, "smoothing", "l2:0.5", sigma=0.25, n0=100, n=args.n_noise,
                  alpha=0.001, noise_batch=4000, batch_size=args.n_test, progress=True, seed=0)
    return {
        "part": "smoothing", "model": "lenet", "sigma": 0.25, "n_test": res.n,
        "ours": {"certified_accuracy_at": {r: 100 * v for r, v in
                                           res.summary["certified_accuracy_at"].items()},
                 "clean_accuracy_base": 100 * res.clean_accuracy,
                 "abstain_rate": 100 * res.summary["abstain_rate"],
                 "average_certified_radius": res.summary["average_certified_radius"],
                 "certify_time_s": res.time_s},
        "budget": f"{args.n_train or 60000} MNIST training images, {args.epochs} epochs (Adam 1e-3, "
                  f"cosine, Gaussian noise sigma 0.25); CERTIFY with N = {args.n_noise}, N0 = 100, "
                  f"alpha 0.001 on the first {res.n} test images",
        "train_time_s": train_s,
        "last_epoch": history[-1] if history else None,
        "papers": PAPERS["smoothing"],
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("ibp", "smoothing"), required=True)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--n-train", type=int, default=None, help="training images (default: all)")
    p.add_argument("--ramp-start", type=float, default=0.5)
    p.add_argument("--ramp-epochs", type=float, default=2.5)
    p.add_argument("--n-test", type=int, default=None, help="test images (default: all)")
    p.add_argument("--n-crown", type=int, default=None, help="test images for full CROWN")
    p.add_argument("--n-noise", type=int, default=100_000, help="smoothing: N")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--retrain", action="store_true", help="train even if a checkpoint exists")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = part_ibp(args) if args.part == "ibp" else part_smoothing(args)
    result["total_time_s"] = time.perf_counter() - t0
    result["threads"] = args.threads
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if args.out:
        atomic_write_json(args.out, json.loads(text))


if __name__ == "__main__":
    main()
