"""``robustlab certify`` end to end through the real entry point: every method on a small
checkpoint, the JSON it writes, and bad input ending in one sentence with exit code 2."""

from __future__ import annotations

import json

import pytest
import torch
from _cli import run_cli

from robustlab.models import build_model, make_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10, hidden=(16,))
    path = tmp_path_factory.mktemp("ckpt") / "mlp.pt"
    save_checkpoint(path, make_checkpoint(model))
    return path


@pytest.mark.parametrize("method,threat,extra", [
    ("ibp", "linf:0.01", []),
    ("crown-ibp", "linf:0.01", []),
    ("crown", "l2:0.1", ["--option", "max_elements=1000"]),
    ("lipschitz", "l2:0.1", []),
    ("smoothing", "l2:0.1", ["--option", "n=200", "--option", "n0=20", "--option", "sigma=0.5"]),
])
def test_every_method_through_the_cli(checkpoint, tmp_path, capsys, monkeypatch, method, threat,
                                      extra):
    res = tmp_path / "r.json"
    code, out, err = run_cli(
        ["certify", "--checkpoint", str(checkpoint), "--method", method, "--threat", threat,
         "--limit", "24", "--out", str(res), "--per-sample", "--no-progress", *extra],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code in (0, None), err
    data = json.loads(res.read_text())
    assert data["method"] == method and data["threat"] == threat and data["n"] == 24
    assert 0 <= data["certified_accuracy"] <= data["clean_accuracy"] <= 1 or method == "smoothing"
    assert len(data["per_sample"]["certified"]) == 24
    assert data["provenance"]["config"]["method"] == method
    assert "certified accuracy" in out


@pytest.mark.parametrize("args,message", [
    (["--method", "deeppoly"], "Unknown certification method 'deeppoly'; known"),
    (["--threat", "l1:1"], "bound propagation supports the threats linf, l2"),
    (["--method", "smoothing", "--threat", "linf:0.1"], "randomized smoothing certifies L2"),
    (["--option", "steps=3"], "Unknown option 'steps' for certification method 'ibp'"),
    (["--threat", "linf"], "A threat is written 'norm:eps'"),
])
def test_bad_input_is_one_sentence(checkpoint, capsys, monkeypatch, args, message):
    code, out, err = run_cli(["certify", "--checkpoint", str(checkpoint), "--limit", "4",
                              "--no-progress", *args], capsys, monkeypatch)
    assert code == 2
    assert message in " ".join(err.split())
    assert "Traceback" not in err


def test_unsupported_layer_through_the_cli(tmp_path, capsys, monkeypatch):
    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10)
    path = tmp_path / "lenet.pt"
    save_checkpoint(path, make_checkpoint(model))
    data = tmp_path / "d.npz"
    import numpy as np

    np.savez(data, x=np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32),
             y=np.arange(4))
    code, out, err = run_cli(["certify", "--checkpoint", str(path), "--dataset", "npz",
                              "--data-dir", str(data), "--no-progress"], capsys, monkeypatch)
    assert code == 2, err
    assert "MaxPool2d" in err and "supported layers" in err and "Traceback" not in err


def test_a_hooked_model_is_refused_through_the_cli(checkpoint, capsys, monkeypatch):
    """A global forward hook runs inside every module's call: no bound method may certify the
    model, and the CLI ends with the one sentence and exit code 2."""
    from torch.nn.modules.module import register_module_forward_hook

    handle = register_module_forward_hook(lambda mod, inp, out: None)
    try:
        for method, threat in (("ibp", "linf:0.01"), ("crown", "linf:0.01"),
                               ("lipschitz", "l2:0.1")):
            code, out, err = run_cli(["certify", "--checkpoint", str(checkpoint), "--method",
                                      method, "--threat", threat, "--limit", "4",
                                      "--no-progress"], capsys, monkeypatch)
            assert code == 2, err
            message = " ".join(err.split())
            assert "global module forward hook is registered" in message
            assert "Traceback" not in err and "certified accuracy" not in out
    finally:
        handle.remove()
