"""CKKS parameters for encrypted aggregation: the 128-bit security check, packing, precision.

The (prompts × d) matrix of one client is flattened, followed by one *count slot* holding 1.0,
and packed into as few CKKS ciphertexts as N/2 slots allow. Summing n uploads sums the count
slots to n; the key holder checks that number against the contributors a decryption request
claims (:mod:`privsem.aggregation.ckks.keyholder`).

Security: the total coefficient modulus must not exceed the bound of the Homomorphic
Encryption Standard (Albrecht et al. 2018, table 1, classical 128-bit security, ternary secret)
for the ring dimension N; anything above it is refused at construction (TESTING.md T35).

Precision (T39): a fresh CKKS encryption of values at scale Δ = 2^scale_bits carries an error
per slot that, for SEAL's error distribution (σ = 3.2) and encoding, stays far below
``FRESH_ERROR_FACTOR · N / Δ`` (measured: 6.5e-9 at N = 8192, Δ = 2^40, against a bound of
1.2e-7). Additions add errors, so the sum of n uploads is within n times that of the plaintext
sum; the key holder then adds flooding noise of std ``flood_std`` and rounds to multiples of
2^-grid_bits. :meth:`CkksParams.tolerance` states the whole bound. Overflow: the sum of n
entries of magnitude at most ``value_bound`` must stay below 2^(q0 − scale_bits − 1), where q0
is the first prime's bit size; the constructor refuses parameters that break this.

Rules for changing it: the table is the standard's; never relax it. Every field is validated
in ``__post_init__`` with a message naming the field and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Homomorphic Encryption Standard (2018), table 1: max log2(q) for 128-bit classical security.
SECURITY_128: dict[int, int] = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438,
                                32768: 881}
FRESH_ERROR_FACTOR = 16.0  # fresh-encryption error per slot ≤ FRESH_ERROR_FACTOR · N / Δ
FLOOD_SIGMAS = 6.0  # the tolerance covers the flooding noise to 6 standard deviations


@dataclass(frozen=True, kw_only=True)
class CkksParams:
    """Everything the clients, the aggregator and the key holder must agree on."""

    prompts: int
    dim: int
    cohort_size: int
    value_bound: float  # |entry| of one client's noised matrix, checked before encryption
    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    scale_bits: int = 40
    flood_std: float = 2.0 ** -20  # std of the key holder's flooding noise per entry
    grid_bits: int = 16  # the release is rounded to multiples of 2^-grid_bits
    min_contributors: int = 2

    def __post_init__(self) -> None:
        n_ring, bits = self.poly_modulus_degree, self.coeff_mod_bit_sizes
        for name, v in (("prompts", self.prompts), ("dim", self.dim),
                        ("cohort_size", self.cohort_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ckks: {name} must be an integer >= 1, got {v!r}")
        if n_ring not in SECURITY_128:
            raise ValueError(f"ckks: poly_modulus_degree {n_ring} is not in the 128-bit "
                             f"security table; use one of {sorted(SECURITY_128)}")
        if len(bits) < 2 or not all(isinstance(b, int) and 20 <= b <= 60 for b in bits):
            raise ValueError(f"ckks: coeff_mod_bit_sizes {bits} must hold at least 2 primes of "
                             "20 to 60 bits (the first and last are the special primes)")
        if sum(bits) > SECURITY_128[n_ring]:
            raise ValueError(f"ckks: a coefficient modulus of {sum(bits)} bits exceeds the "
                             f"{SECURITY_128[n_ring]} bits that N = {n_ring} allows at 128-bit "
                             "security; use fewer or smaller primes, or a larger N")
        if not 20 <= self.scale_bits < bits[0]:
            raise ValueError(f"ckks: scale_bits {self.scale_bits} must be in [20, "
                             f"{bits[0]}) (below the first prime of {bits[0]} bits)")
        if self.dim > self.slots:
            raise ValueError(f"ckks: a row of d = {self.dim} entries does not fit the "
                             f"N/2 = {self.slots} slots of N = {n_ring}; use a larger "
                             "poly_modulus_degree")
        if not (math.isfinite(self.value_bound) and self.value_bound > 0):
            raise ValueError(f"ckks: value_bound must be finite and > 0, got {self.value_bound}")
        if self.cohort_size * max(self.value_bound, 1.0) >= self.headroom:
            raise ValueError(f"ckks: {self.cohort_size} clients × |entry| ≤ "
                             f"{self.value_bound:g} can exceed 2^{self.headroom_bits} = the "
                             "largest value the first prime holds above the scale (the sum "
                             "would wrap: 'scale out of bounds'); use a larger first prime or "
                             "a smaller scale")
        if not (math.isfinite(self.flood_std) and self.flood_std > 0):
            raise ValueError(f"ckks: flood_std must be finite and > 0, got {self.flood_std}")
        if not 1 <= self.grid_bits <= self.scale_bits:
            raise ValueError(f"ckks: grid_bits {self.grid_bits} must be in [1, "
                             f"scale_bits = {self.scale_bits}]")
        if not 2 <= self.min_contributors <= self.cohort_size:
            raise ValueError(f"ckks: min_contributors {self.min_contributors} must be in "
                             f"[2, {self.cohort_size}]: one contributor's aggregate is its "
                             "upload")

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def length(self) -> int:
        """Values per upload: the flattened matrix and the count slot."""
        return self.prompts * self.dim + 1

    @property
    def chunks(self) -> tuple[int, ...]:
        """Slots used by each ciphertext of an upload (all full but the last)."""
        full, rest = divmod(self.length, self.slots)
        return (self.slots,) * full + ((rest,) if rest else ())

    @property
    def headroom_bits(self) -> int:
        return self.coeff_mod_bit_sizes[0] - self.scale_bits - 1

    @property
    def headroom(self) -> float:
        return float(2 ** self.headroom_bits)

    def fresh_error(self) -> float:
        """Bound on the CKKS error per slot of one fresh encryption."""
        return FRESH_ERROR_FACTOR * self.poly_modulus_degree / 2.0 ** self.scale_bits

    def tolerance(self, contributors: int) -> float:
        """Bound on |released − plaintext sum| per entry for ``contributors`` uploads: CKKS
        error, flooding noise (to FLOOD_SIGMAS standard deviations) and the rounding."""
        return (contributors * self.fresh_error() + FLOOD_SIGMAS * self.flood_std
                + 2.0 ** -(self.grid_bits + 1))

    @classmethod
    def from_json(cls, data: Any) -> CkksParams:
        """Parameters from :meth:`to_json` output; ValueError naming what is wrong (also for
        wrong types: callers treat every invalid announcement alike)."""
        if not isinstance(data, dict):
            raise ValueError(  # noqa: TRY004
                f"ckks: parameters must be a mapping, got {type(data).__name__}")
        names = set(cls.__dataclass_fields__)
        if set(data) != names:
            raise ValueError(f"ckks: parameters must have exactly the fields {sorted(names)}, "
                             f"got {sorted(data)}")
        bits = data["coeff_mod_bit_sizes"]
        if not isinstance(bits, (list, tuple)):
            raise ValueError(  # noqa: TRY004
                f"ckks: coeff_mod_bit_sizes must be a list, got {bits!r}")
        vb, flood = data["value_bound"], data["flood_std"]
        if isinstance(vb, bool) or isinstance(flood, bool) or not (
                isinstance(vb, (int, float)) and isinstance(flood, (int, float))):
            raise ValueError("ckks: value_bound and flood_std must be numbers")  # noqa: TRY004
        return cls(**{**data, "coeff_mod_bit_sizes": tuple(bits), "value_bound": float(vb),
                      "flood_std": float(flood)})

    def to_json(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "dim": self.dim, "cohort_size": self.cohort_size,
                "value_bound": self.value_bound,
                "poly_modulus_degree": self.poly_modulus_degree,
                "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
                "scale_bits": self.scale_bits, "flood_std": self.flood_std,
                "grid_bits": self.grid_bits, "min_contributors": self.min_contributors}
