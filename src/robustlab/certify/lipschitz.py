"""Lipschitz-margin certification (Tsuzuku et al. 2018; Hu et al. 2023, "Unlocking deterministic
robustness certification on ImageNet" -- LiResNet and EMMA).

A network that is ``L``-Lipschitz in L2 cannot change its prediction within radius
``margin / (sqrt(2) L)``: the margin ``z_y - z_j`` is ``sqrt(2) L``-Lipschitz. When the last layer
is linear, ``z_y - z_j = (w_y - w_j) h + (b_y - b_j)`` is ``||w_y - w_j||_2 L_h``-Lipschitz, with
``L_h`` the bound of the feature map ``h`` -- never larger than ``sqrt(2) ||W|| L_h`` -- and this
per-pair constant ``K_yj`` is what is used (Hu et al. 2023, Section 3).

``L_h`` is the product of per-layer bounds along the graph (a residual addition adds its
branches' bounds): ReLU, Flatten 1; elementwise affine layers (Normalize, BatchNorm) the largest
``|scale|``; Linear the exact spectral norm (SVD); Conv2d the spectral norm of the circular
convolution on the zero-padded domain, computed exactly per frequency with the FFT (Sedghi et al.
2019) -- the zero-padded, strided convolution is a restriction of it, so this is an upper bound.
A LiResNet block ``x + conv(x)`` (Hu et al. 2023, eq. 4) is bounded as one convolution whose
kernel has the identity added at its centre tap, much tighter than ``1 + ||conv||``.

Power iteration (``W^T W`` applied repeatedly; for convolutions with ``conv2d`` and
``conv_transpose2d``) converges to the spectral norm from below: it is the cheap, differentiable
estimate used during training (EMMA), not a certificate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.certify.graph import Graph, compile_model, model_output, verify_graph
from robustlab.certify.liresnet import LiResNetBlock as LiResNetBlock  # re-exported
from robustlab.certify.operators import (
    AddOp,
    AffineOp,
    ConvOp,
    LinearOp,
    ReLUOp,
    ScaleOp,
    WeightOp,
)
from robustlab.errors import RobustlabError
from robustlab.threat import Threat
from robustlab.validation import check_inputs, check_int, check_labels


@dataclass(frozen=True)
class LinearMap:
    """A mixing linear map of the graph: ``op`` alone, or ``x + op(x)`` when ``residual``."""

    node: int
    op: WeightOp
    residual: bool
    in_shape: tuple[int, ...]

    def apply(self, v: Tensor) -> Tensor:
        out = self.op.linear(v)
        return out + v if self.residual else out

    def apply_t(self, a: Tensor) -> Tensor:
        out = self.op.transpose(a.unsqueeze(1)).squeeze(1)
        return out + a if self.residual else out


NormFn = Callable[[LinearMap], Tensor]


def _residual_body(graph: Graph, k: int) -> tuple[int, int] | None:
    """For an addition ``op(q) + q`` with a shape-preserving mixing ``op``: (op node, q)."""
    a, b = graph.nodes[k].inputs
    for p, q in ((a, b), (b, a)):
        node = graph.nodes[p]
        if (isinstance(node.op, WeightOp) and node.inputs == (q,)
                and node.shape == graph.nodes[q].shape and len(graph.consumers[p]) == 1):
            return p, q
    return None


def graph_lipschitz(graph: Graph, norm_fn: NormFn, upto: int | None = None) -> Tensor:
    """Lipschitz bound (L2) of the map from the input to node ``upto`` (default: the output),
    multiplying ``norm_fn`` of each mixing map along the graph."""
    end = graph.output if upto is None else upto
    ref = next((n.op.weight for n in graph.nodes if isinstance(n.op, WeightOp)), None)
    one = torch.ones((), dtype=ref.dtype if ref is not None else torch.float32,
                     device=ref.device if ref is not None else None)
    lip: list[Tensor | None] = [one] + [None] * end
    for k, node in enumerate(graph.nodes[1 : end + 1], 1):
        op = node.op
        if isinstance(op, AddOp):
            pair = _residual_body(graph, k)
            if pair is not None:
                p, q = pair
                lm = LinearMap(p, graph.nodes[p].op, True, graph.nodes[q].shape)
                lip[k] = norm_fn(lm) * lip[q]
            else:
                lip[k] = lip[node.inputs[0]] + lip[node.inputs[1]]
        elif isinstance(op, ReLUOp):
            lip[k] = lip[node.inputs[0]]
        elif isinstance(op, ScaleOp):
            if op.per_sample:
                raise RobustlabError("per-sample scales have no single Lipschitz constant.")
            lip[k] = op.scale.abs().max() * lip[node.inputs[0]]
        elif isinstance(op, WeightOp):
            lm = LinearMap(k, op, False, graph.nodes[node.inputs[0]].shape)
            lip[k] = norm_fn(lm) * lip[node.inputs[0]]
        elif isinstance(op, AffineOp):  # reshape
            lip[k] = lip[node.inputs[0]]
        else:  # pragma: no cover - compile_model only emits the ops above
            raise RobustlabError(f"no Lipschitz bound for {op.kind}.")
    return lip[end]


# ------------------------------------------------------------------------- sound per-map bounds
def _dense_kernel(op: ConvOp, residual: bool) -> Tensor:
    """The (C_out, C_in, kh, kw) kernel of a (grouped, dilated) convolution, plus the identity at
    the tap that reads the output position itself when ``residual``."""
    w = op.weight
    cout, cin_g, kh, kw = w.shape
    g = op.groups
    if g > 1:
        dense = w.new_zeros(cout, cin_g * g, kh, kw)
        per = cout // g
        for i in range(g):
            dense[i * per : (i + 1) * per, i * cin_g : (i + 1) * cin_g] = w[i * per : (i + 1) * per]
        w = dense
    dh, dw = op.dilation
    if dh > 1 or dw > 1:
        dil = w.new_zeros(w.shape[0], w.shape[1], dh * (kh - 1) + 1, dw * (kw - 1) + 1)
        dil[:, :, ::dh, ::dw] = w
        w = dil
    if residual:
        ph, pw = op.padding
        if (op.stride != (1, 1) or w.shape[0] != w.shape[1] or ph >= w.shape[2]
                or pw >= w.shape[3]):
            raise RobustlabError("a residual convolution must keep the shape (stride 1).")
        eye = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
        w = w.clone()
        w[:, :, ph, pw] = w[:, :, ph, pw] + eye
    return w


def conv_spectral_bound(op: ConvOp, in_shape: tuple[int, ...], residual: bool = False) -> Tensor:
    """Upper bound of the spectral norm of a zero-padded, strided convolution.

    The input padded to ``(H + 2p) x (W + 2p)`` (rounded up to a multiple of the stride) is
    embedded in a torus; on it the convolution never wraps for the outputs that exist, so the
    zero-padded map is a restriction of the circular one. A stride-``s`` circular convolution is,
    after the polyphase split of the input (a permutation), a stride-1 circular convolution with
    ``s_h s_w`` times the input channels on the grid divided by ``s``; its singular values are
    those of the ``C_out x (C_in s_h s_w)`` kernel spectra at each frequency (Sedghi et al. 2019,
    Theorem 6). The largest of them is returned.
    """
    w = _dense_kernel(op, residual)
    cout, cin, kh, kw = w.shape
    sh, sw = op.stride
    n_h = -(-max(in_shape[1] + 2 * op.padding[0], kh) // sh) * sh
    n_w = -(-max(in_shape[2] + 2 * op.padding[1], kw) // sw) * sw
    grid = F.pad(w, (0, n_w - kw, 0, n_h - kh))  # kernel on the torus
    phases = grid.reshape(cout, cin, n_h // sh, sh, n_w // sw, sw).permute(0, 1, 3, 5, 2, 4)
    phases = phases.reshape(cout, cin * sh * sw, n_h // sh, n_w // sw)
    spectrum = torch.fft.fft2(phases)
    mats = spectrum.permute(2, 3, 0, 1).reshape(-1, cout, cin * sh * sw)
    return torch.linalg.matrix_norm(mats, ord=2).max()


def spectral_bound(lm: LinearMap) -> Tensor:
    """Sound upper bound of the spectral norm of one mixing map (exact for Linear)."""
    op = lm.op
    if isinstance(op, LinearOp):
        w = op.weight
        if lm.residual:
            w = w + torch.eye(w.shape[0], w.shape[1], dtype=w.dtype, device=w.device)
        return torch.linalg.matrix_norm(w, ord=2)
    return conv_spectral_bound(op, lm.in_shape, lm.residual)


# ------------------------------------------------------------------------- power iteration
class PowerIteration(nn.Module):
    """Spectral-norm estimates by power iteration, keeping one vector per map between calls
    (warm starts, as in spectral normalisation; Miyato et al. 2018). The vectors are buffers, so
    they are checkpointed with a training method that owns this module."""

    def __init__(self, iterations: int = 10, seed: int = 0) -> None:
        super().__init__()
        self.iterations = check_int(iterations, "iterations")
        self.seed = seed

    def forward(self, lm: LinearMap) -> Tensor:
        key = f"v{lm.node}{'r' if lm.residual else ''}"
        w = lm.op.weight
        v = self._buffers.get(key)
        if v is None or v.shape[1:] != lm.in_shape:
            gen = torch.Generator().manual_seed(self.seed + lm.node)
            v = torch.randn((1, *lm.in_shape), generator=gen, dtype=w.dtype).to(w.device)
            self.register_buffer(key, v)
        with torch.no_grad():
            for _ in range(self.iterations):
                v = lm.apply_t(lm.apply(v))
                v = v / v.norm().clamp_min(1e-12)
            self._buffers[key].copy_(v)
        return lm.apply(v).norm()  # differentiable in the weights


def power_iteration_norm(lm: LinearMap, iterations: int = 100, seed: int = 0) -> Tensor:
    """A one-off power-iteration estimate (a lower bound of the spectral norm)."""
    return PowerIteration(iterations, seed)(lm)


# ------------------------------------------------------------------------- certificates
@dataclass
class LipschitzCertificate:
    """Per-input Lipschitz-margin certificate."""

    logits: Tensor  # (N, K)
    pair_constants: Tensor  # (N, K) K_yj: Lipschitz constant of z_y - z_j (0 at j = y)
    radius: Tensor  # (N,) certified L2 radius (0 when misclassified)
    lipschitz: float  # Lipschitz bound of the whole network

    def margin_lower(self, y: Tensor, eps_l2: float) -> Tensor:
        """Lower bounds (N, K) of ``z_y - z_j`` over the L2 ball of radius ``eps_l2``."""
        z = self.logits
        return z.gather(1, y[:, None]) - z - eps_l2 * self.pair_constants


def network_constants(graph: Graph, norm_fn: NormFn) -> tuple[Tensor | None, Tensor]:
    """``(L of the features before a final Linear layer or None, L of the whole network)``."""
    last = graph.nodes[graph.output]
    if isinstance(last.op, LinearOp):
        feat = graph_lipschitz(graph, norm_fn, last.inputs[0])
        w = last.op.weight
        return feat, norm_fn(LinearMap(graph.output, last.op, False, (w.shape[1],))) * feat
    return None, graph_lipschitz(graph, norm_fn)


def pair_constants(graph: Graph, labels: Tensor, feature: Tensor | None, total: Tensor) -> Tensor:
    """``K_yj`` (N, K), the Lipschitz constant of ``z_y - z_j`` for ``y = labels`` (0 at j = y):
    ``||w_y - w_j||_2 * L(features)`` with a final Linear layer, ``sqrt(2) L`` otherwise."""
    last = graph.nodes[graph.output]
    if feature is not None:
        w = last.op.weight
        return (w[labels].unsqueeze(1) - w.unsqueeze(0)).norm(dim=2) * feature
    const = math.sqrt(2.0) * total * torch.ones(labels.shape[0], last.shape[0],
                                                 dtype=total.dtype, device=total.device)
    return const.scatter(1, labels[:, None], 0.0)


class LipschitzCertifier:
    """Sound Lipschitz constants of an eval-mode ``model`` (computed once) and per-input
    certificates: radius ``min_{j != y} (z_y - z_j) / K_yj`` clipped at 0, for labels ``y`` (0
    when misclassified), or for the predicted classes without labels.

    The constants are those of the compiled graph, so every call first checks that the graph
    still computes ``model`` on the batch (:func:`~robustlab.certify.graph.verify_graph`: no
    hook added since, the same parameters, the same outputs); the margins are the model's own.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        self.model = model
        self.graph = compile_model(model, tuple(input_shape))
        if self.graph.uses_batch_statistics():
            raise RobustlabError(
                "Lipschitz certification needs BatchNorm in eval mode; call model.eval() first."
            )
        with torch.no_grad():
            self.feature, self.total = network_constants(self.graph, spectral_bound)

    def __call__(self, x: Tensor, y: Tensor | None = None, *, logits: Tensor | None = None
                 ) -> LipschitzCertificate:
        """Certificates for the batch ``x``; ``logits`` is ``model(x)`` when the caller has it."""
        check_inputs(x)
        with torch.no_grad():
            if logits is None:
                logits = model_output(self.model, x)
            verify_graph(self.graph, self.model, x, logits=logits)
            if y is None:
                labels = logits.argmax(1)
            else:
                labels = check_labels(y, x.shape[0], logits.shape[1])
            consts = pair_constants(self.graph, labels, self.feature, self.total)
            gap = logits.gather(1, labels[:, None]) - logits
            # K_yj = 0: the margin is constant, never crossed if positive, already lost if not
            ratio = torch.where(consts > 0, gap / consts.clamp_min(1e-30),
                                torch.full_like(gap, float("inf")).masked_fill(gap <= 0, 0.0))
            radius = ratio.scatter(1, labels[:, None], float("inf")).min(1).values.clamp_min(0)
        return LipschitzCertificate(logits, consts, radius, float(self.total))


def lipschitz_certify(model: nn.Module, x: Tensor, y: Tensor | None = None) -> LipschitzCertificate:
    """One-off :class:`LipschitzCertifier` on a batch."""
    return LipschitzCertifier(model, tuple(x.shape[1:]))(x, y)


def l2_radius(threat: Threat, input_shape: tuple[int, ...]) -> float:
    """The L2 radius that contains the threat's ball: ``eps`` for L2, ``eps * sqrt(d)`` for Linf."""
    if threat.norm == "l2":
        return threat.eps
    if threat.norm == "linf":
        return threat.eps * math.sqrt(math.prod(input_shape))
    raise RobustlabError(f"Lipschitz certification supports linf and l2 threats, got '{threat}'.")


# ------------------------------------------------------------------------- EMMA
def emma_logits(logits: Tensor, y: Tensor, consts: Tensor, eps: float) -> Tensor:
    """EMMA (Hu et al. 2023, Section 4): raise each non-target logit by ``eps_j K_yj``, where
    ``eps_j = clip((z_y - z_j) / (eps K_yj), 0.01, 1) * eps`` (no gradient through ``eps_j``) is
    how far the input is from that class's boundary, at most ``eps``."""
    gap = logits.gather(1, y[:, None]) - logits
    scale = (gap / (eps * consts).clamp_min(1e-8)).clamp(0.01, 1.0).detach()
    return logits + scale * eps * consts


def emma_loss(logits: Tensor, y: Tensor, consts: Tensor, eps: float) -> Tensor:
    """Cross-entropy on :func:`emma_logits`."""
    return F.cross_entropy(emma_logits(logits, y, consts, eps), y)
