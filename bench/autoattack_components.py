"""Per-attack CPU time of robustlab vs the reference AutoAttack (``pyautoattack``): each of APGD-T,
FAB-T and Square alone, with the 'standard' budgets, on the same points of the PGD-AT MNIST model.

    .bench-venv/bin/python bench/autoattack_components.py --n 40 \
        --out bench/results/autoattack_components_pgd-at.json

Timed with ``time.process_time`` (process CPU time, robust to other jobs on the machine). Square is
also timed on the whole model per query (``incremental=False``), to show what its incremental
forward passes save.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import get_model, mnist  # noqa: E402

from robustlab.attacks import AutoAttack, Square  # noqa: E402
from robustlab.io import atomic_write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--model", default="pgd-at")
    parser.add_argument("--out", default="bench/results/autoattack_components_pgd-at.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from pyautoattack import AutoAttack as ReferenceAutoAttack

    model = get_model(args.model, verbose=False)
    test = mnist("test", args.n)
    x, y = test.x, test.y
    out = {}
    for comp in ("apgd-t", "fab-t", "square"):
        c0 = time.process_time()
        ours = AutoAttack(f"linf:{args.eps}", version="custom", attacks=[comp], seed=0).run(model, x, y)
        cpu_ours = time.process_time() - c0
        ref = ReferenceAutoAttack(model, norm="Linf", eps=args.eps, version="standard", seed=0)
        ref.attacks_to_run = [comp]  # the standard budgets, this attack alone
        c0 = time.process_time()
        x_ref, _ = ref.run_standard_evaluation(x, y, batch_size=len(x))
        cpu_ref = time.process_time() - c0
        with torch.no_grad():
            rob_ref = float((model(x_ref).argmax(1) == y).float().mean())
        out[comp] = {
            "ours_cpu_s": round(cpu_ours, 1),
            "ref_cpu_s": round(cpu_ref, 1),
            "ours_robust_accuracy": ours.robust_accuracy,
            "ref_robust_accuracy": rob_ref,
        }
        if comp == "square":
            c0 = time.process_time()
            whole = Square(f"linf:{args.eps}", queries=5000, seed=0, incremental=False).run(model, x, y)
            out[comp]["ours_whole_model_cpu_s"] = round(time.process_time() - c0, 1)
            out[comp]["ours_whole_model_robust_accuracy"] = whole.robust_accuracy
        print(comp, out[comp], flush=True)
    atomic_write_json(args.out, {"model": args.model, "n": args.n, "eps": args.eps, "results": out})


if __name__ == "__main__":
    main()
