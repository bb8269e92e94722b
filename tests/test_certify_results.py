"""What :func:`~robustlab.certify.certify` reports: the JSON fields and their values, the
provenance of the run, the options reaching the bound method, and the strictness of "certified"
(a margin whose lower bound is exactly 0 is not certified: the prediction may tie)."""

from __future__ import annotations

import json
import re
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import robustlab.certify.certifier as certifier_module
from robustlab.certify import certify, compute_bounds, worst_margin
from robustlab.errors import RobustlabError
from robustlab.models import build_model


def tie_model() -> nn.Module:
    """Classes 0 and 1 have identical weights and biases: ``z_0 = z_1`` everywhere."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight[1] = lin.weight[0]
        lin.bias[1] = lin.bias[0]
        lin.bias[2] = -10.0
    return nn.Sequential(lin).eval()


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown", "lipschitz"])
def test_a_margin_bound_of_exactly_zero_is_not_certified(method):
    x = torch.rand(4, 4)
    y = torch.zeros(4, dtype=torch.long)
    res = certify(tie_model(), (x, y), method, "l2:0")
    assert (res.lower_bound == 0).all()
    assert not res.certified.any() and res.certified_accuracy == 0.0


def test_json_fields_are_the_result():
    torch.manual_seed(0)
    model = build_model("mlp", (4,), 3, hidden=(8,)).eval()
    x, y = torch.rand(10, 4), torch.randint(3, (10,))
    res = certify(model, (x, y), "crown", "linf:0.05", batch_size=4, seed=3)
    d = json.loads(json.dumps(res.to_dict()))
    assert "per_sample" not in d  # per-sample lists only when asked for
    assert d["method"] == "crown" and d["threat"] == "linf:0.05" and d["n"] == 10
    assert d["model"] == "mlp" and d["dataset"] == "tensors"
    assert d["clean_accuracy"] == pytest.approx(float(res.correct.float().mean()))
    assert d["certified_accuracy"] == pytest.approx(float(res.certified.float().mean()))
    assert d["time_s"] == res.time_s > 0 and d["samples_per_s"] == pytest.approx(10 / res.time_s)
    assert d["mean_lower_bound"] == pytest.approx(float(res.lower_bound.mean()))
    config = d["provenance"]["config"]
    assert config["method"] == "crown" and config["threat"] == "linf:0.05"
    assert config["lower_slope"] == "adaptive" and config["batch_size"] == 4
    assert config["dataset"] == "tensors" and config["n"] == 10
    assert d["provenance"]["seed"] == 3
    per = res.to_dict(per_sample=True)["per_sample"]
    assert per["correct"] == res.correct.tolist() and per["certified"] == res.certified.tolist()
    assert per["lower_bound"] == res.lower_bound.tolist() and "radius" not in per
    lip = certify(model, (x, y), "lipschitz", "l2:0.1").to_dict(per_sample=True)["per_sample"]
    assert len(lip["radius"]) == 10 and len(lip["lower_bound"]) == 10


def test_model_name_from_the_library_spec_or_the_class_or_the_caller():
    x, y = torch.rand(3, 4), torch.zeros(3, dtype=torch.long)
    assert certify(tie_model(), (x, y), "ibp", "linf:0.1").model == "Sequential"
    assert certify(tie_model(), (x, y), "ibp", "linf:0.1", model_name="tied").model == "tied"


def test_bound_options_reach_the_bound_method():
    """``lower_slope="zero"`` changes CROWN-IBP's bound on a net with unstable neurons: the
    certifier's lower bounds are those of compute_bounds with the same option."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.rand(8, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    kw = dict(y=y, method="crown-ibp", tighten=True)
    zero = worst_margin(compute_bounds(model, x, "linf:0.2", lower_slope="zero", **kw), y)
    adaptive = worst_margin(compute_bounds(model, x, "linf:0.2", **kw), y)
    assert not torch.allclose(zero, adaptive)
    res = certify(model, (x, y), "crown-ibp", "linf:0.2", lower_slope="zero")
    torch.testing.assert_close(res.lower_bound, zero)
    assert res.provenance["config"]["lower_slope"] == "zero"


class Bar:
    """Stands in for :func:`~robustlab.progress.progress_bar` and the Rich display it opens."""

    made: list[bool] = []
    tasks: list[dict] = []

    def __init__(self, enabled=True, transient=False):
        Bar.made.append(enabled)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, description, total=None):
        Bar.tasks.append({"description": description, "total": total, "done": 0})
        return len(Bar.tasks) - 1

    def update(self, task, advance=0):
        Bar.tasks[task]["done"] += advance

    def remove_task(self, task):
        pass


@pytest.fixture
def bar(monkeypatch):
    Bar.made, Bar.tasks = [], []
    monkeypatch.setattr(certifier_module, "progress_bar", Bar)
    return Bar


def test_progress_counts_the_inputs_and_shows_the_smoothing_phases(bar):
    x, y = torch.rand(5, 4), torch.zeros(5, dtype=torch.long)
    certify(tie_model(), (x, y), "ibp", "linf:0.1", batch_size=2)
    assert bar.made == [False]  # drawn only when asked for
    assert bar.tasks == [{"description": "certify ibp linf:0.1", "total": 5, "done": 5}]
    bar.tasks.clear()
    certify(tie_model(), (x, y), "smoothing", "l2:0.1", n0=2, n=3, progress=True)
    assert bar.made == [False, True]
    assert [t["description"].split()[0] for t in bar.tasks] == ["certify", "select", "certify"]


def test_defaults_time_and_a_model_without_parameters():
    """IBP at Linf 0.1 by default; the elapsed time is the call's; a parameter-free model (the
    identity on 3 features, as logits) runs on the CPU."""
    x, y = torch.rand(4, 3), torch.tensor([0, 1, 2, 0])
    t0 = time.perf_counter()
    res = certify(nn.Sequential(nn.Flatten()), (x, y))
    wall = time.perf_counter() - t0
    assert (res.method, res.threat) == ("ibp", "linf:0.1")
    assert 0 < res.time_s <= wall
    assert res.correct.dtype == torch.bool
    assert res.correct.tolist() == (x.argmax(1) == y).tolist()
    assert res.provenance["device"].startswith("cpu")


def test_data_needs_both_inputs_and_labels():
    class OnlyInputs:
        x = torch.rand(3, 4)

    with pytest.raises(RobustlabError, match="pair.*got OnlyInputs"):
        certify(tie_model(), OnlyInputs(), "ibp", "linf:0.1")
    with pytest.raises(RobustlabError, match="pair.*got dict"):
        certify(tie_model(), {"x": torch.rand(3, 4), "y": torch.zeros(3)}, "ibp", "linf:0.1")


def test_a_dataset_names_itself_and_bounds_its_labels():
    """A dataset's name appears in the result and in every message about its data; its
    ``num_classes`` bounds the labels even when the model has more logits."""
    model = nn.Sequential(nn.Linear(4, 5)).eval()
    x = torch.rand(3, 4)
    toy = SimpleNamespace(x=x, y=torch.tensor([0, 1, 2]), num_classes=3, name="toy")
    assert certify(model, toy, "ibp", "linf:0.1").dataset == "toy"
    assert certify(model, SimpleNamespace(x=x, y=toy.y), "ibp", "linf:0.1").dataset == "data"
    with pytest.raises(RobustlabError, match=r"^toy labels must be in \[0, 3\)"):
        certify(model, SimpleNamespace(x=x, y=torch.tensor([0, 1, 3]), num_classes=3,
                                       name="toy"), "ibp", "linf:0.1")
    with pytest.raises(RobustlabError, match=r"^toy inputs must lie in \[0, 1\]"):
        certify(model, SimpleNamespace(x=x + 1, y=toy.y, name="toy"), "ibp", "linf:0.1")
    # without num_classes, the labels are checked against the model's logits
    with pytest.raises(RobustlabError, match=r"^tensors labels must be in \[0, 5\)"):
        certify(model, (x, torch.tensor([0, 1, 5])), "ibp", "linf:0.1")


@pytest.mark.parametrize("method,valid", [("ibp", "none"), ("crown", "lower_slope, max_elements"),
                                          ("smoothing", "sigma, n0, n, alpha, noise_batch, radii")])
def test_an_unknown_option_lists_the_valid_ones(method, valid):
    with pytest.raises(RobustlabError) as err:
        certify(tie_model(), (torch.rand(2, 4), torch.zeros(2, dtype=torch.long)), method,
                "l2:0.1", samples=10)
    msg = str(err.value)
    assert "'samples'" in msg and re.search(rf"valid options: {valid}\.$", msg), msg
