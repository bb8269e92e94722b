"""``robustlab evaluate``: clean and robust accuracy of a checkpoint per attack and threat, with
the attack-failure checks, and optionally certification and corruptions (a thin shell over
:func:`robustlab.evaluation.evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from robustlab.attacks import ATTACKS
from robustlab.cli import options as opt
from robustlab.cli.app import app, out
from robustlab.cli.options import load_for_eval, parse_scoped_kv, split_list
from robustlab.cli.render import print_evaluation
from robustlab.errors import RobustlabError
from robustlab.evaluation import evaluate as run_evaluation
from robustlab.evaluation.suites import SUITES
from robustlab.threat import Threat


def state_path_for(out_path: Path) -> Path:
    """The resumable evaluation state kept next to the result file."""
    return out_path.with_name(out_path.name + ".state.pt")


@app.command()
def evaluate(
    checkpoint: opt.Checkpoint,
    dataset: opt.DatasetName = "digits",
    split: opt.Split = "test",
    attacks: Annotated[
        list[str] | None,
        typer.Option("--attacks", help="Attack names, comma-separated (e.g. autoattack)."),
    ] = None,
    suite: Annotated[
        str | None,
        typer.Option(help="A protocol instead of --attacks: " + ", ".join(SUITES.names()) + "."),
    ] = None,
    threat: Annotated[
        list[str] | None, typer.Option("--threat", help="Threats, e.g. linf:0.3 (repeat or comma).")
    ] = None,
    attack_arg: Annotated[
        list[str] | None, typer.Option("--attack-arg", help="Attack argument name.key=value.")
    ] = None,
    batch_size: opt.BatchSize = 256,
    out_path: Annotated[
        Path | None,
        typer.Option("--out", help="Write the result JSON here (progress is kept next to it)."),
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write an HTML report here.")] = None,
    checks: Annotated[bool, typer.Option(help="Run the attack-failure checks.")] = True,
    probe_size: Annotated[
        int, typer.Option(min=1, help="Clean-correct points probed by the checks.")
    ] = 100,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted evaluation from the state next to --out.")
    ] = True,
    certify: Annotated[
        list[str] | None,
        typer.Option(
            "--certify",
            help="Certifiers run at each threat: ibp, crown-ibp, crown, "
            "smoothing, lipschitz (comma-separated).",
        ),
    ] = None,
    certify_arg: Annotated[
        list[str] | None, typer.Option("--certify-arg", help="Certifier option name.key=value.")
    ] = None,
    corruptions: Annotated[
        str | None,
        typer.Option(help="Corruption set or names to evaluate, e.g. mnist-c or imagenet-c."),
    ] = None,
    severity: Annotated[
        list[str] | None, typer.Option("--severity", help="Corruption severities (default 1-5).")
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(help="A baseline model's result JSON for CE / mCE / relative mCE."),
    ] = None,
    data_dir: opt.DataDir = None,
    download: opt.Download = False,
    limit: opt.Limit = None,
    seed: opt.Seed = 0,
    device: opt.Device = "cpu",
    progress: opt.Progress = True,
) -> None:
    """Evaluate a checkpoint: clean and robust accuracy per attack and threat, with checks."""
    attack_names = split_list(attacks)
    attack_kwargs = parse_scoped_kv(attack_arg, "--attack-arg")
    if suite is not None:
        if attack_names:
            raise RobustlabError("give either --suite or --attacks, not both.")
        attack_names, attack_kwargs = SUITES.get(suite).attack_plan(attack_kwargs)
    attack_names = attack_names or ["pgd"]
    threats = [Threat.parse(t) for t in split_list(threat)] or [Threat.parse("linf:0.3")]
    for name in attack_names:
        ATTACKS.get(name)
    model, _, data = load_for_eval(checkpoint, dataset, split, data_dir, download, limit, device)
    state = state_path_for(out_path) if out_path is not None else None
    if state is not None and not resume and state.exists():
        state.unlink()
    corruption_kwargs: dict = {}
    if severity:
        corruption_kwargs["severities"] = tuple(int(s) for s in split_list(severity))
    if baseline is not None:
        corruption_kwargs["baseline"] = baseline
    result = run_evaluation(
        model, data, attack_names, threats, attack_kwargs=attack_kwargs,
        batch_size=batch_size, device=device, seed=seed, progress=progress, checks=checks,
        probe_size=probe_size, state_path=state, certify=split_list(certify),
        certify_kwargs=parse_scoped_kv(certify_arg, "--certify-arg"), corruptions=corruptions,
        corruption_kwargs=corruption_kwargs,
    )  # fmt: skip
    if result.provenance.get("config", {}).get("resumed"):
        out.print(f"resumed from {state}")
    print_evaluation(result)
    if out_path is not None:
        result.save(out_path)
        if state is not None and state.exists():
            state.unlink()
        out.print(f"results: {out_path}")
    if report is not None:
        from robustlab.report import write_report

        write_report([result], report)
        out.print(f"report: {report}")
