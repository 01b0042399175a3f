"""Aggregation back-ends behind one interface and a small registry (one folder per back-end)."""

from privsem.aggregation.base import (
    AggregateResult,
    AggregationBackend,
    ClientAggregator,
    ClientContext,
    NoisePlan,
    ServerAggregator,
    get_backend,
    register,
    run_exchanges,
)
from privsem.aggregation.masked import MaskedBackend
from privsem.aggregation.plaintext import PlaintextBackend

__all__ = [
    "AggregateResult",
    "AggregationBackend",
    "ClientAggregator",
    "ClientContext",
    "MaskedBackend",
    "NoisePlan",
    "PlaintextBackend",
    "ServerAggregator",
    "get_backend",
    "register",
    "run_exchanges",
]
