"""Trust by construction: fast paths only where proven equal to the plain path (exact layer types,
no hooks, a run-time comparison) and recorded; every returned point contained; attacks called
inside ``torch.no_grad()``; channels-last never breaks a model that calls ``.view``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _attack_models import data, linear_model, mlp
from torch import nn

from robustlab.attacks import APGD, FAB, PGD, Attack, AutoAttack, Square, incremental
from robustlab.attacks.base import AttackContainmentError
from robustlab.attacks.incremental import IncrementalForward
from robustlab.models import build_model
from robustlab.runtime import kernels
from robustlab.runtime.fastpaths import FELL_BACK, USED, agree, merge_fast_paths
from robustlab.runtime.kernels import set_fast_kernels


def _lenet() -> nn.Sequential:
    torch.manual_seed(0)
    return build_model("lenet", (1, 28, 28)).eval()


def _square_both_ways(model, x, y, queries=60):
    return [
        Square("linf:0.3", queries=queries, seed=0, incremental=flag).run(model, x, y)
        for flag in (True, False)
    ]


@pytest.fixture
def patches_pay(monkeypatch):
    """The patch path at a few points (the cost rule would keep such small batches whole)."""
    monkeypatch.setattr(IncrementalForward, "min_block_macs", 0)


# --------------------------------------------------------------------------- incremental forward
class WeirdReLU(nn.ReLU):
    """A ReLU subclass that is not pointwise: each activation also sees its left neighbour."""

    def forward(self, x):
        return F.relu(x + x.roll(1, -1))


def test_a_relu_subclass_is_not_taken_for_a_pointwise_layer(patches_pay):
    model = _lenet()
    model[1] = WeirdReLU()
    x = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    inc = IncrementalForward.of(model, (1, 28, 28), None)
    assert type(inc.tail[0]) is WeirdReLU  # the block stops before it: the tail runs it whole
    fast, whole = _square_both_ways(model, x, y)
    assert torch.equal(fast.x_adv, whole.x_adv) and torch.equal(fast.success, whole.success)


def test_a_forward_replaced_on_the_instance_is_refused(patches_pay):
    model = _lenet()
    model[1].forward = lambda z: F.relu(z + z.roll(1, -1))  # still exactly an nn.ReLU
    assert "replaces its forward" in IncrementalForward.build(model, (1, 28, 28), None)
    x = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    fast, whole = _square_both_ways(model, x, model(x).argmax(1))
    assert torch.equal(fast.x_adv, whole.x_adv)
    assert fast.extras["fast_paths"]["incremental_forward"].startswith("refused: module 1")


def _hook_in_the_tail(model):
    model[6][3].register_forward_hook(lambda m, i, o: o * 2)  # a submodule of a submodule


def _hook_on_the_model(model):
    model.register_forward_pre_hook(lambda m, i: (i[0] * 0.5,))


def _full_backward_hook(model):
    model[0].register_full_backward_hook(lambda m, gi, go: None)


@pytest.mark.parametrize("hook", [_hook_in_the_tail, _hook_on_the_model, _full_backward_hook])
def test_hooks_on_any_module_are_refused(hook, patches_pay):
    model = nn.Sequential(*_lenet()[:6], nn.Sequential(*_lenet()[6:]))  # nested tail
    hook(model)
    assert "has hooks" in IncrementalForward.build(model, (1, 28, 28), None)
    x = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    fast, whole = _square_both_ways(model, x, model(x).argmax(1))
    assert torch.equal(fast.x_adv, whole.x_adv)
    assert "has hooks" in fast.extras["fast_paths"]["incremental_forward"]


def test_global_module_hooks_are_refused(patches_pay):
    model = _lenet()
    x = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    # a global pre-hook that halves every convolution's input: the incremental block, which calls
    # F.conv2d directly, would skip it
    handle = nn.modules.module.register_module_forward_pre_hook(
        lambda m, i: (i[0] * 0.5,) if isinstance(m, nn.Conv2d) else None
    )
    try:
        y = model(x).argmax(1)
        fast, whole = _square_both_ways(model, x, y)
    finally:
        handle.remove()
    assert torch.equal(fast.x_adv, whole.x_adv)
    assert (
        fast.extras["fast_paths"]["incremental_forward"]
        == "refused: global module hooks are registered"
    )


def _corrupt_patches(monkeypatch):
    scatter = incremental._scatter_windows
    monkeypatch.setattr(incremental, "_scatter_windows", lambda x, t, l, v: scatter(x, t, l, v + 1))


def _corrupt_reset(monkeypatch):
    whole = IncrementalForward._whole_block
    monkeypatch.setattr(IncrementalForward, "_whole_block", lambda self, x: whole(self, x) * 1.5)


@pytest.mark.parametrize(
    "corrupt, kind", [(_corrupt_patches, "patch query"), (_corrupt_reset, "reset")]
)
def test_a_wrong_incremental_forward_is_caught_and_falls_back(corrupt, kind, monkeypatch):
    monkeypatch.setattr(IncrementalForward, "min_block_macs", 0)
    model = _lenet()
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    whole = Square("linf:0.3", queries=60, seed=0, incremental=False).run(model, x, y)
    corrupt(monkeypatch)
    fast = Square("linf:0.3", queries=60, seed=0).run(model, x, y)
    status = fast.extras["fast_paths"]["incremental_forward"]
    assert status.startswith(f"{FELL_BACK}: {kind}: outputs differ")
    assert torch.equal(fast.success, whole.success)
    assert torch.allclose(fast.x_adv, whole.x_adv)
    assert fast.forward_passes == whole.forward_passes  # checks are not counted as queries


def test_a_proven_incremental_forward_is_recorded_as_used(patches_pay):
    model = _lenet()
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    res = Square("linf:0.3", queries=60, seed=0).run(model, x, model(x).argmax(1))
    assert res.extras["fast_paths"]["incremental_forward"] == USED
    off = Square("linf:0.3", queries=5, incremental=False).run(model, x, model(x).argmax(1))
    assert off.extras["fast_paths"]["incremental_forward"] == "not used: incremental=False"


# --------------------------------------------------------------------------- channels-last
class ViewNet(nn.Module):
    """A CIFAR-shaped model whose forward flattens a conv output with ``.view`` (fails on a
    channels-last tensor), or with ``.reshape`` (works on any layout)."""

    def __init__(self, flatten: str = "view") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.pool = nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2)
        self.fc, self.flatten = nn.Linear(8 * 16 * 16, 10), flatten

    def forward(self, x):
        z = self.pool(torch.relu(self.conv(x)))
        return self.fc(getattr(z, self.flatten)(z.shape[0], -1))


@pytest.mark.parametrize("attack", [PGD("linf:8/255", steps=3, seed=0), APGD("l2:0.5", steps=4)])
def test_channels_last_falls_back_for_a_model_that_calls_view(attack):
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    view, reshape = ViewNet("view").eval(), ViewNet("reshape").eval()
    y = view(x).argmax(1)
    res = attack.run(view, x, y)
    ref = attack.run(reshape, x, y)
    assert res.extras["fast_paths"]["channels_last"].startswith(f"{FELL_BACK}: RuntimeError: view")
    assert ref.extras["fast_paths"]["channels_last"] == USED
    assert res.extras["fast_paths"]["fast_kernels"] == USED  # proven on its own
    assert torch.allclose(res.x_adv, ref.x_adv, atol=1e-6)


class LayoutDependent(nn.Module):
    """Gives other logits for a non-contiguous input (channels-last): must not be trusted."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x if x.is_contiguous() else x.flip(-1).contiguous())


class Contiguous(nn.Module):
    def forward(self, x):
        return x.contiguous()


def test_channels_last_with_other_logits_falls_back_to_the_plain_path():
    inner = ViewNet("reshape").eval()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = inner(x).argmax(1)
    attack = PGD("linf:8/255", steps=3, seed=0)
    res = attack.run(LayoutDependent(inner), x, y)
    assert res.extras["fast_paths"]["channels_last"].startswith(f"{FELL_BACK}: outputs differ")
    # the plain path: the inner model on NCHW inputs, fast kernels as proven
    plain = attack.run(nn.Sequential(Contiguous(), inner), x, y)
    assert torch.equal(res.x_adv, plain.x_adv)


# --------------------------------------------------------------------------- fast kernels
def test_wrong_fast_kernels_are_caught_and_fall_back(monkeypatch):
    model = _lenet()
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    attack = PGD("linf:0.1", steps=3, seed=0)
    set_fast_kernels(False)
    try:
        ref = attack.run(model, x, y)
    finally:
        set_fast_kernels(True)
    assert ref.extras["fast_paths"]["fast_kernels"] == "not used: switched off"
    tiled = kernels._tiled_max  # pooling without gradients, off by 0.5
    monkeypatch.setattr(kernels, "_tiled_max", lambda *a: tiled(*a) + 0.5)
    flipped = dict(kernels._INPUT_GRADIENTS)  # first-layer input gradients, doubled
    for name, fn in flipped.items():
        monkeypatch.setitem(kernels._INPUT_GRADIENTS, name, lambda *a, fn=fn: 2 * fn(*a))
    res = attack.run(model, x, y)
    assert res.extras["fast_paths"]["fast_kernels"].startswith(FELL_BACK)
    assert torch.equal(res.x_adv, ref.x_adv)  # the plain kernels throughout
    fresh = PGD("linf:0.1")  # calls without gradients are proven on their own
    with torch.no_grad():
        assert torch.equal(fresh._predict(model, x), model(x))
    assert fresh._fast_paths.fast_kernels.startswith(f"{FELL_BACK}: outputs differ")


def test_wrong_input_gradients_alone_are_caught(monkeypatch):
    model = _lenet()
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for name, fn in dict(kernels._INPUT_GRADIENTS).items():
        monkeypatch.setitem(kernels._INPUT_GRADIENTS, name, lambda *a, fn=fn: 2 * fn(*a))
    attack = PGD("linf:0.1", steps=2, seed=0)
    res = attack.run(model, x, model(x).argmax(1))
    assert "input gradients differ" in res.extras["fast_paths"]["fast_kernels"]


class Counting(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_a_model_the_kernels_never_touch_gets_no_extra_call():
    model, x = Counting(mlp()), data(10)
    y = model.inner(x).argmax(1)
    res = PGD("linf:0.01", steps=4, seed=0).run(model, x, y)
    assert res.extras["fast_paths"] == {
        "fast_kernels": "not used: no layer it reroutes",
        "channels_last": "not used: the inputs are not CPU images",
        "incremental_forward": "not reached",
    }
    assert model.calls * len(x) == res.forward_passes  # every call a counted, full-batch call


def test_a_model_is_proven_once_until_its_structure_changes():
    model = Counting(ViewNet("reshape").eval())
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = model.inner(x).argmax(1)
    attack = PGD("linf:8/255", steps=2, seed=0)
    attack.run(model, x, y)
    model.calls = 0
    res = attack.run(model, x, y)  # proven before: no probe call
    assert model.calls * len(x) == res.forward_passes
    assert res.extras["fast_paths"]["channels_last"] == USED  # the statuses of the proof
    # a hook that flattens with .view changes the structure: proven again, and refused
    model.inner.conv.register_forward_hook(lambda m, i, o: o.view(len(o), -1).view(o.shape))
    res = attack.run(model, x, y)
    assert model.calls * len(x) > res.forward_passes
    assert res.extras["fast_paths"]["channels_last"].startswith(f"{FELL_BACK}: RuntimeError")


def test_agreement_is_float_rounding_only():
    a = torch.tensor([[1.0, -3.0, float("inf")], [2.0, float("nan"), 0.5]])
    assert agree(a.clone(), a)
    assert agree(a * (1 + 1e-6), a)  # rounding of reordered sums
    assert not agree(a * (1 + 1e-3), a)
    assert not agree(a.nan_to_num(posinf=5.0), a)  # an infinity lost
    assert not agree(a[:1], a)
    assert merge_fast_paths({"fast_kernels": USED}, {"fast_kernels": f"{FELL_BACK}: x"}) == {
        "fast_kernels": f"{FELL_BACK}: x",
        "channels_last": "not reached",
        "incremental_forward": "not reached",
    }


# --------------------------------------------------------------------------- grad mode
def test_fab_and_autoattack_run_inside_no_grad():
    model, x = mlp(), data(12)
    y = model(x).argmax(1)
    small = {"apgd-ce": {"steps": 5}, "apgd-t": {"steps": 3, "n_targets": 2},
             "fab-t": {"steps": 3, "n_target_classes": 2}, "square": {"queries": 10}}  # fmt: skip
    for make in (
        lambda: FAB(norm="l2", steps=5, seed=0),
        lambda: AutoAttack("linf:0.1", seed=0, attack_args=small),
    ):
        ref = make().run(model, x, y)
        with torch.no_grad():
            res = make().run(model, x, y)
        assert torch.equal(res.x_adv, ref.x_adv) and torch.equal(res.success, ref.success)
    with torch.no_grad():
        x_adv = FAB(norm="linf", steps=3).maximize(model, x, y)
    assert x_adv.shape == x.shape


# --------------------------------------------------------------------------- containment
class Overshoot(Attack):
    """A broken attack: one signed-gradient step of 2 eps, neither projected nor clipped."""

    name = "overshoot"

    def __init__(self, threat, clip: bool = False) -> None:
        super().__init__(threat, seed=0)
        self.clip = clip

    def perturb(self, model, x, y, target, generator):
        _, _, grad = self.loss_gradient(model, x, y)
        x_adv = x + 2 * self.threat.eps * grad.sign()
        return x_adv.clamp(0, 1) if self.clip else x_adv


@pytest.mark.parametrize("clip", [False, True])  # out of the box, or only out of the ball
def test_a_point_outside_the_ball_is_an_internal_error(clip):
    model, x = linear_model(d=16, k=3), data(20, 16)
    y = model(x).argmax(1)
    with pytest.raises(AttackContainmentError, match=r"overshoot returned \d+ of 20 points"):
        Overshoot("linf:0.1", clip=clip).run(model, x, y)


class Boxless(Attack):
    """A minimal-norm attack without eps: only the [0, 1] box binds it."""

    name = "boxless"
    minimal_norm = True
    default_norm = "l2"

    def __init__(self, shift: float) -> None:
        super().__init__(None)
        self.shift = shift

    def perturb(self, model, x, y, target, generator):
        far = 1 - x  # far from x, in the box
        far[:, 0] = 1 + self.shift  # one coordinate ``shift`` past the box
        return far


def test_minimal_norm_attacks_without_a_threat_are_held_to_the_box():
    model, x = linear_model(d=16, k=3), data(20, 16)
    y = model(x).argmax(1)
    res = Boxless(0.0).run(model, x, y)
    assert res.success.any() and (res.norms > 1).any()  # large norms are fine
    with pytest.raises(AttackContainmentError, match=r"outside \[0, 1\] \(largest violation 0.5\)"):
        Boxless(0.5).run(model, x, y)


# --------------------------------------------------------------------------- evaluation provenance
def test_evaluation_provenance_says_which_fast_paths_each_attack_took(tmp_path):
    from robustlab.data import ArrayDataset
    from robustlab.evaluation import EvaluationResult, evaluate

    model = ViewNet("view").eval()
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dataset = ArrayDataset(x, model(x).argmax(1), 10, "toy")
    result = evaluate(
        model, dataset, ["pgd", "square"], ["linf:8/255"], batch_size=4, progress=False,
        checks=False, attack_kwargs={"pgd": {"steps": 2}, "square": {"queries": 5}},
    )  # fmt: skip
    paths = EvaluationResult.load(result.save(tmp_path / "r.json")).provenance["fast_paths"]
    assert paths["pgd linf:8/255"]["channels_last"].startswith(f"{FELL_BACK}: RuntimeError")
    assert paths["pgd linf:8/255"]["fast_kernels"] == USED
    assert paths["square linf:8/255"]["incremental_forward"] == (
        "refused: the model is a ViewNet, not a plain nn.Sequential"
    )
