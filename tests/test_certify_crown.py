"""Full CROWN's intermediate bounds (Zhang et al. 2018): before the first ReLU a network is one
affine map ``J x + b``, on which back-substitution is exact, so every neuron that IBP leaves
unstable gets the exact interval ``J c + b -+ |J| r`` of the input box (stable ones keep IBP's,
or get the exact one too where they pad another sample's rows), whatever the chunking of the backward rows and whichever path the first backward step takes
(weight gather for Linear and Conv2d, unit rows for BatchNorm, pooling and residual additions)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.certify.crown import crown
from robustlab.certify.propagation import check_spec, forward_intervals, setup
from robustlab.models.layers import Residual


def bn1d(c: int) -> nn.Module:
    bn = nn.BatchNorm1d(c)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(-2, 2)
    return bn.eval()


def nets():
    """(name, prefix up to the first ReLU's input, rest, per-sample input shape)."""
    torch.manual_seed(0)
    return {
        "linear": (nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 8)), nn.Linear(8, 3), (4,)),
        "linear-no-bias": (nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 8, bias=False)),
                           nn.Linear(8, 3), (4,)),
        "batchnorm": (nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 5), bn1d(5)), nn.Linear(5, 3),
                      (4,)),
        "conv": (nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 4, 3, stride=2,
                                                                         groups=1)),
                 nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), (2, 5, 5)),
        "grouped-conv": (nn.Sequential(nn.Conv2d(2, 4, 3, padding=1),
                                       nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2)),
                         nn.Sequential(nn.Flatten(), nn.Linear(36, 3)), (2, 3, 3)),
        "avgpool": (nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False),
                                  nn.AvgPool2d(3, stride=2, padding=1)),
                    nn.Sequential(nn.Flatten(), nn.Linear(27, 3)), (2, 5, 5)),
        "residual": (nn.Sequential(nn.Linear(4, 5), Residual(nn.Linear(5, 5))), nn.Linear(5, 3),
                     (4,)),
    }


@pytest.mark.parametrize("name", list(nets()))
@pytest.mark.parametrize("max_elements", [1, 2**24])
def test_refined_intervals_are_exact_on_the_affine_prefix(name, max_elements):
    prefix, rest, shape = nets()[name]
    model = nn.Sequential(prefix, nn.ReLU(), rest).eval()
    x = torch.rand(3, *shape)
    eps = 0.3
    lo_in, hi_in = (x - eps).clamp(0, 1).flatten(1), (x + eps).clamp(0, 1).flatten(1)
    c, r = (hi_in + lo_in) / 2, (hi_in - lo_in) / 2
    jac = torch.autograd.functional.jacobian(lambda v: prefix(v.reshape(1, *shape)).flatten(),
                                             torch.zeros(x[0].numel())).detach()
    with torch.no_grad():
        b = prefix(torch.zeros(1, *shape)).flatten()
    exact_lo, exact_hi = c @ jac.T + b - r @ jac.abs().T, c @ jac.T + b + r @ jac.abs().T
    state = setup(model, x, f"linf:{eps}")
    k = next(i for i, n in enumerate(state.graph.nodes) if type(n.op).__name__ == "ReLUOp") - 1
    forward_intervals(state)
    ibp_lo, ibp_hi = (t.flatten(1) for t in state.intervals[k])
    unstable = (ibp_lo < 0) & (ibp_hi > 0)
    counts = unstable.sum(1)
    assert counts.min() > 0
    if name == "linear":  # samples with fewer unstable neurons have their rows padded
        assert counts.max() > counts.min()
    assert ((exact_hi - exact_lo) < (ibp_hi - ibp_lo) - 1e-4).any()  # IBP is loose here
    with torch.no_grad():
        crown(state, check_spec(None, state), max_elements)
    lo, hi = (t.flatten(1) for t in state.intervals[k])
    torch.testing.assert_close(lo[unstable], exact_lo[unstable], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hi[unstable], exact_hi[unstable], atol=1e-5, rtol=1e-5)
    # stable neurons keep IBP's interval, or the exact one where they pad a sample's rows
    tol = 1e-5
    assert ((ibp_lo - tol <= lo) & (lo <= exact_lo + tol)).all()
    assert ((exact_hi - tol <= hi) & (hi <= ibp_hi + tol)).all()
