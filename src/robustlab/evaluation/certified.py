"""The certified stage: certified accuracy next to the robust accuracy, at every threat whose norm
each certifier certifies (:func:`robustlab.certify.certify`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from robustlab.certify import CERTIFIERS, Certifier, certify
from robustlab.errors import RobustlabError
from robustlab.evaluation.pipeline import Context, Stage
from robustlab.threat import Threat


class CertifiedStage(Stage):
    """Certifiers by name (:data:`robustlab.certify.CERTIFIERS`: ibp, crown-ibp, crown, smoothing,
    lipschitz) with their options from ``options[name]``, each run at the ``threats`` it accepts.

    The results go in ``sections["certification"]``; the per-sample certificates (all but those of
    smoothing, which certifies the smoothed classifier only) feed the ``certified-but-broken``
    check. A certifier that accepts none of the threats is an error, raised when the stage is
    built.
    """

    name = "certified"

    def __init__(
        self,
        methods: Sequence[str],
        threats: Sequence[Threat],
        options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.runs: list[tuple[str, Threat, Certifier]] = []  # each certifier built once
        for method in methods:
            kwargs = dict((options or {}).get(method, {}))
            usable = []
            last_error = RobustlabError(f"certification with '{method}' needs at least one threat.")
            for t in threats:  # each certifier runs at the threats whose norm it certifies
                try:
                    usable.append((method, t, CERTIFIERS.get(method)(t, **kwargs)))
                except RobustlabError as err:
                    last_error = err
            if not usable:
                raise last_error
            self.runs += usable

    def run(self, ctx: Context) -> None:
        results = []
        for method, threat, certifier in self.runs:
            cert = certify(
                ctx.model, ctx.dataset, certifier, batch_size=ctx.batch_size,
                device=ctx.device, seed=ctx.seed, progress=ctx.progress,
            )  # fmt: skip
            if method != "smoothing":  # smoothing certifies the smoothed classifier only
                ctx.certified[(method, threat)] = cert.certified.cpu()
            results.append(cert.to_dict())
        ctx.sections["certification"] = results
