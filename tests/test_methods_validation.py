"""Arguments of the adversarial and standard methods are checked when the method is built, with
one sentence naming the problem; every PGD-based method checks its inner-attack arguments."""

from __future__ import annotations

import inspect

import pytest
from torch import nn

from robustlab.errors import RobustlabError
from robustlab.training.methods import METHODS

LOSS_METHODS = ("pgd-at", "fgsm-rs", "beta-at", "standard")


@pytest.mark.parametrize("name", LOSS_METHODS)
def test_a_loss_that_is_neither_a_name_nor_a_module_is_refused(name):
    with pytest.raises(RobustlabError, match=r"a loss must be a registered name or an nn\.Module"):
        METHODS.build(name, loss=3)


def test_standard_refuses_loss_arguments_with_a_loss_module():
    with pytest.raises(RobustlabError, match=r"apply to a loss given by name.*MSELoss"):
        METHODS.build("standard", loss=nn.MSELoss(), reduction="sum")


def _pgd_based() -> list[str]:
    return [
        n for n in METHODS.names()
        if {"steps", "step_size"} <= set(inspect.signature(METHODS.get(n)).parameters)
    ]


@pytest.mark.parametrize("name", _pgd_based())
@pytest.mark.parametrize(("arg", "value"), [("steps", 0), ("steps", 2.5), ("step_size", -0.1),
                                            ("step_size", float("nan"))])  # fmt: skip
def test_every_pgd_based_method_checks_its_inner_attack(name, arg, value):
    kwargs = {"robust_teacher": nn.Linear(2, 2), "clean_teacher": nn.Linear(2, 2)}
    kwargs = kwargs if name == "mtard" else {}
    with pytest.raises(RobustlabError, match=rf"^{arg} must be [^\n]*\.$"):
        METHODS.build(name, **kwargs, **{arg: value})


@pytest.mark.parametrize("name", _pgd_based())
def test_every_pgd_based_method_refuses_a_negative_radius(name):
    with pytest.raises(RobustlabError, match="eps"):
        METHODS.build(name, threat="linf:-0.1")


@pytest.mark.parametrize("name", ["cc-ibp", "mtl-ibp", "exp-ibp"])
def test_expressive_losses_check_their_attack_steps(name):
    with pytest.raises(RobustlabError, match=r"^attack_steps must be an integer >= 1"):
        METHODS.build(name, attack_steps=-1)


def test_forwarded_parameters_are_listed_once_and_checked():
    """A method that passes its base's parameters on lists them in its signature (keyword-only)
    and Registry.build refuses the ones its family does not take (``loss`` of PGD-AT)."""
    params = inspect.signature(METHODS.get("arow")).parameters
    assert list(params) == ["threat", "smoothing", "beta", "steps", "step_size"]
    assert params["beta"].kind is inspect.Parameter.KEYWORD_ONLY
    config = METHODS.build("arow", smoothing=0.1, beta=2.0, steps=3).config()
    assert (config["smoothing"], config["beta"], config["steps"]) == (0.1, 2.0, 3)
    with pytest.raises(RobustlabError, match="method 'done' takes no argument 'loss'"):
        METHODS.build("done", loss="mae")
