"""How the CLI shows results: the evaluation tables and the attack-failure checks."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from robustlab.cli.app import out
from robustlab.evaluation.results import EvaluationResult


def print_evaluation(result: EvaluationResult) -> None:
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


def print_checks(result: EvaluationResult, only_raised: bool = False) -> None:
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
