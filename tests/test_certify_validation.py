"""Bad input to the certification API: every invalid parameter is refused with one sentence (a
RobustlabError) that names the parameter, so a user knows which one to fix (DESIGN, "Bad input").
The message text itself is not pinned: only the parameter's name, as a whole word, and that it
is one sentence."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from robustlab.certify import (
    SUPPORTED_LAYERS,
    LipschitzCertifier,
    LiResNetBlock,
    SmoothedClassifier,
    UnsupportedLayerError,
    certify,
    compile_model,
    compute_bounds,
    crown_bounds,
    lipschitz_certify,
    propagation_tightness,
)
from robustlab.certify.certifier import CERTIFIERS
from robustlab.certify.lipschitz import PowerIteration
from robustlab.certify.propagation import LOWER_SLOPES, relu_relaxation
from robustlab.errors import RobustlabError


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()


X = torch.rand(6, 4)
Y = torch.tensor([0, 1, 2, 0, 1, 2])


def smoothed(**kw) -> SmoothedClassifier:
    return SmoothedClassifier(model(), **{"num_classes": 3, "sigma": 0.25, **kw})


def run(method: str, threat: str = "l2:0.1", **options):
    return certify(model(), (X, Y), method, threat, **options)


#: (parameter the message must name, a call with a bad value for it)
CASES = [
    ("num_classes", lambda: smoothed(num_classes=1)),  # a smoothed classifier needs 2 classes
    ("num_classes", lambda: smoothed(num_classes=2.5)),
    ("sigma", lambda: smoothed(sigma=0.0)),
    ("sigma", lambda: smoothed(sigma=-0.5)),
    ("sigma", lambda: smoothed(sigma=float("nan"))),
    ("noise_batch", lambda: smoothed(noise_batch=0)),
    ("n", lambda: smoothed().sample_counts(X, 0)),
    ("alpha", lambda: smoothed().predict(X, n=10, alpha=0.0)),
    ("alpha", lambda: smoothed().predict(X, n=10, alpha=1.0)),  # alpha is in (0, 1)
    ("alpha", lambda: smoothed().predict(X, n=10, alpha=1.5)),
    ("alpha", lambda: smoothed().predict(X, n=10, alpha=float("inf"))),
    ("n0", lambda: smoothed().certify(X, n0=0, n=10)),
    ("n", lambda: smoothed().certify(X, n0=10, n=0)),
    ("alpha", lambda: smoothed().certify(X, n0=10, n=10, alpha=1.0)),
    ("sigma", lambda: run("smoothing", sigma=0)),
    ("n0", lambda: run("smoothing", n0=0)),
    ("n", lambda: run("smoothing", n=-5)),
    ("noise_batch", lambda: run("smoothing", noise_batch=0)),
    ("alpha", lambda: run("smoothing", alpha=1.0)),
    ("radii", lambda: run("smoothing", radii=[0.5, -0.25])),
    ("radii", lambda: run("smoothing", radii=["wide"])),
    ("lower_slope", lambda: run("crown-ibp", "linf:0.1", lower_slope="best")),
    ("lower_slope", lambda: run("crown", "linf:0.1", lower_slope="best")),
    ("max_elements", lambda: run("crown", "linf:0.1", max_elements=0)),
    ("max_elements", lambda: compute_bounds(model(), X, "linf:0.1", method="crown",
                                            max_elements=0)),
    ("max_elements", lambda: crown_bounds(model(), X, "linf:0.1", max_elements=0)),
    ("batch_size", lambda: run("ibp", "linf:0.1", batch_size=0)),
    ("iterations", lambda: PowerIteration(iterations=0)),
    ("channels", lambda: LiResNetBlock(0)),
    ("kernel_size", lambda: LiResNetBlock(2, kernel_size=4)),
    ("l1", lambda: run("lipschitz", "l1:0.5")),  # the threat the Lipschitz certifier cannot use
    ("labels", lambda: lipschitz_certify(model(), X, torch.tensor([0, 1, 2, 0, 1, 3]))),
    ("labels", lambda: propagation_tightness(model(), X, "linf:0.1",
                                             torch.tensor([0, 1, 2, 0, 1, 3]))),
    ("BatchNorm", lambda: LipschitzCertifier(
        nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).train(), (4,))),
]


@pytest.mark.parametrize("name,call", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_invalid_parameter_is_named_in_one_sentence(name, call):
    with pytest.raises(RobustlabError) as err:
        call()
    msg = str(err.value)
    assert re.search(rf"(?<!\w){re.escape(name)}(?!\w)", msg), msg
    assert msg.endswith(".") and "\n" not in msg, msg


@pytest.mark.parametrize("method", ["crown-ibp", "crown"])
def test_unknown_lower_slope_lists_the_known_ones(method):
    """The certifier checks its option when it is made, before any data is seen, and lists the
    known slopes."""
    with pytest.raises(RobustlabError) as err:
        CERTIFIERS.get(method)("linf:0.1", lower_slope="best")
    assert "'best'" in str(err.value) and ", ".join(LOWER_SLOPES) in str(err.value)
    with pytest.raises(RobustlabError, match="lower slope 'steep'"):
        relu_relaxation(torch.zeros(1), torch.ones(1), "steep")


def test_smoothing_radii_given_as_text_are_read_as_numbers():
    """YAML (the CLI's ``--option radii=[0,1e-1]``) reads ``1e-1`` as a string: the certifier
    turns every radius into a number before using it."""
    res = run("smoothing", sigma=0.25, n0=10, n=20, radii=[0, "1e-1"])
    assert set(res.summary["certified_accuracy_at"]) == {"0", "0.1"}


def test_unsupported_layer_message_lists_the_supported_layers_and_no_reason_when_none():
    with pytest.raises(UnsupportedLayerError) as err:
        compile_model(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)), (4,))
    msg = str(err.value)
    assert msg == (f"Cannot bound layer '1' of type Tanh; supported layers: "
                   f"{', '.join(SUPPORTED_LAYERS)}.")


def test_a_subclass_of_a_supported_layer_is_refused_with_the_reason():
    class MyReLU(nn.ReLU):
        pass

    with pytest.raises(UnsupportedLayerError) as err:
        compile_model(nn.Sequential(nn.Linear(4, 3), MyReLU(), nn.Linear(3, 2)), (4,))
    msg = str(err.value)
    assert "'1' of type MyReLU (a subclass of ReLU" in msg and "exact classes" in msg


def test_data_that_is_not_a_dataset_or_a_pair_is_refused():
    with pytest.raises(RobustlabError, match="pair"):
        certify(model(), [X, Y, Y], "ibp", "linf:0.1")
