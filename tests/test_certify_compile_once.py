"""A bound certifier compiles the model once per certification run and reuses the graph for every
batch, while the check of the graph against ``model(x)`` still runs on every batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustlab.certify.propagation as propagation_module
from robustlab.certify import CERTIFIERS, GraphMismatchError, certify
from robustlab.errors import RobustlabError


def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    return model, torch.rand(10, 6), torch.randint(0, 3, (10,))


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
def test_one_compilation_per_run_and_one_check_per_batch(monkeypatch, method):
    model, x, y = model_and_data()
    calls = {"compile": 0, "verify": 0}
    compile_model, verify_graph = propagation_module.compile_model, propagation_module.verify_graph

    def counted_compile(*args, **kwargs):
        calls["compile"] += 1
        return compile_model(*args, **kwargs)

    def counted_verify(*args, **kwargs):
        calls["verify"] += 1
        return verify_graph(*args, **kwargs)

    monkeypatch.setattr(propagation_module, "compile_model", counted_compile)
    monkeypatch.setattr(propagation_module, "verify_graph", counted_verify)
    cached = certify(model, (x, y), method, "linf:0.05", batch_size=3)
    assert calls == {"compile": 1, "verify": 4}
    monkeypatch.undo()
    # the same numbers as bounding each batch on its own
    for i in range(0, 10, 3):
        alone = certify(model, (x[i : i + 3], y[i : i + 3]), method, "linf:0.05")
        assert torch.equal(alone.lower_bound, cached.lower_bound[i : i + 3])


def test_a_model_changed_between_batches_is_refused_not_bounded_with_the_old_graph():
    model, x, y = model_and_data()
    certifier = CERTIFIERS.get("crown")("linf:0.05")
    certifier.prepare(model, (6,), 3, 0)
    certifier.batch(model, x[:5], y[:5], None)
    handle = model[0].register_forward_hook(lambda mod, i, o: o + 1)
    with pytest.raises(GraphMismatchError, match="forward hook"):
        certifier.batch(model, x[5:], y[5:], None)
    handle.remove()
    model[2].weight = nn.Parameter(model[2].weight.detach() * 3)  # the graph holds the old one
    with pytest.raises(GraphMismatchError, match="differ from the model's"):
        certifier.batch(model, x[5:], y[5:], None)
    certifier.prepare(model, (6,), 3, 0)  # a new run compiles the model again
    certifier.batch(model, x[5:], y[5:], None)


def test_a_built_certifier_gives_the_same_certificates_as_its_name():
    model, x, y = model_and_data()
    by_name = certify(model, (x, y), "crown", "linf:0.05", batch_size=4)
    built = certify(model, (x, y), CERTIFIERS.get("crown")("linf:0.05"), batch_size=4)
    assert torch.equal(by_name.certified, built.certified)
    assert torch.equal(by_name.lower_bound, built.lower_bound)
    with pytest.raises(RobustlabError, match="brings its own threat"):
        certify(model, (x, y), CERTIFIERS.get("crown")("linf:0.05"), "linf:0.1")


def test_evaluate_builds_each_certifier_once_per_threat(monkeypatch):
    from robustlab.certify import registry
    from robustlab.data import ArrayDataset
    from robustlab.evaluation import evaluate

    model, x, y = model_and_data()
    built = []
    ibp = CERTIFIERS.get("ibp")

    class Counted(ibp):
        def __init__(self, *args, **kwargs):
            built.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setitem(registry.CERTIFIERS._items, "ibp", Counted)
    data = ArrayDataset(x, y, num_classes=3, name="toy")
    evaluate(model, data, ["fgsm"], ["linf:0.05", "l2:0.1"], certify=["ibp"], progress=False)
    assert len(built) == 2  # one per threat, none built twice
