"""How long ``robustlab demo`` (what ``make demo`` runs after the install) takes: wall clock and
CPU time of the whole command, run as a child process with the machine's default threads.

    .venv/bin/python bench/demo_time.py --out bench/results/demo_time.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from robustlab.io import atomic_write_json
from robustlab.provenance import provenance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    exe = Path(sys.executable).with_name("robustlab")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(exe), "demo", "--out", str(Path(tmp) / "demo")]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = {
        "benchmark": "demo_time",
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "timed": "robustlab demo --out <temporary directory>",
        "wall_s": wall,
        "cpu_s": cpu,
        "cpus": os.cpu_count(),
        "load_average_1min_after": os.getloadavg()[0],
        "provenance": provenance(seed=0, device="cpu", config={}),
    }
    print(json.dumps(out, indent=2))
    if args.out:
        atomic_write_json(args.out, out)


if __name__ == "__main__":
    main()
