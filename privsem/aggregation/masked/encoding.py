"""Fixed-point encoding and the parameters of a masked round, checked so the sum never wraps.

A client's clipped matrix ``x`` (Frobenius norm ≤ C, so every entry is in [−C, C]) becomes the
integer vector ``round(s·x)`` (deterministic rounding), noise is added in the integer domain, the
result is clipped to ``[−R, R]`` (counted, never wrapped) and stored mod ``M = 2^b``. The sum of
``n`` such vectors lies in ``[−nR, nR]``; it decodes uniquely iff ``2nR < M``, which
:class:`MaskingParams` checks at construction (TESTING.md T12). Decoding maps the modular sum
back to signed integers and divides by ``s``; ``s`` is a power of two so that inputs on the grid
``k/s`` round-trip bit for bit.

Sensitivity in the integer domain (add/remove one client): ``‖round(s·x)‖₂ ≤ s·C + √D/2`` for a
D-entry vector, since rounding moves each entry by at most 1/2 (Kairouz, Liu, Steinke 2021, §4
discuss the same inflation with randomised rounding). The discrete Gaussian of std
``z·(s·C + √D/2)`` on it is a Gaussian mechanism of multiplier ``z`` in zCDP (Canonne, Kamath,
Steinke 2020, Thm 14); with distributed placement each client adds a share of variance
``σ²/m`` and the sum of at least ``m`` shares is accounted with Kairouz et al.'s bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from privsem.aggregation.masked.crypto import word_dtype
from privsem.privacy.discrete_gaussian import ddg_zcdp

NOISE_TAIL = 10.0  # R covers the noise up to this many standard deviations
MIN_SCALE_BITS = 8  # below 2^8 the rounding error would rival the signal
PLACEMENTS = ("local", "distributed")
GRAPHS = ("complete", "harary")


@dataclass(frozen=True, kw_only=True)
class MaskingParams:
    """Everything every party must agree on for one masked round (bound into the session id)."""

    cohort_size: int
    length: int  # D = prompts × dim
    modulus_bits: int
    scale: float  # s, a power of two
    value_range: int  # R: encoded values lie in [−R, R]
    clip: float  # C, the Frobenius bound of a client's matrix
    noise_multiplier: float  # z of the planned Gaussian mechanism
    noise_sigma: float  # std of the discrete Gaussian each client adds (integer domain)
    placement: str  # "local" (each client the full noise) or "distributed"
    degree: int  # k neighbours per client in the masking graph
    threshold: int  # t shares (out of k + 1 holders) recover a secret
    min_survivors: int  # m: fewer live clients at any stage aborts; noise shares in "distributed"
    consistency_check: bool

    def __post_init__(self) -> None:
        n, M = self.cohort_size, 1 << self.modulus_bits if 1 <= self.modulus_bits <= 64 else 0
        if not 1 <= self.modulus_bits <= 64:
            raise ValueError(f"masking: modulus_bits must be in [1, 64], got {self.modulus_bits}")
        if n < 3:
            raise ValueError(f"masking: a cohort of {n} clients cannot be masked (at least 3 are "
                             "needed: with 2, the sum reveals the other's input)")
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise ValueError(f"masking: clip must be finite and > 0, got {self.clip}")
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ValueError(f"masking: scale must be finite and > 0, got {self.scale}")
        if not 1 <= self.value_range < M:
            raise ValueError(f"masking: value range {self.value_range} must be in [1, M) with "
                             f"M = 2^{self.modulus_bits}")
        if 2 * n * self.value_range >= M:
            raise ValueError(
                f"masking: {n} clients × range ±{self.value_range} can wrap modulo "
                f"2^{self.modulus_bits} (needs 2·n·R < M); use more modulus bits or fewer "
                "clients")
        if self.value_range < self.scale * self.clip:
            raise ValueError(f"masking: range {self.value_range} does not hold scale × clip "
                             f"= {self.scale * self.clip}")
        if not (self.noise_sigma >= 0 and math.isfinite(self.noise_sigma)):
            raise ValueError(f"masking: noise_sigma must be finite and >= 0, got "
                             f"{self.noise_sigma}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"masking: placement must be one of {PLACEMENTS}, got "
                             f"{self.placement!r}")
        if not 1 <= self.degree <= n - 1:
            raise ValueError(f"masking: degree {self.degree} must be in [1, {n - 1}]")
        holders = self.degree + 1
        if self.threshold >= holders:
            raise ValueError(f"masking: threshold t={self.threshold} must be below the number of "
                             f"shares ({holders}), or no dropout can be tolerated")
        if 2 * self.threshold <= holders:
            raise ValueError(f"masking: threshold t={self.threshold} is below the security floor "
                             f"(t > {holders}/2, so the server never gets both shares of a "
                             "client)")
        if not 2 <= self.min_survivors <= n:
            raise ValueError(f"masking: min_survivors {self.min_survivors} must be in [2, {n}]")
        if self.degree == n - 1 and self.min_survivors < self.threshold:
            raise ValueError(f"masking: min_survivors {self.min_survivors} is below the "
                             f"threshold {self.threshold} of the complete graph")

    @property
    def modulus(self) -> int:
        return 1 << self.modulus_bits

    @property
    def noise_shares(self) -> int:
        """How many clients' noise the released sum carries at least."""
        return 1 if self.placement == "local" else self.min_survivors

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of one client's encoded vector (integer domain)."""
        return self.scale * self.clip + math.sqrt(self.length) / 2

    def zcdp(self) -> float:
        """ρ of the released sum for one client (add/remove), given at least ``noise_shares``."""
        if self.noise_sigma == 0:
            return math.inf
        return ddg_zcdp(l2_sensitivity=self.sensitivity, sigma=self.noise_sigma,
                        shares=self.noise_shares, dim=self.length)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def derive_params(*, cohort_size: int, length: int, clip: float, noise_multiplier: float,
                  modulus_bits: int, placement: str, graph: str, threshold: float,
                  min_survivors: float, consistency_check: bool) -> MaskingParams:
    """The largest power-of-two scale that cannot wrap, and the noise that meets ``z``.

    ``threshold`` and ``min_survivors`` are fractions (of a client's share holders and of the
    cohort). Raises ValueError naming the fix when ``modulus_bits`` leave too little precision.
    """
    n = cohort_size
    if graph not in GRAPHS:
        raise ValueError(f"masking: graph must be one of {GRAPHS}, got {graph!r}")
    if placement not in PLACEMENTS:
        raise ValueError(f"masking: placement must be one of {PLACEMENTS}, got {placement!r}")
    degree = n - 1 if graph == "complete" else harary_degree(n)
    holders = degree + 1
    t = max(holders // 2 + 1, math.ceil(threshold * holders - 1e-9))
    m = max(2, math.ceil(min_survivors * n - 1e-9))
    if degree == n - 1:
        m = max(m, t)
    shares = 1 if placement == "local" else m
    # R = s·C + 1 + tail·σ with σ = z·(s·C + √D/2)/√shares·(1 + 1e-6): solve for the largest s.
    half = (1 << (modulus_bits - 1)) - 1 if modulus_bits >= 1 else 0
    r_max = half // n
    zs = noise_multiplier * (1 + 1e-6) / math.sqrt(shares)
    bound = (r_max - 3 - NOISE_TAIL * zs * math.sqrt(length) / 2) / (clip * (1 + NOISE_TAIL * zs))
    if bound < 2 ** MIN_SCALE_BITS:
        raise ValueError(
            f"masking: {modulus_bits} modulus bits leave a fixed-point scale below "
            f"2^{MIN_SCALE_BITS} for {n} clients with clip {clip} and noise multiplier "
            f"{noise_multiplier}; raise aggregation.masked.modulus_bits")
    scale = float(2 ** math.floor(math.log2(bound)))
    sigma = noise_sigma_for(noise_multiplier=noise_multiplier, scale=scale, clip=clip,
                            length=length, shares=shares)
    value_range = math.ceil(scale * clip + 1 + NOISE_TAIL * sigma)
    return MaskingParams(cohort_size=n, length=length, modulus_bits=modulus_bits, scale=scale,
                         value_range=value_range, clip=clip, noise_multiplier=noise_multiplier,
                         noise_sigma=sigma, placement=placement, degree=degree, threshold=t,
                         min_survivors=m, consistency_check=consistency_check)


def noise_sigma_for(*, noise_multiplier: float, scale: float, clip: float, length: int,
                    shares: int) -> float:
    """Per-client discrete-Gaussian std such that ``shares`` of them give ρ ≤ 1/(2z²)."""
    if noise_multiplier == 0:
        return 0.0
    delta = scale * clip + math.sqrt(length) / 2
    target = 1 / (2 * noise_multiplier ** 2)
    sigma = noise_multiplier * delta / math.sqrt(shares) * (1 + 1e-9)
    for _ in range(200):
        if ddg_zcdp(l2_sensitivity=delta, sigma=sigma, shares=shares, dim=length) <= target:
            return sigma
        sigma *= 1 + 1e-6
    raise ValueError(f"masking: no noise std meets z={noise_multiplier} with {shares} shares")


def harary_degree(n: int) -> int:
    """SecAgg+ neighbourhood size: even, about 3·log2(n), at most n − 1 (Bell et al. 2020)."""
    k = 2 * math.ceil(1.5 * math.log2(max(n, 2)))
    return min(n - 1, k)


def encode_matrix(clipped: np.ndarray, noise: np.ndarray, params: MaskingParams
                  ) -> tuple[np.ndarray, float]:
    """(flattened words mod 2^b, fraction of entries clipped to ±R) for one client."""
    q = np.rint(clipped.reshape(-1) * params.scale).astype(np.int64) + noise.reshape(-1)
    R = params.value_range
    clipped_n = int(np.count_nonzero((q > R) | (q < -R)))
    np.clip(q, -R, R, out=q)
    # Two's complement masked to b bits is the residue mod 2^b.
    words = (q.astype(np.uint64) & np.uint64(params.modulus - 1)).astype(
        word_dtype(params.modulus_bits))
    return words, clipped_n / max(q.size, 1)


def decode_sum(words: np.ndarray, params: MaskingParams) -> np.ndarray:
    """Signed integer sum (int64) from the modular sum of up to ``cohort_size`` encodings."""
    v = words.astype(np.uint64) & np.uint64(params.modulus - 1)
    half = params.modulus // 2
    if params.modulus_bits == 64:
        return v.view(np.int64).copy()
    signed = v.astype(np.int64)
    neg = signed >= half
    signed[neg] -= half  # two steps of M/2: M itself may not fit in int64 (b = 63)
    signed[neg] -= half
    return signed
