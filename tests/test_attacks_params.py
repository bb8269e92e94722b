"""The declaration of attack hyper-parameters (``attacks/params.py``): a class that declares its
parameters gets one ``__init__`` whose signature, defaults, checks, order of checks and recorded
config follow the declarations. The classes are defined inside the tests, so the machinery runs
under test (not only once at import)."""

from __future__ import annotations

import inspect

import pytest
import torch

from robustlab.attacks import PGD, Attack
from robustlab.attacks.params import fixed, integer, optional, param, positive
from robustlab.errors import RobustlabError


def _toy_base():
    class Base(Attack):
        name = "toy"
        steps: int = param(5, integer)
        size: float | None = param(None, optional(positive))
        checked: list = []

        def _check_params(self) -> None:
            Base.checked.append(("base", self.steps))
            if self.size is None:
                self.size = 2.0 * self.threat.eps / self.steps

        def perturb(self, model, x, y, target, generator):
            return x.clone()

    return Base


def test_the_signature_lists_common_own_and_trailing_parameters_with_their_defaults():
    Base = _toy_base()
    sig = inspect.signature(Base)
    assert list(sig.parameters) == [
        "threat", "steps", "size", "loss", "targeted", "restarts", "seed"
    ]  # fmt: skip
    assert sig.parameters["threat"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(
        p.kind is inspect.Parameter.KEYWORD_ONLY for n, p in sig.parameters.items() if n != "threat"
    )
    assert sig.parameters["steps"].default == 5 and sig.parameters["size"].default is None
    assert sig.parameters["steps"].annotation in (int, "int")
    assert Base.steps == 5  # read on the class: the default


def test_values_are_checked_set_and_the_hook_derives_defaults():
    Base = _toy_base()
    a = Base("linf:0.3", steps=3)
    assert (a.steps, a.size, a.threat.eps) == (3, pytest.approx(0.2), 0.3)
    b = Base(threat="l2:1", size=0.5, seed=7, restarts=2, targeted=True, loss="dlr")
    assert (b.size, b.seed, b.restarts, b.targeted, b.loss_name) == (0.5, 7, 2, True, "dlr")
    with pytest.raises(RobustlabError, match="steps"):
        Base("linf:0.3", steps=0)
    with pytest.raises(RobustlabError, match="size"):
        Base("linf:0.3", size=-1.0)
    with pytest.raises(TypeError, match="Base\\(\\) got an unexpected keyword argument 'norm'"):
        Base("linf:0.3", norm="l2")  # a ball attack takes its norm from the threat
    with pytest.raises(TypeError, match="Base\\(\\)"):
        Base("linf:0.3", 4)  # only the threat goes by position
    cfg = a.config()
    assert cfg["steps"] == 3 and cfg["threat"] == "linf:0.3" and cfg["name"] == "toy"


def test_a_subclass_inherits_redeclares_and_fixes_parameters_checking_bases_first():
    Base = _toy_base()

    class Child(Base):
        name = "child"
        steps = param(9)  # new default, the base's check kept
        restarts = fixed(1)  # not taken
        extra: int = param(2, integer)

        def _check_params(self) -> None:
            Base.checked.append(("child", self.extra))

    sig = inspect.signature(Child)
    assert "restarts" not in sig.parameters and sig.parameters["steps"].default == 9
    assert list(sig.parameters).index("extra") > list(sig.parameters).index("size")
    Base.checked.clear()
    c = Child("linf:0.1")
    assert (c.steps, c.extra, c.restarts) == (9, 2, 1)
    assert Base.checked == [("base", 9), ("child", 2)]  # base class hook first
    with pytest.raises(RobustlabError, match="steps"):
        Child("linf:0.1", steps=0)  # the inherited check still applies
    with pytest.raises(TypeError):
        Child("linf:0.1", restarts=3)
    with pytest.raises(RobustlabError, match="extra"):
        Child("linf:0.1", extra=0)


def test_declaring_below_a_hand_written_init_is_refused():
    class Hand(Attack):
        name = "hand"

        def __init__(self, threat="linf:0.1") -> None:
            super().__init__(threat)

        def perturb(self, model, x, y, target, generator):
            return x.clone()

    with pytest.raises(TypeError, match="below a hand-written __init__"):

        class Below(Hand):
            steps: int = param(3, integer)

    assert Hand().threat.eps == 0.1


def test_a_declared_attack_runs_and_stays_in_the_ball():
    Base = _toy_base()

    class Shift(Base):
        name = "shift"

        def perturb(self, model, x, y, target, generator):
            return x + self.size  # projected by the threat below

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.rand(5, 4) * 0.5, torch.randint(0, 3, (5,))
    attack = Shift("linf:0.1", size=0.05)
    assert attack.run(model, x, y).x_adv.sub(x).abs().max() <= 0.1 + 1e-6


def test_library_attacks_keep_their_declared_interface():
    sig = inspect.signature(PGD)
    assert list(sig.parameters)[:2] == ["threat", "steps"] and sig.parameters["steps"].default == 40
    assert PGD("linf:0.3", steps=10).step_size == pytest.approx(2.5 * 0.3 / 10)
