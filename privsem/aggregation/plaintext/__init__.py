"""The plaintext back-end: no protection; the server sees every client's noisy matrix.

For baselines and trusted-server set-ups. The client-level guarantee still holds against the
server because each client adds the full Gaussian noise locally (placement ``local`` only).
Uploads are validated at the boundary: a frame that fails to decode, belongs to another session
or round, comes from outside the cohort, has the wrong shape or non-finite values is excluded
with a reason (T30); a retransmit of the same payload is counted once and a conflicting second
payload is rejected (T10).

Norm bound (T31): an honest upload is a matrix of Frobenius norm at most C plus Gaussian noise
of std σ = z·C in each of its k = prompts·d entries, whose norm exceeds σ(√k + t) with
probability at most exp(−t²/2) (Lipschitz concentration). The server excludes any upload above
C + σ(√k + 8) (an honest client fails with probability below e^-32), which bounds what f
Byzantine clients can do to the mean: it moves by at most 2·B·f/n in Frobenius norm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from dp_accounting import dp_event as ev

from privsem.aggregation.base import (
    AggregateResult,
    AggregationBackend,
    ClientAggregator,
    ClientContext,
    NoisePlan,
    ServerAggregator,
    UploadInbox,
    register,
)
from privsem.errors import ProtocolAbort
from privsem.privacy.analysis import gaussian_event
from privsem.protocol.messages import EmbeddingUpload, RoundSpec, encode

STAGE = "upload"
NORM_SIGMAS = 8.0  # the concentration margin t of the upload norm bound


def upload_norm_bound(spec: RoundSpec) -> float:
    """The largest Frobenius norm an honest client's noisy upload reaches, but for a chance
    below exp(−NORM_SIGMAS²/2): C + z·C·(√k + NORM_SIGMAS), with a float32 margin."""
    z, clip = _noise(spec)
    k = len(spec.prompt_ids) * spec.dim
    return (clip + z * clip * (math.sqrt(k) + NORM_SIGMAS)) * (1 + 1e-6)


def _noise(spec: RoundSpec) -> tuple[float, float]:
    p = spec.params.get("aggregation", {})
    try:
        return float(p["noise_multiplier"]), float(p["clip"])
    except (KeyError, TypeError, ValueError):
        raise ProtocolAbort("plaintext: round parameters lack noise_multiplier/clip") from None


class _Client(ClientAggregator):
    mechanism = "embedding_gaussian"

    def __init__(self, ctx: ClientContext) -> None:
        self.ctx = ctx
        self.z, self.clip = _noise(ctx.spec)
        self.stats: dict[str, Any] = {"noise_std": self.z * self.clip}

    def release_event(self) -> tuple[ev.DpEvent, dict[str, Any]]:
        return gaussian_event(noise_multiplier=self.z), {
            "noise_multiplier": self.z, "clip": self.clip, "noise_std": self.z * self.clip}

    def add_noise(self, clipped: np.ndarray) -> np.ndarray:
        noisy = clipped + self.ctx.randomness.gaussian(clipped.shape, self.z * self.clip)
        return noisy.astype(np.float32)

    def send(self, noisy: np.ndarray) -> bytes:
        s = self.ctx.spec
        if (noisy.dtype != np.float32 or noisy.shape != (len(s.prompt_ids), s.dim)
                or not np.all(np.isfinite(noisy))):
            raise ProtocolAbort(f"client {self.ctx.client_id}: release of shape {noisy.shape} "
                                f"and dtype {noisy.dtype} is not a finite float32 "
                                f"({len(s.prompt_ids)}, {s.dim}) matrix")
        return encode(EmbeddingUpload(session_id=s.session_id, round=s.round,
                                      client=self.ctx.client_id, noise_std=self.z * self.clip,
                                      matrix=noisy))

    def respond(self, request: bytes) -> bytes | None:
        raise ProtocolAbort(f"client {self.ctx.client_id}: the plaintext back-end has no "
                            "further stages")


class _Server(ServerAggregator):
    stage = STAGE

    def __init__(self, spec: RoundSpec) -> None:
        self.spec = spec
        self._inbox = UploadInbox(spec, EmbeddingUpload)
        self._bound = upload_norm_bound(spec)

    def receive(self, client: str, payload: bytes) -> None:
        up = self._inbox.take(client, payload)
        if up is None:
            return
        s = self.spec
        problem = None
        if up.matrix.shape != (len(s.prompt_ids), s.dim):
            problem = f"matrix shape {up.matrix.shape} is not {(len(s.prompt_ids), s.dim)}"
        elif not np.all(np.isfinite(up.matrix)) or not np.isfinite(up.noise_std):
            problem = "matrix has non-finite values"
        elif (norm := float(np.linalg.norm(up.matrix.astype(np.float64)))) > self._bound:
            problem = (f"matrix norm {norm:.4g} exceeds {self._bound:.4g}, the most an "
                       "honest clipped and noised upload reaches (a Byzantine upload, T31)")
        if problem:
            self._inbox.reject(client, problem)
        else:
            self._inbox.accepted[client] = up

    def next_requests(self) -> dict[str, bytes]:
        self._inbox.close()
        return {}

    def finish(self) -> AggregateResult:
        uploads, rejected = self._inbox.accepted, self._inbox.rejected
        members = self._inbox.members()
        shape = (len(self.spec.prompt_ids), self.spec.dim)
        total = np.zeros(shape, dtype=np.float64)
        var = 0.0
        for c in members:
            total += uploads[c].matrix.astype(np.float64)
            var += uploads[c].noise_std ** 2
        return AggregateResult(total=total, contributors=members, noise_variance=var,
                               individual={c: uploads[c].matrix.astype(np.float64)
                                           for c in members},
                               rejected=dict(rejected),
                               dropped=tuple(c for c in rejected if c not in members))


@register("plaintext")
class PlaintextBackend(AggregationBackend):
    name = "plaintext"
    reveals_individual = True

    def round_params(self, noise: NoisePlan, *, cohort_size: int, length: int,
                     settings: Any, public: Mapping[str, bytes] | None = None
                     ) -> dict[str, Any]:
        if noise.placement != "local":
            raise ValueError("plaintext: only local noise placement is possible without secure "
                             "aggregation")
        return {"noise_multiplier": noise.noise_multiplier, "clip": noise.clip}

    def planned_event(self, noise_multiplier: float, count: int) -> ev.DpEvent:
        return gaussian_event(noise_multiplier=noise_multiplier, count=count)

    def client(self, ctx: ClientContext) -> ClientAggregator:
        return _Client(ctx)

    def server(self, spec: RoundSpec, registry: Mapping[str, bytes],
               public: Mapping[str, bytes] | None = None) -> ServerAggregator:
        return _Server(spec)
