"""Shamir t-of-n secret sharing over the prime field GF(2^521 − 1) (Shamir 1979).

A 32-byte secret is one field element (the field is larger than 2^256, so no secret is reduced).
Share ``x`` is the evaluation at ``x`` of a random polynomial of degree ``t − 1`` whose constant
term is the secret; any ``t`` shares give it back by Lagrange interpolation at 0, fewer reveal
nothing. Coefficients come from OS entropy (``secrets``). Pure functions; the caller chooses the
evaluation points (distinct, non-zero) and the threshold.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Mapping, Sequence

PRIME = 2**521 - 1  # a Mersenne prime
ELEMENT_BYTES = 66


def split(secret: bytes, *, points: Sequence[int], threshold: int) -> dict[int, bytes]:
    """Shares of ``secret`` (≤ 65 bytes) at ``points``; any ``threshold`` of them recover it."""
    if len(secret) > ELEMENT_BYTES - 1:
        raise ValueError(f"shamir: secret of {len(secret)} bytes is too long")
    if len(set(points)) != len(points) or any(not 0 < x < PRIME for x in points):
        raise ValueError("shamir: evaluation points must be distinct and non-zero")
    if not 1 <= threshold <= len(points):
        raise ValueError(f"shamir: threshold {threshold} must be in [1, {len(points)}]")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME)
                                                for _ in range(threshold - 1)]
    shares = {}
    for x in points:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y.to_bytes(ELEMENT_BYTES, "big")
    return shares


@functools.lru_cache(maxsize=4096)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange coefficients λ_i with f(0) = Σ λ_i f(x_i); cached, since a server recovering
    many secrets from the same holders reuses them (O(t) per secret instead of O(t²))."""
    out = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(out)


def combine(shares: Mapping[int, bytes], *, threshold: int, length: int = 32) -> bytes:
    """The secret from at least ``threshold`` shares (Lagrange interpolation at 0)."""
    if len(shares) < threshold:
        raise ValueError(f"shamir: {len(shares)} shares cannot recover a {threshold}-of-n secret")
    pts = sorted(shares.items())[:threshold]
    xs = [x for x, _ in pts]
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("shamir: share points must be distinct and non-zero")
    secret = 0
    for lam, (_, yb) in zip(lagrange_at_zero(tuple(xs)), pts):
        if len(yb) != ELEMENT_BYTES:
            raise ValueError(f"shamir: share of {len(yb)} bytes, expected {ELEMENT_BYTES}")
        yi = int.from_bytes(yb, "big")
        if yi >= PRIME:
            raise ValueError("shamir: share value outside the field")
        secret = (secret + yi * lam) % PRIME
    if secret >= 1 << (8 * length):
        raise ValueError("shamir: shares are inconsistent (recovered value is too large)")
    return secret.to_bytes(length, "big")
