"""The plaintext back-end: no protection; the server sees every client's noisy matrix.

For baselines and trusted-server set-ups. The client-level guarantee still holds against the
server because each client adds the full noise locally. Uploads are validated at the boundary:
a frame that fails to decode, belongs to another session or round, comes from outside the
cohort, has the wrong shape or non-finite values is excluded with a reason (T30); a retransmit
of the same payload is counted once and a conflicting second payload is rejected (T10).
"""

from __future__ import annotations

import numpy as np

from privsem.aggregation.base import (
    AggregateResult,
    AggregationBackend,
    ClientAggregator,
    ServerAggregator,
    register,
)
from privsem.errors import MessageError
from privsem.protocol.messages import EmbeddingUpload, RoundSpec, decode, encode


class _Client(ClientAggregator):
    def __init__(self, spec: RoundSpec, client_id: str) -> None:
        self.spec, self.client_id = spec, client_id

    def contribute(self, matrix: np.ndarray, *, noise_std: float) -> bytes:
        return encode(EmbeddingUpload(session_id=self.spec.session_id, round=self.spec.round,
                                      client=self.client_id, noise_std=float(noise_std),
                                      matrix=np.asarray(matrix, dtype=np.float32)))


class _Server(ServerAggregator):
    def __init__(self, spec: RoundSpec) -> None:
        self.spec = spec
        self._uploads: dict[str, EmbeddingUpload] = {}
        self._raw: dict[str, bytes] = {}
        self._rejected: dict[str, str] = {}

    def _reject(self, client: str, reason: str) -> None:
        self._rejected[client] = reason
        self._uploads.pop(client, None)

    def receive(self, client: str, payload: bytes) -> None:
        if client in self._raw:
            if self._raw[client] != payload:
                self._reject(client, "conflicting second upload in one round")
            return  # a retransmit of the same payload is counted once
        self._raw[client] = payload
        try:
            up = decode(payload, EmbeddingUpload)
        except MessageError as e:
            self._reject(client, str(e))
            return
        s = self.spec
        problem = None
        if up.session_id != s.session_id or up.round != s.round:
            problem = "upload belongs to another session or round"
        elif up.client != client or client not in s.cohort:
            problem = f"upload from {up.client!r} is not from a cohort member"
        elif up.matrix.shape != (len(s.prompt_ids), s.dim):
            problem = f"matrix shape {up.matrix.shape} is not {(len(s.prompt_ids), s.dim)}"
        elif not np.all(np.isfinite(up.matrix)) or not np.isfinite(up.noise_std):
            problem = "matrix has non-finite values"
        if problem:
            self._reject(client, problem)
        else:
            self._uploads[client] = up

    def finish(self) -> AggregateResult:
        members = tuple(c for c in self.spec.cohort if c in self._uploads)
        shape = (len(self.spec.prompt_ids), self.spec.dim)
        total = np.zeros(shape, dtype=np.float64)
        var = 0.0
        for c in members:
            total += self._uploads[c].matrix.astype(np.float64)
            var += self._uploads[c].noise_std ** 2
        return AggregateResult(total=total, contributors=members, noise_variance=var,
                               individual={c: self._uploads[c].matrix.astype(np.float64)
                                           for c in members},
                               rejected=dict(self._rejected))


@register("plaintext")
class PlaintextBackend(AggregationBackend):
    name = "plaintext"
    reveals_individual = True

    def client(self, spec: RoundSpec, client_id: str) -> ClientAggregator:
        return _Client(spec, client_id)

    def server(self, spec: RoundSpec) -> ServerAggregator:
        return _Server(spec)
