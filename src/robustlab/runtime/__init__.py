"""The ground floor every other package stands on: how a model is run.

- :mod:`~robustlab.runtime.modes`: :func:`eval_mode` (every submodule in eval mode for a while);
- :mod:`~robustlab.runtime.predict`: batched logits and predicted labels;
- :mod:`~robustlab.runtime.devices`: which device a model runs on;
- :mod:`~robustlab.runtime.distributed`: data parallelism and sharded evaluation over
  ``torch.distributed``;
- :mod:`~robustlab.runtime.kernels`: faster exact CPU kernels, and
  :mod:`~robustlab.runtime.fastpaths`: the policy that takes a fast path only once it is proven
  equal to the plain one on the model at hand, and the record of which paths ran (provenance).

Nothing here imports from the rest of robustlab except ``errors`` and ``validation``.
"""

from robustlab.runtime.devices import model_device
from robustlab.runtime.modes import eval_mode
from robustlab.runtime.predict import batched_logits, predict

__all__ = ["batched_logits", "eval_mode", "model_device", "predict"]
