"""Core commands: list, train, evaluate, attack, demo. Each one parses, validates and calls the
library; no logic lives only here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from robustlab.attacks import ATTACKS, build_attack
from robustlab.certify import CERTIFIERS
from robustlab.cli.app import app
from robustlab.cli.options import check_compatible, load_data, parse_kv, parse_scoped_kv, split_list
from robustlab.corruptions import CORRUPTIONS
from robustlab.data import DATASETS, train_val_split
from robustlab.errors import RobustlabError
from robustlab.evaluation.suites import SUITES
from robustlab.io import atomic_write
from robustlab.losses import LOSSES
from robustlab.models import MODELS, build_model, load_model
from robustlab.threat import Threat
from robustlab.training.methods import METHODS

out = Console()

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Dataset directory (default: $ROBUSTLAB_DATA/<name>)."),
]
Download = Annotated[
    bool, typer.Option(help="Download the dataset from its official mirror (checked).")
]
Limit = Annotated[int | None, typer.Option(help="Use only the first N samples.", min=1)]
Device = Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")]
Seed = Annotated[int, typer.Option(help="Random seed.")]


def _registries() -> dict[str, object]:
    return {
        "models": MODELS,
        "datasets": DATASETS,
        "attacks": ATTACKS,
        "methods": METHODS,
        "losses": LOSSES,
        "suites": SUITES,
        "certifiers": CERTIFIERS,
        "corruptions": CORRUPTIONS,
    }


@app.command("list")
def list_cmd(
    kind: Annotated[str | None, typer.Argument(help="Only this registry, e.g. attacks.")] = None,
) -> None:
    """List the registered models, datasets, attacks, methods, losses, suites, certifiers and
    corruptions."""
    regs = _registries()
    if kind is not None and kind not in regs:
        raise RobustlabError(f"Unknown registry '{kind}'; known: {', '.join(regs)}.")
    for name, reg in regs.items():
        if kind is not None and name != kind:
            continue
        table = Table(title=name, show_header=False, title_justify="left")
        for item, doc in reg.describe().items():
            table.add_row(item, escape(doc))
        out.print(table)


@app.command()
def train(
    model: Annotated[str, typer.Option(help="Model name (see `robustlab list models`).")] = "mlp",
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "digits",
    method: Annotated[
        str, typer.Option(help="Training method (see `robustlab list methods`).")
    ] = "standard",
    method_arg: Annotated[
        list[str] | None, typer.Option("--method-arg", help="Method argument key=value (repeat).")
    ] = None,
    model_arg: Annotated[
        list[str] | None, typer.Option("--model-arg", help="Model argument key=value (repeat).")
    ] = None,
    loss: Annotated[
        str | None, typer.Option(help="Loss name for the method (see `list losses`).")
    ] = None,
    threat: Annotated[str | None, typer.Option(help="Training threat, e.g. linf:0.3.")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    lr: float = 0.1,
    optimizer: str = "sgd",
    schedule: str = "cosine",
    weight_decay: float = 5e-4,
    eps_ramp: Annotated[float, typer.Option(help="Epochs over which eps grows from 0.")] = 0.0,
    ramp: Annotated[
        list[str] | None,
        typer.Option(help="Named ramp name=start:length in epochs, e.g. beta=0:5 (repeat)."),
    ] = None,
    sam_rho: Annotated[
        float, typer.Option(min=0.0, help="SAM radius rho (0: plain optimizer).")
    ] = 0.0,
    asam: Annotated[bool, typer.Option(help="Adaptive SAM (ASAM) instead of SAM.")] = False,
    ema_decay: Annotated[
        float | None, typer.Option(help="Weight EMA decay, e.g. 0.999 (writes ema.pt).")
    ] = None,
    robust_val_every: Annotated[
        int, typer.Option(min=0, help="PGD on the validation split every k epochs; keeps best.pt.")
    ] = 0,
    robust_val_steps: Annotated[int, typer.Option(min=1, help="PGD steps of that check.")] = 10,
    patience: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many robust checks without gain.")
    ] = None,
    amp: Annotated[
        str | None, typer.Option(help="GPU mixed precision: bfloat16 or float16.")
    ] = None,
    label_noise: Annotated[
        str | None,
        typer.Option(
            help="Corrupt the training labels, e.g. symmetric:0.4, asymmetric:0.4, "
            "pairflip:0.45, instance:0.2 (the mask is saved in --out)."
        ),
    ] = None,
    val_fraction: Annotated[float, typer.Option(help="Held-out share of the training set.")] = 0.1,
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory.")] = Path("runs/train"),
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint in --out.")] = False,
    data_dir: DataDir = None,
    download: Download = False,
    limit: Limit = None,
    seed: Seed = 0,
    device: Device = "cpu",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a model with any registered method; writes checkpoint.pt and metrics.jsonl."""
    from robustlab.runtime import distributed
    from robustlab.training.trainer import TrainConfig, Trainer

    distributed.init_from_env(device)  # a no-op unless launched by torchrun with WORLD_SIZE > 1
    ramps = {}
    for item in ramp or []:
        name, sep, spec = item.partition("=")
        if not sep or not name.strip():
            raise RobustlabError(f"--ramp must be written name=start:length, got {item!r}.")
        ramps[name.strip()] = spec
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, schedule=schedule,
        weight_decay=weight_decay, eps_ramp_epochs=eps_ramp, ramps=ramps, sam_rho=sam_rho,
        sam_adaptive=asam, ema_decay=ema_decay, robust_val_every=robust_val_every,
        robust_val_steps=robust_val_steps, patience=patience, amp=amp is not None,
        amp_dtype=amp or "bfloat16", seed=seed, device=device,
    )  # fmt: skip
    method_kwargs = parse_kv(method_arg, "--method-arg")
    if loss is not None:
        method_kwargs["loss"] = loss
    if threat is not None:
        method_kwargs["threat"] = Threat.parse(threat)
    method_obj = METHODS.build(method, **method_kwargs)
    data = load_data(dataset, "train", data_dir, download, limit)
    train_set, val_set = (
        train_val_split(data, val_fraction, seed=seed) if val_fraction > 0 else (data, None)
    )
    if label_noise is not None:  # noisy training labels; validation keeps the clean ones
        train_set = with_label_noise(train_set, label_noise, seed, out_dir)
    torch.manual_seed(seed)
    net = build_model(
        model, input_shape=data.input_shape, num_classes=data.num_classes,
        **parse_kv(model_arg, "--model-arg"),
    )  # fmt: skip
    trainer = Trainer(
        net, method_obj, train_set, config, val=val_set, out_dir=out_dir, progress=progress
    )
    history = trainer.fit(resume=resume)
    if not distributed.is_main():
        return
    last = history[-1] if history else {}
    summary = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if isinstance(v, float))
    out.print(f"trained {model} with {method} for {len(history)} epochs: {summary}")
    out.print(f"checkpoint: {out_dir / 'checkpoint.pt'}")
    for extra in ("best.pt", "ema.pt"):
        if (out_dir / extra).exists():
            out.print(f"{extra.removesuffix('.pt')}: {out_dir / extra}")


def with_label_noise(data, spec: str, seed: int, out_dir: Path):
    """``data`` with noisy labels; the noise mask and summary are written to ``out_dir``."""
    import dataclasses
    import json

    from robustlab.data.noise import parse_noise_spec
    from robustlab.io import atomic_write_text

    noisy = parse_noise_spec(spec).apply(data.y, data.num_classes, seed, data.name, data.x)
    arrays = {"y_noisy": noisy.y_noisy.numpy(), "y_clean": noisy.y_clean.numpy(),
              "is_noisy": noisy.is_noisy.numpy()}  # fmt: skip
    atomic_write(out_dir / "label_noise.npz", lambda f: np.savez_compressed(f, **arrays))
    atomic_write_text(out_dir / "label_noise.json", json.dumps(noisy.summary(), indent=2) + "\n")
    out.print(
        f"label noise {spec}: {int(noisy.is_noisy.sum())} of {len(data)} training labels changed"
    )
    return dataclasses.replace(data, y=noisy.y_noisy)


def load_for_eval(checkpoint: Path, dataset: str, split: str, data_dir, download, limit, device):
    model, ckpt = load_model(checkpoint, device=device)
    data = load_data(dataset, split, data_dir, download, limit)
    check_compatible(ckpt.get("model_args", {}), data)
    return model, ckpt, data


def state_path_for(out_path: Path) -> Path:
    """The resumable evaluation state kept next to the result file."""
    return out_path.with_name(out_path.name + ".state.pt")


def print_evaluation(result) -> None:
    """The result table (time, points in/out, ensemble breakdown) and the attack-failure checks."""
    table = Table(title=f"{result.model} on {result.dataset} ({result.n} points)")
    for col, justify in (("attack", "left"), ("threat", "left"), ("accuracy %", "right"),
                         ("points in -> out", "right"), ("time s", "right")):  # fmt: skip
        table.add_column(col, justify=justify)
    table.add_row("clean", "-", f"{100 * result.clean_accuracy:.2f}", "", "")
    for e in result.attacks:
        io = f"{e.points_in} -> {e.points_out}" if e.attack != "worst-case" else ""
        table.add_row(e.attack, e.threat, f"{100 * e.robust_accuracy:.2f}", io,
                      f"{e.time_s:.1f}" if e.time_s else "")  # fmt: skip
        for row in e.breakdown:
            table.add_row(f"  └ {row['attack']}", "", f"{100 * row['points_out'] / e.n:.2f}",
                          f"{row['points_in']} -> {row['points_out']}", f"{row['time_s']:.1f}")  # fmt: skip
    out.print(table)
    certs = result.sections.get("certification", [])
    if certs:
        table = Table(title="certified accuracy")
        for col in ("method", "threat", "certified %", "time s"):
            table.add_column(col, justify="left" if col in ("method", "threat") else "right")
        for c in certs:
            table.add_row(c["method"], c["threat"], f"{100 * c['certified_accuracy']:.2f}",
                          f"{c['time_s']:.1f}")  # fmt: skip
        out.print(table)
    corr = result.sections.get("corruptions")
    if corr:
        line = f"corruptions: mean error {100 * corr['mean_error']:.2f} %"
        if corr.get("mce") is not None:
            line += f", mCE {100 * corr['mce']:.1f} %"
        if corr.get("relative_mce") is not None:
            line += f", relative mCE {100 * corr['relative_mce']:.1f} %"
        out.print(line)
    if result.checks:
        print_checks(result)


def print_checks(result, only_raised: bool = False) -> None:
    """The attack-failure checks; a raised flag with its meaning and what it found (the threat,
    the attack(s) and the points)."""
    raised = result.raised_checks()
    out.print(
        f"[bold red]attack-failure checks: {len(raised)} raised[/]"
        if raised
        else "[green]attack-failure checks: none raised[/]"
    )
    for c in raised if only_raised else result.checks:
        mark = "[bold red]FLAG[/]" if c["flag"] else "[green]ok[/]  "
        line = f"  {mark} {c['name']} (share {100 * c['share']:.1f} %)"
        out.print(line + (f": {escape(c['meaning'])}" if c["flag"] else ""), highlight=False)
        if c["flag"] and c.get("summary"):
            out.print(f"       found: {escape(c['summary'])}", highlight=False)


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="A robustlab checkpoint (.pt).")],
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "digits",
    split: Annotated[str, typer.Option(help="train or test.")] = "test",
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
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
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
    data_dir: DataDir = None,
    download: Download = False,
    limit: Limit = None,
    seed: Seed = 0,
    device: Device = "cpu",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Evaluate a checkpoint: clean and robust accuracy per attack and threat, with checks."""
    from robustlab.evaluation import evaluate as run_evaluation

    attack_names = split_list(attacks)
    attack_kwargs = parse_scoped_kv(attack_arg, "--attack-arg")
    if suite is not None:
        if attack_names:
            raise RobustlabError("give either --suite or --attacks, not both.")
        chosen = SUITES.get(suite)
        attack_names = list(chosen.attacks)
        attack_kwargs = {
            name: {**chosen.attack_kwargs.get(name, {}), **attack_kwargs.get(name, {})}
            for name in set(chosen.attack_kwargs) | set(attack_kwargs)
        }
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


@app.command()
def attack(
    checkpoint: Annotated[Path, typer.Option(help="A robustlab checkpoint (.pt).")],
    out_path: Annotated[
        Path, typer.Option("--out", help="Output .npz with x, x_adv, y, success, norms.")
    ],
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "digits",
    split: Annotated[str, typer.Option(help="train or test.")] = "test",
    name: Annotated[str, typer.Option("--attack", help="Attack name.")] = "pgd",
    threat: Annotated[str, typer.Option(help="Threat, e.g. linf:0.3.")] = "linf:0.3",
    attack_arg: Annotated[
        list[str] | None, typer.Option("--attack-arg", help="Attack argument key=value.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    data_dir: DataDir = None,
    download: Download = False,
    limit: Limit = None,
    seed: Seed = 0,
    device: Device = "cpu",
) -> None:
    """Run one attack on a dataset split and save the adversarial examples to .npz."""
    adv = build_attack(
        name, Threat.parse(threat), seed=seed, **parse_kv(attack_arg, "--attack-arg")
    )
    model, _, data = load_for_eval(checkpoint, dataset, split, data_dir, download, limit, device)
    parts = []
    for i in range(0, len(data), batch_size):
        xb, yb = data.x[i : i + batch_size].to(device), data.y[i : i + batch_size].to(device)
        parts.append(adv.run(model, xb, yb))
    cat = {
        key: torch.cat([getattr(p, key).detach().cpu() for p in parts]).numpy()
        for key in ("x_adv", "success", "clean_correct", "norms")
    }
    arrays = {"x": data.x.numpy(), "y": data.y.numpy(), **cat}
    atomic_write(out_path, lambda f: np.savez_compressed(f, **arrays))
    rate = float(cat["success"].mean())
    out.print(
        f"{name} at {threat}: robust accuracy {100 * (1 - rate):.2f}% on {len(data)} points; "
        f"saved to {out_path}"
    )


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs per model.")] = 20,
    seed: Seed = 0,
    device: Device = "cpu",
) -> None:
    """Train a standard and a PGD-AT CNN on digits, evaluate both, write results and a report."""
    from robustlab.demo import DEMO_ATTACKS_TEXT, run_demo

    res = run_demo(out_dir, epochs=epochs, seed=seed, device=device)
    results = res["results"]
    table = Table(
        title=f"robustlab demo: accuracy % on digits, worst case over {DEMO_ATTACKS_TEXT}"
    )
    table.add_column("threat")
    for r in results:
        table.add_column(r.model, justify="right")
    table.add_row("clean", *[f"{100 * r.clean_accuracy:.1f}" for r in results])
    worst = [
        {e.threat: e.robust_accuracy for e in r.attacks if e.attack == "worst-case"}
        for r in results
    ]
    for t in worst[0]:
        table.add_row(t, *[f"{100 * w[t]:.1f}" for w in worst])
    out.print(table)
    for r in results:  # a raised flag: what it means for this model and where it was found
        out.print(f"{r.model}: ", end="")
        print_checks(r, only_raised=True)
    out.print(f"results: {res['results_path']}")
    out.print(f"report:  {res['report_path']}")
