"""The aggregation contract every back-end satisfies (DESIGN.md §3).

A back-end turns each client's released (prompts × dim) matrix into bytes on the client
(:class:`ClientAggregator`) and turns the bytes of the survivors into their sum on the server
(:class:`ServerAggregator`). All back-ends give the same per-prompt sum within their stated
tolerance, the same dropout behaviour (a client that never uploads is absent from the sum), and
leave their inputs unchanged. ``reveals_individual`` says whether the server sees each client's
matrix (only ``plaintext`` does), which gates the consensus operators that need them.

Rules for changing it: a new back-end lives in its own folder, subclasses these classes and
registers itself with :func:`register`; the round loop never branches on a back-end's name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from privsem.protocol.messages import RoundSpec


@dataclass(frozen=True)
class AggregateResult:
    total: np.ndarray  # (prompts, dim) float64: the sum over contributors
    contributors: tuple[str, ...]
    noise_variance: float  # per-entry variance of the noise in ``total``
    individual: Mapping[str, np.ndarray] | None  # only where the back-end reveals them
    rejected: Mapping[str, str]  # client -> reason its upload was excluded


class ClientAggregator(ABC):
    @abstractmethod
    def contribute(self, matrix: np.ndarray, *, noise_std: float) -> bytes:
        """The upload for ``matrix`` (already clipped and noised on the client)."""


class ServerAggregator(ABC):
    @abstractmethod
    def receive(self, client: str, payload: bytes) -> None:
        """Takes one client's upload; a malformed one is excluded, never summed."""

    @abstractmethod
    def finish(self) -> AggregateResult:
        """The sum of the valid uploads received."""


class AggregationBackend(ABC):
    name: str
    reveals_individual: bool

    @abstractmethod
    def client(self, spec: RoundSpec, client_id: str) -> ClientAggregator: ...

    @abstractmethod
    def server(self, spec: RoundSpec) -> ServerAggregator: ...


_REGISTRY: dict[str, Callable[[], AggregationBackend]] = {}


def register(name: str) -> Callable[[type[AggregationBackend]], type[AggregationBackend]]:
    def deco(cls: type[AggregationBackend]) -> type[AggregationBackend]:
        _REGISTRY[name] = cls
        return cls
    return deco


def get_backend(name: str) -> AggregationBackend:
    if name not in _REGISTRY:
        raise ValueError(f"aggregation backend {name!r} is unknown; use one of "
                         f"{', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()
