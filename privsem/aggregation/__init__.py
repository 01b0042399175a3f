"""Aggregation back-ends behind one interface and a small registry (one folder per back-end)."""

from privsem.aggregation.base import (
    AggregateResult,
    AggregationBackend,
    ClientAggregator,
    ClientContext,
    Gone,
    NoisePlan,
    RunParties,
    ServerAggregator,
    exchange,
    get_backend,
    register,
    run_exchanges,
)
from privsem.aggregation.ckks import CkksBackend
from privsem.aggregation.masked import MaskedBackend
from privsem.aggregation.plaintext import PlaintextBackend

__all__ = [
    "AggregateResult",
    "AggregationBackend",
    "CkksBackend",
    "ClientAggregator",
    "ClientContext",
    "Gone",
    "MaskedBackend",
    "NoisePlan",
    "PlaintextBackend",
    "RunParties",
    "ServerAggregator",
    "exchange",
    "get_backend",
    "register",
    "run_exchanges",
]
