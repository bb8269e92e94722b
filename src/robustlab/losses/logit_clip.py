"""LogitClip (Wei et al., ICML 2023): clamp the norm of the logit vector before any loss.

``clip_tau(z) = z * min(1, tau / ||z||_p)`` (Eq. 4). With clipped logits the cross-entropy is
bounded (between ``log(1 + (K-1) e^{-2 tau})`` and ``log(1 + (K-1) e^{2 tau})`` for p = 2, since no
logit difference exceeds ``2 tau``), which limits how hard a noisy label can pull; the predicted
class is unchanged because clipping only rescales ``z``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.losses._common import build_loss, check_loss_inputs
from robustlab.losses.registry import LOSSES
from robustlab.validation import check_positive

# Guards the division for an all-zero logit vector (which is never clipped anyway).
NORM_FLOOR = 1e-12


def clip_logits(logits: Tensor, tau: float, p: float = 2.0) -> Tensor:
    """Rescale each row of ``logits`` to p-norm at most ``tau``: ``z * min(1, tau / ||z||_p)``."""
    norms = torch.linalg.vector_norm(logits, ord=p, dim=1, keepdim=True)
    return logits * (tau / norms.clamp_min(NORM_FLOOR)).clamp(max=1.0)


@LOSSES.register("logit-clip")
class LogitClip(nn.Module):
    """LogitClip wrapper: ``base(clip_tau(z), y)`` for any base loss, given by name or as a module.

    ``LogitClip("gce", tau=2.0, q=0.7)``: keyword arguments beyond ``tau`` and ``p`` build the
    named base loss (``reduction`` included); a module is used as it is. (The argument is called
    ``base``, not ``loss``, so that ``Standard(loss="logit-clip", base="gce")`` and the CLI's
    ``--loss logit-clip --method-arg base=gce`` can name both.)
    """

    def __init__(
        self, base: str | nn.Module = "ce", tau: float = 1.0, p: float = 2.0, **loss_kwargs
    ) -> None:
        super().__init__()
        self.tau = check_positive(tau, "tau")
        self.p = check_positive(p, "p")
        if self.p < 1:
            raise RobustlabError(f"p must be >= 1 (a norm), got {p!r}.")
        self.base = build_loss(base, **loss_kwargs)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits, target = check_loss_inputs(logits, target)
        return self.base(clip_logits(logits, self.tau, self.p), target)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, p={self.p}"
