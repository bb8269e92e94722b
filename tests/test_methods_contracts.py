"""Contracts every registered training method keeps: constructor arguments reach ``config()``, a
config rebuilds the same method, bad hyper-parameters fail at construction with a sentence naming
the argument, boundary values the equations allow are accepted, and the defaults documented in
docs/methods.md (the papers' values) are the constructors' defaults."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
from torch import nn

from robustlab.errors import RobustlabError
from robustlab.threat import Threat
from robustlab.training.methods import METHODS
from robustlab.training.methods.adversarial import AdversarialMethod

THREAT = "linf:0.2"  # every default training threat is different (linf:0.3, linf:0.1, l2:...)
PGD = {"threat": THREAT, "steps": 3, "step_size": 0.05}
IBP = {"threat": THREAT, "eps_factor": 1.3, "tightness_samples": 4, "tightness_every": 3}
MIXED_IBP = {**IBP, "alpha": 0.3, "attack_steps": 2}


def _teacher() -> nn.Module:
    return nn.Linear(4, 3)


#: Every constructor argument of every method, each at a valid non-default value.
SPECS: dict[str, dict] = {
    "adr": {**PGD, "tau_start": 3.0, "tau_end": 1.2, "lam_start": 0.8, "lam_end": 0.6,
            "decay": 0.99},
    "arow": {**PGD, "beta": 3.0, "smoothing": 0.3},
    "avmixup": {**PGD, "gamma": 1.5, "lam1": 0.9, "lam2": 0.2},
    "awp": {"threat": THREAT, "base": "trades", "gamma": 0.01, "awp_steps": 2,
            "warmup_epochs": 3},
    "beta-at": {**PGD, "loss": "mae"},
    "bmm-bootstrap": {"mode": "soft", "warmup_epochs": 3, "em_iterations": 4},
    "cc-ibp": MIXED_IBP,
    "co-teaching": {"forget_rate": 0.3, "gradual_epochs": 5.0, "loss": "mae"},
    "crown-ibp": {**IBP, "kappa_start": 0.9, "kappa_end": 0.2, "beta_start": 0.8,
                  "beta_end": 0.1},
    "dafa": {**PGD, "lam": 2.0, "warmup_epochs": 3},
    "dial": {**PGD, "lam": 2.0, "r": 0.3, "variant": "kl", "hidden": 16},
    "done": {**PGD, "tau": 2.0, "rho": 0.3},
    "emma": {"threat": "l2:1", "iterations": 3},
    "exp-ibp": MIXED_IBP,
    "fgsm-rs": {"threat": THREAT, "alpha": 1.0, "loss": "mae"},
    "fomo": {**PGD, "forget_every": 3, "fraction": 0.3, "layers": 2, "lam": 2.0, "decay": 0.99},
    "gaussian-noise": {"sigma": 0.5},
    "hr": {**PGD, "alpha": 0.05, "r": 0.3},
    "iat": {**PGD, "alpha": 2.0, "manifold": True},
    "ibp": {**IBP, "kappa_start": 0.9, "kappa_end": 0.2},
    "late-stopping": {"rounds": 2, "keep_rate": 0.8, "k": 3, "warmup_epochs": 2,
                      "reinit": False, "loss": "mae"},
    "mart": {**PGD, "beta": 3.0},
    "mtard": {**PGD, "weight_lr": 0.05, "power": 2.0},  # teachers: modules, added in _build
    "mtl-ibp": MIXED_IBP,
    "mutual-at": {**PGD, "peers": 2, "alpha": 0.3},
    "pgd-at": {**PGD, "loss": "mae"},
    "rotation": {**PGD, "lam": 0.8, "adversarial_training": False},
    "rwp": {"threat": THREAT, "gamma": 0.02, "c_min": 2.0, "rwp_steps": 3, "warmup_epochs": 2},
    "score": {**PGD, "beta": 3.0, "natural": "se"},
    "sovr": {**PGD, "fraction": 0.3},
    "standard": {"loss": "mae"},
    "trades": {**PGD, "beta": 3.0},
    "vat": {"threat": "l2:1", "alpha": 2.0, "xi": 1e-4, "power_iterations": 2},
}

#: Where an argument is recorded in config() when not under its own name.
KEY = {"awp_steps": "steps", "rwp_steps": "steps", "base": ("base", "name")}
#: Methods whose config records ``loss`` as ``loss_name`` (the AdversarialMethod family).
LOSS_NAME = {"beta-at", "fgsm-rs", "pgd-at"}


def _build(name: str, **kwargs):
    if name == "mtard":
        kwargs = {"robust_teacher": _teacher(), "clean_teacher": _teacher(), **kwargs}
    return METHODS.build(name, **kwargs)


def _lookup(config: dict, key):
    if isinstance(key, tuple):
        return config[key[0]][key[1]]
    return config[key]


def _expected(value):
    return str(Threat.parse(value)) if isinstance(value, str) and ":" in value else value


def _params(name: str) -> list[inspect.Parameter]:
    return [
        p for p in inspect.signature(METHODS.get(name)).parameters.values()
        if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    ]


def test_specs_cover_every_method_and_argument_with_non_default_values():
    assert sorted(SPECS) == METHODS.names()
    for name, spec in SPECS.items():
        for p in _params(name):
            if name == "mtard" and p.name.endswith("_teacher"):
                continue
            assert p.name in spec, f"{name}: argument {p.name} not exercised"
            assert spec[p.name] != p.default, f"{name}: {p.name} given its default"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_argument_reaches_config(name):
    config = _build(name, **SPECS[name]).config()
    json.dumps(config)  # recorded with results and checkpoints: plain data only
    assert config["name"] == name
    for arg, value in SPECS[name].items():
        key = KEY.get(arg, "loss_name" if arg == "loss" and name in LOSS_NAME else arg)
        if name in ("awp", "rwp") and arg == "threat":
            key = ("base", "threat")
        assert _lookup(config, key) == _expected(value), f"{name}: {arg}"
    if name == "mtard":
        assert config["robust_teacher"] == config["clean_teacher"] == "<module Linear>"


def test_weight_perturbation_forwards_base_arguments():
    config = METHODS.build("awp", base="trades", awp_steps=2, steps=4, beta=3.0).config()
    assert config["steps"] == 2
    assert config["base"] == {**config["base"], "name": "trades", "steps": 4, "beta": 3.0}
    config = METHODS.build("rwp", rwp_steps=2, steps=4).config()
    assert (config["steps"], config["base"]["name"], config["base"]["steps"]) == (2, "pgd-at", 4)


@pytest.mark.parametrize("name", sorted(set(SPECS) - {"awp", "rwp"}))
def test_config_rebuilds_the_same_method(name):
    """The recorded config's constructor arguments rebuild a method with the same config
    (``loss_name`` is the AdversarialMethod family's record of ``loss``; MTARD's teachers are
    modules, passed again)."""
    config = _build(name, **SPECS[name]).config()
    params = {p.name for p in _params(name)} - {"robust_teacher", "clean_teacher"}
    args = {k: v for k, v in config.items() if k in params}
    if "loss" in params and "loss_name" in config:
        args["loss"] = config["loss_name"]
    assert _build(name, **args).config() == config


def test_pgd_based_methods_share_the_documented_inner_attack_defaults():
    """docs/methods.md: "Arguments common to the PGD-based methods: steps (inner PGD steps,
    default 10) and step_size (default 2.5 * eps / steps)", i.e. None."""
    pgd_based = [
        n for n in METHODS.names() if {"steps", "step_size"} <= {p.name for p in _params(n)}
    ]
    assert len(pgd_based) >= 15
    for name in pgd_based:
        params = inspect.signature(METHODS.get(name)).parameters
        assert (params["steps"].default, params["step_size"].default) == (10, None), name
        config = _build(name).config()
        assert (config["steps"], config["step_size"]) == (10, None), name


@pytest.mark.parametrize("name", sorted(set(SPECS) - {"mtard"}))
def test_every_method_builds_with_its_defaults(name):
    method = METHODS.build(name)
    for p in _params(name):
        if isinstance(p.default, str) and ":" in p.default:  # a default threat
            assert str(Threat.parse(p.default)) in json.dumps(method.config())


# ------------------------------------------------------------------------------- validation
#: (method, argument, invalid value): each must raise a RobustlabError naming the argument.
INVALID = [
    ("adr", "tau_start", 0.0), ("adr", "tau_end", -1.0), ("adr", "lam_start", 1.5),
    ("adr", "lam_end", -0.1), ("adr", "decay", 1.0), ("adr", "decay", -0.5),
    ("arow", "beta", -1.0), ("arow", "smoothing", 1.0), ("arow", "smoothing", -0.1),
    ("avmixup", "gamma", 0.0), ("avmixup", "lam1", 1.5), ("avmixup", "lam2", -0.1),
    ("awp", "gamma", -0.1), ("awp", "warmup_epochs", -1), ("awp", "warmup_epochs", 1.5),
    ("bmm-bootstrap", "warmup_epochs", -1), ("bmm-bootstrap", "em_iterations", 0),
    ("bmm-bootstrap", "mode", "bogus"),
    ("cc-ibp", "alpha", 1.5), ("cc-ibp", "eps_factor", 0.0), ("cc-ibp", "attack_steps", 0),
    ("cc-ibp", "tightness_samples", -1), ("cc-ibp", "tightness_every", 0),
    ("co-teaching", "forget_rate", 0.0), ("co-teaching", "forget_rate", 1.0),
    ("co-teaching", "gradual_epochs", -1.0),
    ("crown-ibp", "kappa_start", 1.5), ("crown-ibp", "kappa_end", -0.1),
    ("crown-ibp", "beta_start", 1.5), ("crown-ibp", "beta_end", -0.1),
    ("crown-ibp", "eps_factor", -1.0), ("crown-ibp", "tightness_samples", 0.5),
    ("crown-ibp", "tightness_every", 0),
    ("dafa", "lam", -1.0), ("dafa", "warmup_epochs", -1), ("dafa", "warmup_epochs", 0.5),
    ("dial", "lam", -1.0), ("dial", "r", -1.0), ("dial", "hidden", 0), ("dial", "variant", "x"),
    ("done", "tau", 0.0), ("done", "rho", 0.0), ("done", "rho", 1.5),
    ("emma", "iterations", 0), ("emma", "iterations", 1.5),
    ("exp-ibp", "alpha", -0.1), ("exp-ibp", "attack_steps", 0), ("exp-ibp", "eps_factor", 0.0),
    ("fgsm-rs", "alpha", 0.0), ("fgsm-rs", "alpha", -1.0),
    ("fomo", "forget_every", 0), ("fomo", "fraction", 1.5), ("fomo", "fraction", -0.1),
    ("fomo", "layers", 0), ("fomo", "lam", -1.0), ("fomo", "decay", 1.0),
    ("gaussian-noise", "sigma", 0.0),
    ("hr", "alpha", 1.0), ("hr", "alpha", -0.1), ("hr", "r", -1.0),
    ("iat", "alpha", 0.0),
    ("ibp", "kappa_start", 1.5), ("ibp", "kappa_end", -0.5), ("ibp", "eps_factor", 0.0),
    ("ibp", "tightness_samples", -1), ("ibp", "tightness_every", 0),
    ("late-stopping", "rounds", -1), ("late-stopping", "keep_rate", 1.0),
    ("late-stopping", "keep_rate", 0.0), ("late-stopping", "k", 0),
    ("late-stopping", "warmup_epochs", -1),
    ("mart", "beta", -1.0),
    ("mtard", "weight_lr", 0.0), ("mtard", "power", -1.0),
    ("mtl-ibp", "alpha", 1.5), ("mtl-ibp", "attack_steps", 0.5),
    ("mutual-at", "peers", 0), ("mutual-at", "alpha", 1.5), ("mutual-at", "alpha", -0.1),
    ("pgd-at", "steps", 0), ("pgd-at", "steps", 1.5), ("pgd-at", "step_size", 0.0),
    ("dafa", "steps", 0), ("trades", "step_size", -0.1),
    ("rotation", "lam", -1.0),
    ("rwp", "gamma", -1.0), ("rwp", "c_min", 0.0), ("rwp", "warmup_epochs", -1),
    ("score", "beta", -1.0),
    ("sovr", "fraction", 1.5), ("sovr", "fraction", -0.1),
    ("trades", "beta", -1.0),
    ("vat", "alpha", -1.0), ("vat", "xi", 0.0), ("vat", "power_iterations", 0),
]


@pytest.mark.parametrize(("name", "arg", "value"), INVALID)
def test_invalid_hyper_parameter_is_named_in_the_error(name, arg, value):
    with pytest.raises(RobustlabError, match=rf"\b{arg}\b"):
        _build(name, **{arg: value})


#: (method, argument, value on the boundary of its domain that the equations allow).
BOUNDARY = [
    ("adr", "lam_start", 0.0), ("adr", "lam_end", 1.0), ("adr", "decay", 0.0),
    ("arow", "beta", 0.0), ("arow", "smoothing", 0.0),
    ("avmixup", "lam1", 0.0), ("avmixup", "lam2", 1.0),
    ("awp", "gamma", 0.0), ("awp", "warmup_epochs", 0),
    ("bmm-bootstrap", "warmup_epochs", 0), ("bmm-bootstrap", "em_iterations", 1),
    ("cc-ibp", "alpha", 0.0), ("cc-ibp", "alpha", 1.0), ("cc-ibp", "tightness_samples", 0),
    ("cc-ibp", "tightness_every", 1), ("cc-ibp", "attack_steps", 1),
    ("co-teaching", "gradual_epochs", 0.0),
    ("crown-ibp", "kappa_start", 0.0), ("crown-ibp", "kappa_end", 1.0),
    ("crown-ibp", "beta_start", 0.0), ("crown-ibp", "beta_end", 1.0),
    ("crown-ibp", "tightness_samples", 0),
    ("dafa", "lam", 0.0), ("dafa", "warmup_epochs", 0),
    ("dial", "lam", 0.0), ("dial", "r", 0.0), ("dial", "hidden", 1),
    ("done", "rho", 1.0),
    ("emma", "iterations", 1),
    ("exp-ibp", "alpha", 1.0), ("exp-ibp", "tightness_samples", 0),
    ("fomo", "fraction", 0.0), ("fomo", "fraction", 1.0), ("fomo", "lam", 0.0),
    ("fomo", "decay", 0.0), ("fomo", "layers", 1), ("fomo", "forget_every", 1),
    ("hr", "alpha", 0.0), ("hr", "r", 0.0),
    ("ibp", "kappa_start", 0.0), ("ibp", "kappa_end", 1.0), ("ibp", "tightness_samples", 0),
    ("late-stopping", "rounds", 0), ("late-stopping", "warmup_epochs", 0),
    ("late-stopping", "k", 1),
    ("mart", "beta", 0.0),
    ("mtl-ibp", "alpha", 0.0),
    ("mutual-at", "alpha", 0.0), ("mutual-at", "alpha", 1.0), ("mutual-at", "peers", 1),
    ("rotation", "lam", 0.0),
    ("rwp", "gamma", 0.0), ("rwp", "warmup_epochs", 0),
    ("score", "beta", 0.0),
    ("sovr", "fraction", 0.0), ("sovr", "fraction", 1.0),
    ("trades", "beta", 0.0),
    ("vat", "alpha", 0.0), ("vat", "power_iterations", 1),
]


@pytest.mark.parametrize(("name", "arg", "value"), BOUNDARY)
def test_boundary_hyper_parameter_is_accepted(name, arg, value):
    config = _build(name, **{arg: value}).config()
    assert _lookup(config, KEY.get(arg, arg)) == value


def test_weight_perturbation_steps_error_names_an_argument():
    for name, arg in (("awp", "awp_steps"), ("rwp", "rwp_steps")):
        with pytest.raises(RobustlabError, match=r"\bsteps must be an integer >= 1"):
            METHODS.build(name, **{arg: 0})


# --------------------------------------------------------------------------------- defaults
def _documented_defaults() -> list[tuple[str, str, str]]:
    """(method, argument, value) for every ``Defaults: `k=v`, ...`` sentence of docs/methods.md."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    out = []
    for section in re.split(r"\n## ", text)[1:]:
        head = re.search(r"— `([\w-]+)`", section.splitlines()[0])
        start = section.find("Defaults:")
        if head is None or start < 0:
            continue
        base = start + len("Defaults:")
        end = 0
        for m in re.finditer(r"`(\w+)(?:=([^`]+)| (\S+) -> (\S+))`", section[base:]):
            if not re.fullmatch(r"[\s,]*(and\s*)?", section[base + end : base + m.start()]):
                break
            if m.group(2) is not None:
                out.append((head.group(1), m.group(1), m.group(2)))
            else:  # `tau 2.5 -> 1.5`: an annealed pair tau_start, tau_end
                out.append((head.group(1), f"{m.group(1)}_start", m.group(3)))
                out.append((head.group(1), f"{m.group(1)}_end", m.group(4)))
            end = m.end()
    return out


DOCUMENTED = _documented_defaults()


def test_documented_defaults_are_found():
    methods = {m for m, _, _ in DOCUMENTED}
    assert {"trades", "mart", "awp", "fomo", "vat", "dafa", "adr", "avmixup"} <= methods
    assert len(DOCUMENTED) >= 40


def _parse(text: str):
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text)
    except ValueError:
        return text


@pytest.mark.parametrize(("name", "arg", "text"), DOCUMENTED)
def test_documented_default_is_the_constructor_default(name, arg, text):
    default = inspect.signature(METHODS.get(name)).parameters[arg].default
    value = _parse(text)
    if isinstance(value, str) and ":" in value:
        assert str(Threat.parse(default)) == str(Threat.parse(value))
    elif isinstance(default, bool) or isinstance(value, str):
        assert default == value
    else:
        assert float(default) == pytest.approx(value, rel=1e-12)


def test_paper_defaults():
    """Hyper-parameters the papers fix, independent of the docs."""

    def default(name, arg):
        return inspect.signature(METHODS.get(name)).parameters[arg].default

    assert default("trades", "beta") == 6.0  # Zhang et al. 2019, 1/lambda = 6 (CIFAR-10)
    assert default("fgsm-rs", "alpha") == 1.25  # Wong et al. 2020: step 1.25 eps
    assert default("awp", "gamma") == 5e-3  # Wu et al. 2020: gamma = 5e-3
    assert default("awp", "awp_steps") == 1  # Wu et al. 2020: one ascent step
    assert default("avmixup", "gamma") == 2.0  # Lee et al. 2020: x_v = x + 2 delta
    assert (default("ibp", "kappa_start"), default("ibp", "kappa_end")) == (1.0, 0.5)  # Gowal
    assert METHODS.build("ibp").eps_factor == 1.1  # Gowal et al. 2018 train at 1.1 eps
    assert default("late-stopping", "reinit") is True  # Yuan et al. 2023 restart each round


# ----------------------------------------------------------------------------- inner attacks
ADVERSARIAL = sorted(n for n in SPECS if issubclass(METHODS.get(n), AdversarialMethod))


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_inner_attack_uses_the_methods_radius_steps_and_step_size(name):
    """docs/methods.md: inner attacks are PGD/BETA "run with maximize (every point perturbed, no
    early stop)" with the method's ``steps`` and ``step_size``; FGSM-RS is one step of
    ``alpha * eps`` from a random start (Wong et al. 2020)."""
    method = _build(name, **SPECS[name])
    threat = Threat.parse("linf:0.08")
    config = method.make_attack(threat).config()
    assert config["threat"] == "linf:0.08"
    assert config["early_stop"] is False
    if name == "fgsm-rs":
        assert (config["steps"], config["random_start"]) == (1, True)
        assert config["step_size"] == pytest.approx(SPECS[name]["alpha"] * 0.08)
    else:
        assert (config["steps"], config["step_size"]) == (3, 0.05)
    if name != "beta-at":
        assert config["random_start"] is True  # Madry et al. 2018: PGD from a random start


def test_loss_given_as_a_module_is_recorded_by_its_class_name():
    for name in ("pgd-at", "fgsm-rs", "beta-at"):
        assert METHODS.build(name, loss=nn.MSELoss()).config()["loss_name"] == "MSELoss"
    assert METHODS.build("standard", loss=nn.MSELoss()).config()["loss"] == "MSELoss"
