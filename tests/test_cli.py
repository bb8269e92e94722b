"""The CLI end to end (in-process through the real entry point): the happy path, and every bad
input ending with one sentence and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from _cli import run_cli

from robustlab.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch MLP checkpoint on digits, trained through the CLI once."""
    out = tmp_path_factory.mktemp("run")
    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "argv", ["robustlab", "train", "--model", "mlp", "--dataset", "digits",
                             "--epochs", "2", "--out", str(out), "--no-progress", "--lr", "0.05"])  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main()
    mp.undo()
    assert exc.value.code in (0, None)
    return out / "checkpoint.pt"


def test_train_evaluate_attack_happy_path(trained, tmp_path, capsys, monkeypatch):
    assert trained.exists() and (trained.parent / "metrics.jsonl").exists()
    res, rep = tmp_path / "r.json", tmp_path / "r.html"
    code, out, err = run_cli(
        ["evaluate", "--checkpoint", str(trained), "--attacks", "fgsm,pgd", "--threat", "linf:0.1",
         "--attack-arg", "pgd.steps=5", "--out", str(res), "--report", str(rep), "--no-progress"],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code in (0, None), err
    data = json.loads(res.read_text())
    assert data["clean_accuracy"] > 0.5
    assert {e["attack"] for e in data["attacks"]} >= {"fgsm", "pgd", "worst-case"}
    assert data["provenance"]["torch_version"] == torch.__version__
    assert "<img" in rep.read_text()
    adv = tmp_path / "adv.npz"
    code, out, err = run_cli(
        ["attack", "--checkpoint", str(trained), "--out", str(adv), "--threat", "l2:0.5", "--limit", "50"],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code in (0, None), err
    arrays = np.load(adv)
    assert arrays["x_adv"].shape == (50, 1, 8, 8)
    delta = (arrays["x_adv"] - arrays["x"]).reshape(50, -1)
    assert (np.linalg.norm(delta, axis=1) <= 0.5 + 1e-5).all()


def _bad_npz(tmp_path, x, y):
    path = tmp_path / f"bad{len(list(tmp_path.glob('bad*.npz')))}.npz"
    np.savez(path, x=x, y=y)
    return str(path)


def bad_cases(tmp_path, trained):
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(trained.read_bytes()[:1000])
    bare = tmp_path / "bare.pt"
    torch.save({"weight": torch.zeros(3)}, bare)
    x8 = np.random.rand(10, 8, 8, 1).astype(np.float32)
    return {
        "unknown model": (["train", "--model", "nope"], "Unknown model 'nope'"),
        "unknown dataset": (["train", "--dataset", "nope"], "Unknown dataset"),
        "unknown method": (["train", "--method", "nope"], "Unknown method"),
        "bad method arg": (["train", "--method", "pgd-at", "--method-arg", "stepz=3"], "takes no argument"),
        "negative eps": (["evaluate", "--checkpoint", str(trained), "--threat", "linf:-0.1"], "eps"),
        "unknown attack": (["evaluate", "--checkpoint", str(trained), "--attacks", "nope"], "Unknown attack"),
        "missing data dir": (["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "none")], "mnist"),
        "missing checkpoint": (["evaluate", "--checkpoint", str(tmp_path / "none.pt")], "does not exist"),
        "truncated checkpoint": (["evaluate", "--checkpoint", str(truncated)], str(truncated.name)),
        "bare state dict": (["evaluate", "--checkpoint", str(bare)], "robustlab checkpoint"),
        "out of range inputs": (
            ["train", "--dataset", "npz", "--data-dir", _bad_npz(tmp_path, x8 * 3, np.arange(10) % 3)],
            "[0, 1]",
        ),
        "nan inputs": (
            ["train", "--dataset", "npz", "--data-dir", _bad_npz(tmp_path, np.full_like(x8, np.nan), np.arange(10) % 3)],
            "NaN",
        ),
        "wrong shape": (
            ["evaluate", "--checkpoint", str(trained), "--dataset", "npz",
             "--data-dir", _bad_npz(tmp_path, np.random.rand(10, 28, 28, 1).astype(np.float32), np.arange(10))],
            "shape",
        ),
        "labels out of range": (
            ["evaluate", "--checkpoint", str(trained), "--dataset", "npz",
             "--data-dir", _bad_npz(tmp_path, x8, np.arange(10) + 5)],
            "labels up to 14",
        ),
        "bad kv": (["train", "--method-arg", "steps"], "key=value"),
        "tiny val split": (
            ["train", "--dataset", "npz", "--data-dir", _bad_npz(tmp_path, x8, np.arange(10) % 3)],
            "empty val split",
        ),
    }  # fmt: skip


def test_bad_inputs_fail_with_one_sentence(trained, tmp_path, capsys, monkeypatch):
    for label, (args, needle) in bad_cases(tmp_path, trained).items():
        code, out, err = run_cli(
            [*args, "--no-progress"] if args[0] != "attack" else args, capsys, monkeypatch
        )
        assert code not in (0, None), label
        assert "Traceback" not in err + out, label
        assert needle in " ".join(err.split()), (label, err)
        message = " ".join(err.split())
        assert message.startswith("error:") and message.count("error:") == 1, (label, err)
