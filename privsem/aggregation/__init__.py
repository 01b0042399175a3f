"""Aggregation back-ends behind one interface and a small registry (one folder per back-end)."""

from privsem.aggregation.base import (
    AggregateResult,
    AggregationBackend,
    ClientAggregator,
    ServerAggregator,
    get_backend,
    register,
)
from privsem.aggregation.plaintext import PlaintextBackend

__all__ = [
    "AggregateResult",
    "AggregationBackend",
    "ClientAggregator",
    "PlaintextBackend",
    "ServerAggregator",
    "get_backend",
    "register",
]
