"""Mutation testing of one robustlab package at a time, with only the tests that concern it.

    .venv/bin/python tools/mutation.py certify            # or: attacks, training/methods, losses
    make mutation PKG=certify
    .venv/bin/python tools/mutation.py certify --resume   # continue an interrupted run
    .venv/bin/python tools/mutation.py certify --summarize  # summary of a stopped run so far
    .venv/bin/python tools/mutation.py certify --retest-survivors  # after adding tests
    .venv/bin/python tools/mutation.py attacks --sample 400    # a uniform random sample of mutants

mutmut (https://github.com/boxed/mutmut, 3.x) changes the source one small edit at a time (an
operator, a constant, a dropped argument, ...) and runs the tests that call the changed function; a
mutant is *killed* when a test fails. For each package this script

1. copies ``src/``, ``tests/`` and ``pyproject.toml`` into ``runs/mutation/<package>/`` (the work
   tree is never touched, so mutation runs and editing can go on side by side),
2. appends a ``[tool.mutmut]`` section that mutates only that package and selects its tests,
3. runs ``mutmut run`` there, and
4. writes ``docs/quality/mutation-<package>.json``: the counts per file, the score
   ``(killed + timeout) / tested`` (mutants not yet tested by a stopped run are counted apart),
   the command, the mutmut version, the git revision, and every
   survivor with its diff.

The bars (issue 15): at least 90 % killed in ``certify/`` and ``attacks/``, 80 % elsewhere.
Survivors that are equivalent mutants (no test can tell them apart from the original) are listed
with one line why in ``docs/quality/mutation.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: the tests that exercise each package (globs relative to the repository root)
PACKAGES: dict[str, list[str]] = {
    "attacks": ["tests/test_attacks*.py", "tests/test_kernels.py"],
    "certify": ["tests/test_certify*.py"],
    "training/methods": [
        "tests/test_methods*.py", "tests/test_noisy_training.py", "tests/test_certify_training.py",
        "tests/test_trainer.py",
        "tests/test_schedules.py",
        "tests/test_certify_nets.py",  # test_certify_training.py imports its random nets
    ],  # fmt: skip
    "losses": ["tests/test_losses*.py", "tests/test_methods_losses.py"],
}

#: the share of mutants that must be killed
BARS = {"attacks": 0.90, "certify": 0.90, "training/methods": 0.80, "losses": 0.80}


def _tests(package: str) -> list[str]:
    found = sorted({str(p.relative_to(ROOT)) for g in PACKAGES[package] for p in ROOT.glob(g)})
    if not found:
        raise SystemExit(f"No tests match {PACKAGES[package]} for package '{package}'.")
    return found


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def _copy_tests(package: str, target: Path) -> None:
    """The package's tests (and the shared fixtures, helpers and data) into ``target``: mutmut
    selects the folder as a whole, so its configuration stays the same when tests are added."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(
        ROOT / "tests",
        target,
        ignore=lambda folder, names: [
            n for n in names
            if n in ("__pycache__",) or n.endswith(".pyc")
            or (Path(folder) == ROOT / "tests" and n.startswith("test_")
                and f"tests/{n}" not in _tests(package))
        ],
    )  # fmt: skip


def prepare(package: str, work: Path) -> None:
    """A fresh copy of the sources, docs and tests in ``work`` with mutmut configured for
    ``package``."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("src", "docs"):  # some tests read the docs (documented defaults)
        shutil.copytree(ROOT / name, work / name, ignore=ignore)
    _copy_tests(package, work / "tests")
    config = (ROOT / "pyproject.toml").read_text()
    if "[tool.mutmut]" in config:
        raise SystemExit("pyproject.toml already has a [tool.mutmut] section; this script writes it.")
    config += (
        "\n[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        f'only_mutate = ["src/robustlab/{package}/*"]\n'
        'also_copy = ["docs"]\n'
        'pytest_add_cli_args_test_selection = ["tests"]\n'
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q"]\n'
    )
    (work / "pyproject.toml").write_text(config)


def generate(work: Path) -> list[str]:
    """Write the mutants of the run in ``work`` (mutmut's own generation step, without testing
    any) and return all their names."""
    steps = (
        "import os; from mutmut.__main__ import *; set_mutant_under_test('mutant_generation'); "
        "os.makedirs('mutants', exist_ok=True); copy_src_dir(); copy_also_copy_files(); "
        "setup_source_paths(); store_lines_covered_by_tests(); create_mutants(2)"
    )
    done = subprocess.run(
        [sys.executable, "-c", steps], cwd=work, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"mutmut could not generate the mutants in {work}:\n{done.stderr[-2000:]}")
    return sorted(
        name
        for meta in (work / "mutants" / "src").rglob("*.py.meta")
        for name in json.loads(meta.read_text())["exit_code_by_key"]
    )


def wilson_interval(killed: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of a kill rate measured on ``n`` mutants drawn at random."""
    if n == 0:
        return (0.0, 1.0)
    p = killed / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(centre - half, 4), round(centre + half, 4))


def survivor_names(work: Path, skip: list[str] = ()) -> list[str]:
    """The mutants of the run in ``work`` that no test killed (survived or had no test), except
    those of the source files ``skip`` (paths relative to the package)."""
    from mutmut.stats import status_by_exit_code

    names = []
    for meta in sorted((work / "mutants" / "src").rglob("*.py.meta")):
        if any(str(meta).endswith(f"/{f}.meta") for f in skip):
            continue
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if status_by_exit_code[code] in ("survived", "no tests"):
                names.append(name)
    return names


def changed_sources(package: str, work: Path) -> list[str]:
    """The package's source files (relative to it) that differ from the copy the run mutated."""
    here, there = ROOT / "src" / "robustlab" / package, work / "src" / "robustlab" / package
    return [
        str(p.relative_to(here))
        for p in sorted(here.rglob("*.py"))
        if not (there / p.relative_to(here)).is_file()
        or (there / p.relative_to(here)).read_bytes() != p.read_bytes()
    ]


def refresh_tests(package: str, work: Path) -> None:
    """Put the current tests into the run in ``work`` (its mutants stay those of the sources it
    copied; mutmut keeps the verdicts, collects the new tests' coverage, and reruns the mutants
    it is told to)."""
    for target in (work / "tests", work / "mutants" / "tests"):
        _copy_tests(package, target)


def _mutmut(work: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [str(exe), *args], cwd=work, env=env, capture_output=True, text=True, check=False
    )


def summarize(package: str, work: Path, seconds: float | None) -> dict:
    """Counts per file and the survivors' diffs, from mutmut's per-file ``.meta`` records; for a
    sampled run (``sample.json`` in ``work``) also the sample and its 95 % interval."""
    from mutmut import __version__ as mutmut_version
    from mutmut.stats import status_by_exit_code

    per_file: dict[str, Counter] = {}
    survivors = []
    for meta in sorted((work / "mutants" / "src").rglob("*.py.meta")):
        source = str(meta.relative_to(work / "mutants"))[: -len(".meta")]
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        counts = per_file.setdefault(source, Counter())
        for name, code in codes.items():
            status = status_by_exit_code[code]
            counts[status] += 1
            if status in ("survived", "no tests", "suspicious"):
                survivors.append({"mutant": name, "status": status, "diff": _diff(work, name, source)})
    total = Counter()
    for counts in per_file.values():
        total.update(counts)
    untested = total["not checked"]
    n = sum(total.values()) - untested
    killed = total["killed"] + total["timeout"]
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        rev = None
    sample_file = work / "sample.json"
    sample = json.loads(sample_file.read_text()) if sample_file.is_file() else None
    if sample is not None:
        sample["interval_95"] = wilson_interval(killed, n)
    return {
        "package": f"robustlab/{package}",
        "command": " ".join([".venv/bin/python tools/mutation.py", *sys.argv[1:]]),
        "mutmut_version": mutmut_version,
        "git_revision": rev,
        "tests": _tests(package),
        "seconds": None if seconds is None else round(seconds, 1),
        "mutants": n,
        "killed": killed,
        "not_tested": untested,  # an interrupted run (see --summarize): the score is over the rest
        "score": round(killed / n, 4) if n else None,
        # a uniform random sample of the mutants (--sample): size, seed, population, interval
        "sample": sample,
        "bar": BARS[package],
        "totals": dict(total),
        "per_file": {f: dict(c) for f, c in per_file.items()},
        # files edited after the run copied them: their counts are of the copied version
        "changed_since_run": changed_sources(package, work),
        "survivors": survivors,
    }


def _diff(work: Path, name: str, source: str) -> str:
    """The mutant's diff against the original function (what ``mutmut show`` prints)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    here = Path.cwd()
    os.chdir(work)  # mutmut reads the mutated files relative to its work folder
    try:
        return get_diff_for_mutant(name, path=source)
    finally:
        os.chdir(here)


def _sample(package: str, work: Path, size: int, seed: int, resume: bool) -> list[str]:
    """The names of a seeded uniform sample of the package's mutants; on ``resume``, only those
    of the sample not yet tested."""
    from mutmut.stats import status_by_exit_code

    if not (resume and (work / "sample.json").is_file()):
        prepare(package, work)
    population = generate(work)
    names = sorted(random.Random(seed).sample(population, min(size, len(population))))
    _atomic_write(work / "sample.json", json.dumps(
        {"size": len(names), "seed": seed, "population": len(population)}
    ))  # fmt: skip
    if resume:
        tested = {
            name
            for meta in (work / "mutants" / "src").rglob("*.py.meta")
            for name, code in json.loads(meta.read_text())["exit_code_by_key"].items()
            if code is not None and status_by_exit_code[code] != "not checked"
        }
        names = [n for n in names if n not in tested]
    return names


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packages", nargs="*", default=list(PACKAGES), choices=list(PACKAGES))
    parser.add_argument("--children", type=int, default=os.cpu_count() or 2,
                        help="mutants tested in parallel (default: one per core)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "quality")
    parser.add_argument("--summarize", action="store_true",
                        help="only write the summary of the run in the work folder (e.g. one that "
                             "was stopped); mutants not yet tested are counted apart")
    parser.add_argument("--retest-survivors", action="store_true",
                        help="run the current tests on the survivors of the run in the work "
                             "folder (survivors of source files changed since are not retested "
                             "and still count as survivors)")
    parser.add_argument("--sample", type=int, metavar="N",
                        help="test a uniform random sample of N mutants instead of all of them; "
                             "the summary gives the score's 95 %% interval")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in its work folder (mutants already "
                             "tested keep their result; the sources are not copied again)")
    args = parser.parse_args()
    for package in args.packages:
        work = ROOT / "runs" / "mutation" / package.replace("/", "-")
        if args.summarize:
            if not (work / "mutants").is_dir():
                raise SystemExit(f"No mutation run of {package} in {work}.")
            seconds = None
        else:
            names: list[str] = []
            if args.retest_survivors:
                if not (work / "mutants").is_dir():
                    raise SystemExit(f"No mutation run of {package} in {work} to retest.")
                stale = changed_sources(package, work)
                if stale:
                    print(f"[{package}] changed since the run, their survivors are not retested "
                          f"(they still count as survivors): {', '.join(stale)}", flush=True)
                refresh_tests(package, work)
                names = survivor_names(work, stale)
            elif args.sample:
                names = _sample(package, work, args.sample, args.seed, args.resume)
            elif not (args.resume and (work / "mutants").is_dir()):
                prepare(package, work)
            print(f"[{package}] mutating in {work} with tests {', '.join(_tests(package))}"
                  + (f" ({len(names)} survivors retested)" if args.retest_survivors else "")
                  + (f" ({len(names)} sampled mutants to test)" if args.sample else ""),
                  flush=True)
            start = time.perf_counter()
            run = _mutmut(work, "run", "--max-children", str(args.children), *names)
            seconds = time.perf_counter() - start
            (work / "mutmut-run.log").write_text(run.stdout + run.stderr)
            if run.returncode != 0:
                raise SystemExit(f"mutmut failed on {package} (exit {run.returncode}); "
                                 f"see {work / 'mutmut-run.log'}.")
        summary = summarize(package, work, seconds)
        name = "mutation-" + package.replace("/", "-") + ".json"
        _atomic_write(args.out / name, json.dumps(summary, indent=2) + "\n")
        print(
            f"[{package}] {summary['killed']}/{summary['mutants']} killed "
            f"({100 * (summary['score'] or 0):.1f} %, bar {100 * summary['bar']:.0f} %; "
            f"{summary['not_tested']} not tested) -> {args.out / name}",
            flush=True,
        )


if __name__ == "__main__":
    main()
