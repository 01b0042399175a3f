"""The masked back-end: pairwise-masked secure aggregation with dropout recovery.

Bonawitz et al. 2017 ("Practical Secure Aggregation for Privacy-Preserving Machine Learning")
with the sparse neighbour graph of Bell et al. 2020 (SecAgg+), and noise in the integer domain:
a discrete Gaussian (Canonne, Kamath, Steinke 2020) added after fixed-point encoding, either the
full noise by every client (``local``) or a share each so that at least ``min_survivors``
survivors carry it (``distributed``; Kairouz, Liu, Steinke 2021). The server learns only the sum
of the survivors' noisy matrices. Layout: :mod:`.crypto` (primitives), :mod:`.shamir`,
:mod:`.graph`, :mod:`.encoding` (fixed point, parameters, no-wrap check), :mod:`.client` and
:mod:`.server` (the two state machines). Threat model: ``threat_models/masked.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dp_accounting import dp_event as ev

from privsem.aggregation.base import (
    AggregationBackend,
    ClientAggregator,
    ClientContext,
    NoisePlan,
    ServerAggregator,
    register,
)
from privsem.aggregation.masked.client import MaskedClient
from privsem.aggregation.masked.encoding import MaskingParams, derive_params
from privsem.aggregation.masked.server import MaskedServer
from privsem.protocol.messages import RoundSpec


@register("masked")
class MaskedBackend(AggregationBackend):
    name = "masked"
    reveals_individual = False

    def round_params(self, noise: NoisePlan, *, cohort_size: int, length: int,
                     settings: Any, public: Mapping[str, bytes] | None = None
                     ) -> dict[str, Any]:
        return derive_params(
            cohort_size=cohort_size, length=length, clip=noise.clip,
            noise_multiplier=noise.noise_multiplier, placement=noise.placement,
            modulus_bits=settings.modulus_bits, graph=settings.graph,
            threshold=settings.threshold, min_survivors=settings.min_survivors,
            consistency_check=settings.consistency_check).to_json()

    def planned_event(self, noise_multiplier: float, count: int) -> ev.DpEvent:
        # The discrete Gaussian at multiplier z is 1/(2z²)-zCDP per release (CKS 2020, Thm 14);
        # the client charges the exact ρ of its parameters, which never exceeds this.
        if count == 0:
            return ev.NoOpDpEvent()
        if noise_multiplier <= 0:
            return ev.NonPrivateDpEvent()
        return ev.ZCDpEvent(count / (2 * noise_multiplier ** 2))

    def client(self, ctx: ClientContext) -> ClientAggregator:
        return MaskedClient(ctx)

    def server(self, spec: RoundSpec, registry: Mapping[str, bytes],
               public: Mapping[str, bytes] | None = None) -> ServerAggregator:
        return MaskedServer(spec, registry)


__all__ = ["MaskedBackend", "MaskingParams", "derive_params"]
