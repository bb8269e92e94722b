"""robustlab's AutoAttack vs the reference implementation (``pyautoattack`` from PyPI, Croce &
Hein's code) on the same MNIST points, models and eps, side by side in one run.

Run in the benchmark environment (the reference is installed only there)::

    .bench-venv/bin/python bench/autoattack_compare.py --n 500 --out bench/results/autoattack_compare.json

Models: bench/_models.py (a standard and a PGD-AT LeNet trained with robustlab's Trainer on an
MNIST subset, cached in runs/bench/). Both ensembles run the 'standard' version (APGD-CE, APGD-T,
FAB-T, Square 5,000 queries) at Linf eps 0.3 on the first ``--n`` test points, one batch, on the
CPU with ``--threads`` threads; each side is timed around the whole call, wall clock
(``time.perf_counter``) and process CPU time (``time.process_time``, robust to other load).
Robust accuracy is recomputed here from the returned points (misclassified and inside the ball).
``--no-fast-kernels`` runs robustlab without the CPU kernels of ``robustlab.runtime.kernels`` (to see how
much of the difference they make); ``--skip-reference`` leaves the reference out. ``--repeat k``
runs both sides k times in alternating order (robustlab first, then the reference first, ...) so
that a change in the machine's load hits both; times are the best of the k runs, with every run
listed (the per-attack breakdown is the first run's), and the robust points must be the same in
every run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import get_model, mnist  # noqa: E402

from robustlab.attacks import AutoAttack  # noqa: E402
from robustlab.io import atomic_write_json  # noqa: E402
from robustlab.runtime.kernels import set_fast_kernels  # noqa: E402
from robustlab.threat import Threat  # noqa: E402


def robust_mask(model, x, x_adv, y, threat: Threat) -> torch.Tensor:
    with torch.no_grad():
        correct = model(x_adv).argmax(1) == y
    return correct | ~threat.contains(x_adv, x)  # a point outside the ball does not count


def run_reference(model, x, y, eps: float, seed: int) -> tuple[torch.Tensor, float, float]:
    from pyautoattack import AutoAttack as ReferenceAutoAttack

    adversary = ReferenceAutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed)
    t0, c0 = time.perf_counter(), time.process_time()
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=len(x))
    return x_adv.detach(), time.perf_counter() - t0, time.process_time() - c0


def run_robustlab(model, x, y, eps: float, seed: int):
    attack = AutoAttack(Threat("linf", eps), version="standard", seed=seed)
    t0, c0 = time.perf_counter(), time.process_time()
    result = attack.run(model, x, y)
    return result, time.perf_counter() - t0, time.process_time() - c0


def summarize(runs, robust, clean) -> tuple[torch.Tensor, float, float, dict]:
    """One side's repeated runs ``(x_adv, wall, cpu)``: the first run's robust mask, the best wall
    and CPU times, and the JSON entry; ``robust(x_adv)`` marks the points the attack left robust,
    ``clean`` the correctly classified ones."""
    masks = [robust(x_adv) & clean for x_adv, _, _ in runs]
    wall, cpu = min(t for _, t, _ in runs), min(c for _, _, c in runs)
    return masks[0], wall, cpu, {
        "robust_accuracy": float(masks[0].float().mean()),
        "time_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "times_s": [round(t, 2) for _, t, _ in runs],
        "same_points_every_run": all(torch.equal(m, masks[0]) for m in masks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="test points (the first n)")
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="standard,pgd-at")
    parser.add_argument("--out", default="bench/results/autoattack_compare.json")
    parser.add_argument("--no-fast-kernels", action="store_true")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="runs per side, alternating order")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    torch.set_num_threads(args.threads)
    set_fast_kernels(not args.no_fast_kernels)
    test = mnist("test", args.n)
    x, y = test.x, test.y
    threat = Threat("linf", args.eps)
    rows = []
    for kind in args.models.split(","):
        model = get_model(kind, verbose=False)
        with torch.no_grad():
            clean = model(x).argmax(1) == y
        ours_runs, ref_runs = [], []
        for r in range(args.repeat):
            sides = ("robustlab", "reference") if r % 2 == 0 else ("reference", "robustlab")
            for side in sides:
                if side == "robustlab":
                    ours_runs.append(run_robustlab(model, x, y, args.eps, args.seed))
                elif not args.skip_reference:
                    ref_runs.append(run_reference(model, x, y, args.eps, args.seed))
        robust = partial(robust_mask, model, x, y=y, threat=threat)
        attacks = ours_runs[0][0].extras["attacks"]
        rob_ours, t_ours, cpu_ours, ours = summarize(
            [(r.x_adv, t, c) for r, t, c in ours_runs], robust, clean
        )
        row = {
            "model": f"mnist-lenet-{kind}",
            "n": len(x),
            "threat": str(threat),
            "clean_accuracy": float(clean.float().mean()),
            "robustlab": ours | {"fast_kernels": not args.no_fast_kernels, "attacks": attacks},
        }
        if not args.skip_reference:
            rob_ref, t_ref, cpu_ref, ref = summarize(ref_runs, robust, clean)
            row |= {
                "reference": ref,
                "points_robust_only_for_robustlab": int((rob_ours & ~rob_ref).sum()),
                "points_robust_only_for_reference": int((rob_ref & ~rob_ours).sum()),
                "time_ratio": round(t_ours / t_ref, 3),
                "cpu_ratio": round(cpu_ours / cpu_ref, 3),
                "robust_accuracy_not_higher": bool(rob_ours.float().mean() <= rob_ref.float().mean()),
                "at_most_half_time": bool(t_ours <= 0.5 * t_ref),
            }
        rows.append(row)
        summary = {k: v for k, v in row["robustlab"].items() if k != "attacks"}
        print(json.dumps({**row, "robustlab": summary}), flush=True)
    out = {
        "benchmark": "autoattack_compare",
        "command": " ".join([".bench-venv/bin/python", *sys.argv]),
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "results": rows,
    }
    atomic_write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
