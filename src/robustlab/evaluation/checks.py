"""Attack-failure checks (Pintor et al., NeurIPS 2022, "Indicators of attack failure"; Carlini et
al. 2019, "On evaluating adversarial robustness", Sec. 5): signs that an evaluation overestimates
robustness, attached to every evaluation result.

Each check has a flag, the share of points (or of the evaluation) it concerns, one sentence saying
what a raised flag means, and its findings: for each place it looked (a threat, an attack, a pair
of budgets), which attack(s) at which threat, how many points of how many, and their indices in the
evaluated dataset (the first ``MAX_INDICES``). ``summary`` puts the findings in words
(:mod:`robustlab.evaluation.findings`).

- ``zero-gradients``: the margin's input gradient is zero, NaN or infinite on some points;
- ``randomness``: two identical forward passes give different outputs (use EOT, version 'rand');
- ``unbounded-attack``: an attack with an unbounded budget does not reach ~100 % success;
- ``eps-monotonicity``: robust accuracy increases with eps (from the result, and a probe at eps/2);
- ``steps-monotonicity``: robust accuracy increases with the number of attack steps;
- ``black-box-beats-white-box``: Square breaks points that every gradient attack missed (the
  checks' own APGD probes and every white-box attack of the evaluation at the same threat);
- ``loss-not-increasing``: the attack objective does not increase along the iterations;
- ``certified-but-broken``: an attack broke a point that a certificate proved robust at the same
  threat: the bound is unsound or the attack left the threat model (a bug either way).

The probes run APGD on the margin loss (never saturated, unlike a float32 cross-entropy) and a short
Square attack on a subset of clean-correct points, at the largest evaluated eps of each norm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.attacks import APGD, Square
from robustlab.attacks.objectives import margin_objective
from robustlab.evaluation.findings import (
    THRESHOLDS,
    CheckResult,
    Finding,
    finding,
    make_check,
    missed_by,
    names_text,
)
from robustlab.evaluation.results import WORST_CASE
from robustlab.runtime.modes import eval_mode
from robustlab.threat import Threat

BLACK_BOX = frozenset({"square"})

def _apgd_label(steps: int) -> str:
    return f"apgd (margin loss, {steps} steps)"


# --------------------------------------------------------------------------- model probes
def check_gradients(
    model: nn.Module, x: Tensor, y: Tensor, index: Tensor | None = None
) -> CheckResult:
    """Share of points whose margin gradient ``grad_x (max_{j!=y} z_j - z_y)`` is all zero or not
    finite; ``index`` maps the rows of ``x`` to dataset indices."""
    with eval_mode(model), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(margin_objective(model(xg), y).sum(), xg)
    g = g.flatten(1)
    bad_value = ~torch.isfinite(g).all(1)
    zero = (g == 0).all(1)
    bad = bad_value | zero
    findings = []
    if bad.any():
        findings.append(finding(
            f"The input gradient of the margin max_{{j!=y}} z_j - z_y is zero ({int(zero.sum())}) "
            f"or not finite ({int(bad_value.sum())}) on {{points}}.",
            bad, len(x), index,
        ))  # fmt: skip
    return make_check(
        "zero-gradients", findings, zero=int(zero.sum()), not_finite=int(bad_value.sum()), n=len(x)
    )


def check_randomness(model: nn.Module, x: Tensor, rtol: float = 1e-5) -> CheckResult:
    """Share of points whose logits differ between two identical forward passes (eval mode); the
    rows of ``x`` are the dataset's first points."""
    with eval_mode(model), torch.no_grad():
        a, b = model(x), model(x)
    diff = ((a - b).abs() > rtol * (1 + a.abs())).any(1)
    findings = []
    if diff.any():
        findings.append(finding(
            "Two identical forward passes in eval mode gave different logits on {points}.",
            diff, len(x), None, source="model",
        ))  # fmt: skip
    return make_check("randomness", findings, n=len(x))


def unbounded_threat(norm: str, dim: int) -> Threat:
    """A threat whose ball covers the whole [0, 1] box."""
    return Threat(norm, {"linf": 1.0, "l2": math.sqrt(dim), "l1": float(dim)}[norm])


def monotonicity_share(robust_small: Tensor, robust_large: Tensor) -> tuple[float, float]:
    """(increase of robust accuracy from the smaller to the larger budget, clipped at 0; share of
    points robust at the larger budget but broken at the smaller one)."""
    inc = float(robust_large.float().mean() - robust_small.float().mean())
    return max(inc, 0.0), float((robust_large & ~robust_small).float().mean())


def eps_monotonicity_findings(
    curves: Mapping[str, Sequence[tuple[float, Tensor]]], norms: Mapping[str, str] | None = None
) -> list[Finding]:
    """One finding per consecutive pair of eps of the same attack where the robust accuracy
    increases; ``curves`` maps an attack label to [(eps, per-sample robust mask over the dataset)]
    and ``norms`` the label to its norm (for the wording)."""
    findings = []
    for label, points in curves.items():
        ordered = sorted(points, key=lambda p: p[0])
        norm = (norms or {}).get(label, "")
        for (e_small, small), (e_large, large) in zip(ordered, ordered[1:]):
            inc = monotonicity_share(small, large)[0]
            if inc > 0:
                findings.append(finding(
                    f"{label}: robust accuracy rises by {100 * inc:.1f} points from "
                    f"{norm}:{e_small:g} to {norm}:{e_large:g}; {{points}} are robust at "
                    f"{norm}:{e_large:g} but were broken at {norm}:{e_small:g}.",
                    large & ~small, len(large), None, share=inc, attack=label,
                    threat=f"{norm}:{e_large:g}", against=[f"{norm}:{e_small:g}"],
                    source="evaluation",
                ))  # fmt: skip
    return findings


def eps_monotonicity_from_curves(curves: Mapping[str, Sequence[tuple[float, Tensor]]]) -> float:
    """Largest increase of robust accuracy between consecutive eps of the same attack and norm;
    ``curves`` maps a label to [(eps, per-sample robust mask)]."""
    return max((f.share for f in eps_monotonicity_findings(curves)), default=0.0)


def black_box_mask(white_box_robust: Sequence[Tensor], black_box_robust: Tensor) -> Tensor:
    """Points broken by the black-box attack but robust to every white-box attack (none when
    there is no white-box attack)."""
    if not white_box_robust:
        return torch.zeros_like(black_box_robust)
    return torch.stack(list(white_box_robust)).all(0) & ~black_box_robust


def black_box_share(white_box_robust: Sequence[Tensor], black_box_robust: Tensor) -> float:
    """Share of points broken by the black-box attack but robust to every white-box attack."""
    return float(black_box_mask(white_box_robust, black_box_robust).float().mean())


def black_box_findings(
    robust: Mapping[tuple[str, Threat], Tensor],
    ensembles: Mapping[tuple[str, Threat], Sequence[Mapping[str, Any]]] | None = None,
) -> list[Finding]:
    """Per threat and black-box attack of the evaluation, the points it broke that every white-box
    attack at that threat missed (an ensemble that contains a black-box attack is not white-box);
    inside an ensemble, the points its black-box member broke after the members before it (a
    count: the ensemble does not record which points each member broke)."""
    ensembles = ensembles or {}
    findings = []
    white = white_box_masks(robust, ensembles)
    for (name, t), mask in robust.items():
        wb = white.get(t, {})
        if name in BLACK_BOX and wb:
            findings.append(finding(
                f"At {t}, {name} broke {{points}} that {missed_by(wb)}.",
                black_box_mask(list(wb.values()), mask), len(mask), None, threat=str(t),
                attack=name, against=list(wb), source="evaluation",
            ))  # fmt: skip
    for (name, t), rows in ensembles.items():
        n = max(1, len(robust.get((name, t), ())))
        for i, row in enumerate(rows):
            broke = row["points_in"] - row["points_out"]
            if row["attack"] in BLACK_BOX and broke > 0:
                before = [r["attack"] for r in rows[:i]]
                findings.append(Finding(
                    f"At {t}, inside {name}, {row['attack']} broke {broke} of {n} points that "
                    f"{names_text(before) if before else 'no earlier member'} had left robust "
                    "(the ensemble does not record which).",
                    broke / n, broke, n, [], threat=str(t), attack=f"{name}/{row['attack']}",
                    against=before, source="ensemble",
                ))  # fmt: skip
    return [f for f in findings if f.count > 0]


def white_box_masks(
    robust: Mapping[tuple[str, Threat], Tensor],
    ensembles: Mapping[tuple[str, Threat], Sequence[Mapping[str, Any]]] | None = None,
) -> dict[Threat, dict[str, Tensor]]:
    """The evaluation's white-box robust masks per threat: every attack but the black-box ones,
    the worst case, and ensembles with a black-box member."""
    ensembles = ensembles or {}
    out: dict[Threat, dict[str, Tensor]] = {}
    for (name, t), mask in robust.items():
        members = {row["attack"] for row in ensembles.get((name, t), ())}
        if name in BLACK_BOX or name == WORST_CASE or members & BLACK_BOX:
            continue
        out.setdefault(t, {})[name] = mask
    return out


def _probe(
    model: nn.Module, x: Tensor, y: Tensor, threat: Threat, steps: int, queries: int, seed: int
):
    """Robust masks (and the per-point loss gain) of the probe attacks at one threat."""
    dim = x[0].numel()
    # the short run goes first: a model that hardens with the number of queries shows up as
    # robust accuracy increasing with steps
    out = {
        "short": APGD(threat, steps=max(1, steps // 4), loss="margin", seed=seed)
        .run(model, x, y)
        .robust
    }
    main = APGD(threat, steps=steps, loss="margin", early_stop=False, seed=seed)
    main.record_trace = True
    res = main.run(model, x, y)
    out["eps"] = res.robust
    # the trace covers the points the run attacked: those it found clean-correct
    gain = torch.full((len(x),), float("inf"), device=x.device)
    attacked = res.clean_correct.nonzero().squeeze(1)
    trace = main.trace
    if trace is not None and trace.shape[1] == attacked.numel():
        gain[attacked] = (trace[-1] - trace[0]).to(gain.dtype)
    out["trace_gain"] = gain
    out["half"] = (
        APGD(threat.with_eps(threat.eps / 2), steps=steps, loss="margin", seed=seed)
        .run(model, x, y)
        .robust
    )
    big = unbounded_threat(threat.norm, dim)
    out["unbounded"] = APGD(big, steps=steps, loss="margin", seed=seed).run(model, x, y).robust
    out["unbounded_threat"] = big
    if threat.norm in ("linf", "l2") and queries > 0:
        out["square"] = Square(threat, queries=queries, seed=seed).run(model, x, y).robust
    return out


def _probe_findings(
    p: Mapping[str, Any],
    threat: Threat,
    idx: Tensor,
    steps: int,
    queries: int,
    white_eval: Mapping[str, Tensor],
) -> dict[str, list[Finding]]:
    """The findings of the probes at one threat; ``idx`` maps the probe points to dataset indices
    and ``white_eval`` holds the evaluation's white-box robust masks at ``threat`` on them."""
    n, t, short, half = len(idx), str(threat), max(1, steps // 4), threat.with_eps(threat.eps / 2)
    main = _apgd_label(steps)
    out: dict[str, list[Finding]] = {}
    out["unbounded-attack"] = [finding(
        f"At {p['unbounded_threat']} (a ball covering the whole [0, 1] box), {main} left {{points}} "
        "unbroken.", p["unbounded"], n, idx, threat=str(p["unbounded_threat"]), attack=main,
    )]  # fmt: skip
    inc = monotonicity_share(p["half"], p["eps"])[0]
    out["eps-monotonicity"] = [finding(
        f"{main}: robust accuracy rises by {100 * inc:.1f} points from {half} to {t}; {{points}} "
        f"are robust at {t} but were broken at {half}.", p["eps"] & ~p["half"], n, idx,
        share=inc, threat=t, attack=main, against=[str(half)],
    )] if inc > 0 else []  # fmt: skip
    inc = monotonicity_share(p["short"], p["eps"])[0]
    out["steps-monotonicity"] = [finding(
        f"At {t}, robust accuracy rises by {100 * inc:.1f} points from {short} to {steps} APGD "
        f"steps (margin loss); {{points}} resisted {steps} steps but were broken in {short}.",
        p["eps"] & ~p["short"], n, idx, share=inc, threat=t, attack=main,
        against=[_apgd_label(short)],
    )] if inc > 0 else []  # fmt: skip
    out["loss-not-increasing"] = [finding(
        f"At {t}, the objective of {main} did not increase on {{points}}.",
        p["trace_gain"] <= 1e-6, n, idx, threat=t, attack=main,
    )]  # fmt: skip
    out["black-box-beats-white-box"] = []
    if "square" in p:
        white = {main: p["eps"], _apgd_label(short): p["short"], **white_eval}
        square = f"square ({queries} queries)"
        out["black-box-beats-white-box"] = [finding(
            f"At {t}, {square} broke {{points}} that {missed_by(white)}.",
            black_box_mask(list(white.values()), p["square"]), n, idx, threat=t, attack=square,
            against=list(white),
        )]  # fmt: skip
    return {k: [f for f in v if f.count > 0] for k, v in out.items()}


def run_checks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threats: Sequence[Threat],
    *,
    robust: Mapping[tuple[str, Threat], Tensor] | None = None,
    breakdowns: Mapping[tuple[str, Threat], Sequence[Mapping[str, Any]]] | None = None,
    probe_size: int = 100,
    probe_steps: int = 25,
    probe_queries: int = 300,
    seed: int = 0,
) -> list[CheckResult]:
    """All checks for ``model`` on ``(x, y)``; ``robust`` holds the evaluation's per-sample robust
    masks over ``x`` per (attack, threat) and ``breakdowns`` the per-attack records of ensembles.
    Every finding names its points by their row in ``x``."""
    robust = robust or {}
    breakdowns = breakdowns or {}
    with eval_mode(model), torch.no_grad():
        correct = model(x).argmax(1) == y
    idx = correct.nonzero().squeeze(1)[:probe_size]
    xp, yp = x[idx], y[idx]
    checks = [check_gradients(model, xp, yp, idx) if len(idx) else make_check("zero-gradients")]
    checks.append(check_randomness(model, x[:probe_size]))

    per_norm: dict[str, Threat] = {}
    for t in threats:
        if t.eps > per_norm.get(t.norm, Threat(t.norm, 0)).eps:
            per_norm[t.norm] = t
    found: dict[str, list[Finding]] = {name: [] for name in THRESHOLDS}
    probes: dict[str, dict[str, Any]] = {}
    white = white_box_masks(robust, breakdowns)
    if len(idx):
        for threat in per_norm.values():
            p = _probe(model, xp, yp, threat, probe_steps, probe_queries, seed)
            white_eval = {name: m[idx] for name, m in white.get(threat, {}).items()}
            for name, fs in _probe_findings(
                p, threat, idx, probe_steps, probe_queries, white_eval
            ).items():
                found[name] += fs
            probes[str(threat)] = {
                "probe_points": len(idx),
                "robust_half_eps": float(p["half"].float().mean()),
                "robust_eps": float(p["eps"].float().mean()),
                "robust_unbounded": float(p["unbounded"].float().mean()),
            }

    # from the evaluation itself: eps curves per attack, and black box vs white box per threat
    curves: dict[str, list[tuple[float, Tensor]]] = {}
    norms: dict[str, str] = {}
    for (name, t), mask in robust.items():
        curves.setdefault(f"{name} ({t.norm})", []).append((t.eps, mask))
        norms[f"{name} ({t.norm})"] = t.norm
    found["eps-monotonicity"] += eps_monotonicity_findings(curves, norms)
    found["black-box-beats-white-box"] += black_box_findings(robust, breakdowns)

    checks += [
        make_check("unbounded-attack", found["unbounded-attack"], probes=probes),
        make_check("eps-monotonicity", found["eps-monotonicity"]),
        make_check(
            "steps-monotonicity",
            found["steps-monotonicity"],
            steps=[max(1, probe_steps // 4), probe_steps],
        ),
        make_check("black-box-beats-white-box", found["black-box-beats-white-box"]),
        make_check("loss-not-increasing", found["loss-not-increasing"], steps=probe_steps),
    ]
    return checks


def check_certified_not_broken(
    certified: Mapping[tuple[str, Threat], Tensor], robust: Mapping[tuple[str, Threat], Tensor]
) -> CheckResult:
    """Share of points certified at a threat (by any certifier) but broken there by any attack;
    one finding per (certifier, attack, threat) with such points."""
    findings = []
    for (method, threat), cert in certified.items():
        for (attack, t), mask in robust.items():
            if t == threat:
                findings.append(finding(
                    f"At {threat}, {attack} broke {{points}} that {method} certified.",
                    cert & ~mask, len(cert), None, threat=str(threat), attack=attack,
                    against=[method], source="evaluation",
                ))  # fmt: skip
    findings = [f for f in findings if f.count > 0]
    pairs = [f"{f.against[0]} vs {f.attack} at {f.threat}" for f in findings]
    return make_check("certified-but-broken", findings, pairs=pairs)
