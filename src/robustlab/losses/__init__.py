"""Classification losses by name: ``LOSSES.build("gce", q=0.7)``.

Every loss is an ``nn.Module`` mapping ``(logits (N, K), targets (N,)) -> scalar`` (mean over the
batch unless ``reduction="none"``). Families: :mod:`~robustlab.losses.classification` (CE, focal,
label smoothing, PolyLoss), :mod:`~robustlab.losses.robust` (MAE, GCE, RCE, SCE, bootstrapping),
:mod:`~robustlab.losses.normalized` (NCE, NFL, NGCE, NMAE and the APL pairs),
:mod:`~robustlab.losses.comp_sum`, :mod:`~robustlab.losses.ldr` (LDR-KL, ALDR-KL),
:mod:`~robustlab.losses.logit_clip` (a wrapper around any loss) and
:mod:`~robustlab.losses.sparsemax`.
"""

# Loss modules register on import in LOSSES (robustlab.losses.registry); keep this list explicit.
from robustlab.losses import (  # noqa: F401
    classification,
    comp_sum,
    ldr,
    logit_clip,
    normalized,
    robust,
    sparsemax,
)
from robustlab.losses._common import build_loss, per_sample_loss_fn
from robustlab.losses.registry import LOSSES

__all__ = ["LOSSES", "build_loss", "per_sample_loss_fn"]
