"""The masking graph: who shares keys and masks with whom (Bell et al. 2020, SecAgg+).

Clients are placed on a ring in an order derived from the session id (SHA-256), so no party can
choose its neighbours, and each is joined to its ``k/2`` nearest on either side: a Harary graph
H(k, n), k-regular and symmetric. With ``k = n − 1`` it is the complete graph of Bonawitz et
al. 2017. Every client computes the graph itself from the roster; nothing here is trusted from
the server.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def ring_order(clients: Sequence[str], session_id: str) -> list[str]:
    """The clients in a pseudo-random order fixed by the session id."""
    def key(c: str) -> bytes:
        return hashlib.sha256(f"privsem/secagg/ring/{session_id}/{c}".encode()).digest()
    return sorted(clients, key=key)


def neighbours(clients: Sequence[str], degree: int, session_id: str) -> dict[str, frozenset[str]]:
    """Each client's ``degree`` neighbours (itself excluded)."""
    n = len(clients)
    if len(set(clients)) != n:
        raise ValueError("graph: client ids must be distinct")
    if not 1 <= degree <= n - 1:
        raise ValueError(f"graph: degree {degree} must be in [1, {n - 1}]")
    if degree == n - 1:
        return {c: frozenset(x for x in clients if x != c) for c in clients}
    if degree % 2:
        raise ValueError(f"graph: a sparse Harary graph needs an even degree, got {degree}")
    order = ring_order(clients, session_id)
    half = degree // 2
    out: dict[str, set[str]] = {c: set() for c in clients}
    for i, c in enumerate(order):
        for d in range(1, half + 1):
            a, b = order[(i + d) % n], order[(i - d) % n]
            out[c].update((a, b))
    return {c: frozenset(v) for c, v in out.items()}

