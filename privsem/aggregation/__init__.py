"""Aggregation back-ends behind one interface and a small registry (one folder per back-end)."""

from privsem.aggregation.base import (
    AggregateResult,
    AggregationBackend,
    ClientAggregator,
    ClientContext,
    NoisePlan,
    RunParties,
    ServerAggregator,
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
    "MaskedBackend",
    "NoisePlan",
    "PlaintextBackend",
    "RunParties",
    "ServerAggregator",
    "get_backend",
    "register",
    "run_exchanges",
]
