"""Corruption metrics against hand-computed values; evaluation, export, gallery and CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from robustlab.corruptions import (
    CorruptionResult,
    corrupt,
    corruption_error,
    expected_calibration_error,
    flip_probability,
    gallery,
    mean_corruption_error,
    perturbation_sequence,
    relative_corruption_error,
    write_corrupted_dataset,
)
from robustlab.corruptions.sets import corrupt_chunks
from robustlab.errors import RobustlabError
from robustlab.evaluation import evaluate_corruptions


@dataclass
class Data:
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    name: str = "toy"
    classes: list | None = None


def toy(n=24, size=12):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, size, size, generator=g) * 0.5
    y = torch.arange(n) % 3
    x[y == 1, :, : size // 2] += 0.5  # class 1: bright top half
    x[y == 2, :, :, : size // 2] += 0.5  # class 2: bright left half
    return Data(x.clamp(0, 1), y, 3)


class HalfModel(nn.Module):
    """Logits from top-half and left-half brightness: a fixed classifier for the toy data."""

    def forward(self, x):
        h = x.shape[-1] // 2
        top = x[:, 0, :h].mean((1, 2))
        left = x[:, 0, :, :h].mean((1, 2))
        base = x.mean((1, 2, 3))
        return torch.stack([base * 1.05, top, left], 1) * 20


class Constant(nn.Module):
    def __init__(self, k=3):
        super().__init__()
        self.k = k
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.zeros(len(x), self.k) + self.w


def test_ece_hand_computed():
    conf = torch.tensor([0.95, 0.95, 0.55, 0.55])
    hit = torch.tensor([1, 0, 1, 1])
    # bins (0.9, 0.9667]: acc 0.5 vs conf 0.95; (0.5333, 0.6]: acc 1 vs conf 0.55
    assert expected_calibration_error(conf, hit) == pytest.approx((0.9 + 0.9) / 4)
    assert expected_calibration_error(torch.tensor([1.0, 0.0]), torch.tensor([1, 0])) == 0.0
    with pytest.raises(RobustlabError):
        expected_calibration_error(torch.tensor([1.5]), torch.tensor([1]))


def test_ce_relative_ce_and_flip_probability():
    assert corruption_error([0.2, 0.4], [0.4, 0.8]) == pytest.approx(0.5)
    assert relative_corruption_error([0.2, 0.4], 0.1, [0.4, 0.8], 0.2) == pytest.approx(0.4 / 0.8)
    assert mean_corruption_error({"a": 0.5, "b": 1.5}) == 1.0
    with pytest.raises(RobustlabError):
        corruption_error([0.2], [0.0])
    with pytest.raises(RobustlabError):
        corruption_error([0.2, 0.3], [0.4])
    p = torch.tensor([[0, 0], [1, 0], [1, 1]])
    assert flip_probability(p) == pytest.approx(2 / 4)
    assert flip_probability(p, "first") == pytest.approx(3 / 4)
    with pytest.raises(RobustlabError):
        flip_probability(p[:1])


def test_perturbation_sequence():
    x = toy(4).x
    seq = perturbation_sequence(x, "mnist-rotate", length=4, seed=1)
    assert seq.shape == (4, *x.shape) and torch.equal(seq[0], x)
    noise = perturbation_sequence(x, "mnist-shot-noise", length=3)
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise[0], x)


def test_evaluate_matches_manual_computation():
    data, model = toy(), HalfModel()
    res = evaluate_corruptions(model, data, "contrast,mnist-shot-noise", (1, 5), batch_size=10,
                               seed=3, progress=False, sequence_length=3)
    with torch.no_grad():
        assert res.clean_accuracy == pytest.approx(float((model(data.x).argmax(1) == data.y).float().mean()))
        for name in ("contrast", "mnist-shot-noise"):
            for s in (1, 5):
                hits = torch.cat([model(xb).argmax(1) == data.y[i:i + len(xb)]
                                  for i, xb in corrupt_chunks(data.x, name, s, 3, 10, torch.device("cpu"))])
                assert res.accuracy[name][str(s)] == pytest.approx(float(hits.float().mean()))
    assert res.error["contrast"] == pytest.approx(1 - (res.accuracy["contrast"]["1"] + res.accuracy["contrast"]["5"]) / 2)
    assert res.mean_error == pytest.approx((res.error["contrast"] + res.error["mnist-shot-noise"]) / 2)
    assert set(res.flip_probability) == {"contrast", "mnist-shot-noise"}
    assert res.ce is None and res.provenance["seed"] == 3
    assert model.training  # mode restored
    # the same model as its own baseline: CE = 1 and FR = 1 where defined
    again = evaluate_corruptions(model, data, "contrast,mnist-shot-noise", (1, 5), baseline=res,
                                 batch_size=10, seed=3, progress=False, sequence_length=3)
    assert all(v == pytest.approx(1.0) for v in again.ce.values()) and again.mce == pytest.approx(1.0)
    assert all(v is None or v == pytest.approx(1.0) for v in again.flip_rate.values())


SUBSET = "mnist-stripe,mnist-shear,mnist-spatter,mnist-dotted-line,mnist-impulse-noise"


def test_constant_model_closed_forms(tmp_path):
    data = toy(30)
    res = evaluate_corruptions(Constant(), data, SUBSET, "benchmark", batch_size=16,
                               progress=False, sequence_length=2)
    frac0 = float((data.y == 0).float().mean())
    assert res.severities["mnist-stripe"] == [5]
    for name in res.corruptions:
        (s,) = res.severities[name]
        assert res.accuracy[name][str(s)] == pytest.approx(frac0)
        assert res.ece[name][str(s)] == pytest.approx(abs(frac0 - 1 / 3), abs=1e-6)
        assert res.flip_probability[name] == 0.0
    # JSON round trip, baseline from a file and from an evaluation-result dict
    path = res.save(tmp_path / "c.json")
    loaded = CorruptionResult.load(path)
    assert loaded == res
    wrapped = {"sections": {"corruptions": json.loads(path.read_text())}}
    worse = evaluate_corruptions(HalfModel(), data, SUBSET, "benchmark", baseline=wrapped,
                                 batch_size=16, progress=False, sequence_length=0)
    base_err = 1 - frac0
    for name in worse.corruptions:
        assert worse.ce[name] == pytest.approx(worse.errors(name)[0] / base_err)
    assert worse.flip_rate is None


def test_evaluate_bad_inputs():
    data = toy(6)
    with pytest.raises(RobustlabError, match="severity"):
        evaluate_corruptions(Constant(), data, "contrast", (0,), progress=False)
    with pytest.raises(RobustlabError, match="benchmark"):
        evaluate_corruptions(Constant(), data, "contrast", "benchmark", progress=False)
    with pytest.raises(RobustlabError, match="known"):
        evaluate_corruptions(Constant(), data, "nope", progress=False)
    res = evaluate_corruptions(Constant(), data, "contrast", (1,), progress=False, sequence_length=0)
    with pytest.raises(RobustlabError, match="severity 2"):
        evaluate_corruptions(Constant(), data, "contrast", (1, 2), baseline=res, progress=False)
    with pytest.raises(RobustlabError, match="schema"):
        evaluate_corruptions(Constant(), data, "contrast", (1,), baseline={"x": 1}, progress=False)


def test_write_corrupted_dataset_roundtrip(tmp_path):
    from robustlab.data import load_dataset

    data = toy(12)
    manifest = write_corrupted_dataset(data, tmp_path, "mnist-rotate,contrast", (2,), seed=4,
                                       batch_size=5, progress=False)
    info = json.loads(manifest.read_text())
    assert info["files"]["contrast"]["2"] == "contrast-2.npz"
    ds = load_dataset("npz", split="test", data_dir=str(tmp_path / "mnist-rotate-2.npz"))
    assert ds.x.shape == data.x.shape and torch.equal(ds.y, data.y) and ds.num_classes == 3
    expected = torch.cat([xb for _, xb in corrupt_chunks(data.x, "mnist-rotate", 2, 4, 5,
                                                         torch.device("cpu"))])
    assert torch.allclose(ds.x, torch.round(expected * 255) / 255, atol=1e-6)
    before = (tmp_path / "contrast-2.npz").stat().st_mtime_ns
    write_corrupted_dataset(data, tmp_path, "mnist-rotate,contrast", (2,), seed=4, batch_size=5,
                            progress=False)
    assert (tmp_path / "contrast-2.npz").stat().st_mtime_ns == before  # resumed, not rewritten


def test_gallery_png(tmp_path):
    path = gallery(toy(1).x, "mnist-stripe,fog", tmp_path / "g.png", severities=(1, 5))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_corrupt(tmp_path):
    from robustlab.cli import app

    runner = CliRunner()
    out = tmp_path / "out"
    r = runner.invoke(app, ["corrupt", "digits", "--limit", "10", "-c", "mnist-shear", "-s", "2",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "gallery.png").is_file() and (out / "mnist-shear-2.npz").is_file()
    with np.load(out / "mnist-shear-2.npz") as f:
        assert f["x"].dtype == np.uint8 and f["x"].shape == (10, 1, 8, 8)
    r = runner.invoke(app, ["corrupt", "digits", "-s", "9", "--out", str(out)])
    assert isinstance(r.exception, RobustlabError) and "severity" in str(r.exception)


def test_corrupt_is_device_agnostic_on_cpu():
    x = toy(2).x
    assert torch.equal(corrupt(x, "snow", 2, seed=1), corrupt(x.clone(), "snow", 2, seed=1))
