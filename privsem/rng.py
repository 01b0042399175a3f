"""The one module that owns randomness in privsem.

Rules for changing it:
- Nothing on a privacy path draws from global ``np.random``, ``random`` or an unseeded torch
  generator. Every consumer asks this module for an explicit generator.
- :class:`SeededRandomness` is for simulations and tests: reproducible under a seed, *not* for
  deployments (an adversary who learns the seed can subtract the noise).
- :class:`SecureRandomness` draws from OS entropy (``secrets``/``os.urandom``); Gaussian noise is
  produced by Box-Muller from CSPRNG uniforms, and torch generators are seeded from 256 bits of
  OS entropy (Opacus' DP-SGD noise is floating-point Gaussian: a documented residual risk).
- Integer noise for masked secure aggregation is the discrete Gaussian
  (:meth:`Randomness.discrete_gaussian`), sampled by
  :func:`privsem.privacy.discrete_gaussian.sample_discrete_gaussian` from this module's 53-bit
  uniforms (:meth:`Randomness.uniform`): OS entropy in secure mode, PCG64 when seeded.
- Seeds for independent streams are derived with SHA-256 from the root seed and a label, so that
  adding a stream never shifts another.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from abc import ABC, abstractmethod

import numpy as np
import torch

from privsem.privacy.discrete_gaussian import sample_discrete_gaussian

_BITS53 = 1 << 53


def derive_seed(root: int, *labels: object) -> int:
    """A 64-bit seed for the stream named by ``labels`` under ``root`` (SHA-256, domain-separated)."""
    h = hashlib.sha256(b"privsem/seed/v1")
    h.update(int(root).to_bytes(16, "little", signed=True))
    for label in labels:
        data = str(label).encode()
        h.update(len(data).to_bytes(4, "little") + data)
    return int.from_bytes(h.digest()[:8], "little")


class Randomness(ABC):
    """Source of noise and sampling randomness for one party."""

    secure: bool

    @abstractmethod
    def gaussian(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        """Float64 samples from N(0, std²)."""

    @abstractmethod
    def uniform(self, n: int) -> np.ndarray:
        """``n`` float64 uniforms k / 2**53 in the open interval (0, 1), k uniform in [1, 2**53)."""

    def discrete_gaussian(self, shape: tuple[int, ...], sigma: float) -> np.ndarray:
        """int64 samples from the discrete Gaussian N_Z(0, sigma²) (Canonne et al. 2020, Alg. 3)."""
        return sample_discrete_gaussian(sigma, shape, self.uniform)

    @abstractmethod
    def torch_generator(self, *labels: object) -> torch.Generator:
        """A torch generator for the stream named by ``labels`` (Opacus noise, Poisson sampling)."""

    @abstractmethod
    def seed_for(self, *labels: object) -> int:
        """A 64-bit seed for non-privacy streams (generation sampling)."""


class SeededRandomness(Randomness):
    """Reproducible randomness for simulations and tests. Not for deployments."""

    secure = False

    def __init__(self, seed: int, *labels: object) -> None:
        self._root = derive_seed(seed, *labels)
        self._np = np.random.Generator(np.random.PCG64(self._root))

    def gaussian(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        if std < 0:
            raise ValueError(f"gaussian: std must be >= 0, got {std}")
        return self._np.normal(0.0, std, size=shape) if std > 0 else np.zeros(shape)

    def uniform(self, n: int) -> np.ndarray:
        k = self._np.integers(1, _BITS53, size=_check_n(n), dtype=np.int64)
        return k.astype(np.float64) / _BITS53

    def torch_generator(self, *labels: object) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(derive_seed(self._root, "torch", *labels) & ((1 << 63) - 1))
        return g

    def seed_for(self, *labels: object) -> int:
        return derive_seed(self._root, "seed", *labels)


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"uniform: n must be an integer >= 0, got {n!r}")
    return int(n)


def _uniform_open01(n: int) -> np.ndarray:
    """``n`` uniforms k / 2**53 in the open interval (0, 1), k uniform in [1, 2**53), from
    ``os.urandom``.

    k is the top 53 bits of 64 CSPRNG bits, redrawn where it is 0. Every k / 2**53 is an exact
    float64 (``(k + 0.5) / 2**53`` is not: it rounds to 1.0 at the top of the range).
    """
    k = np.frombuffer(os.urandom(8 * _check_n(n)), dtype=np.uint64) >> np.uint64(11)
    zero = np.flatnonzero(k == 0)
    while zero.size:  # probability 2**-53 per value
        k[zero] = np.frombuffer(os.urandom(8 * zero.size), dtype=np.uint64) >> np.uint64(11)
        zero = zero[k[zero] == 0]
    return k.astype(np.float64) / _BITS53


class SecureRandomness(Randomness):
    """Randomness from OS entropy. Gaussian noise by Box-Muller over CSPRNG uniforms."""

    secure = True

    def gaussian(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        if std < 0:
            raise ValueError(f"gaussian: std must be >= 0, got {std}")
        n = int(np.prod(shape)) if shape else 1
        if std == 0 or n == 0:
            return np.zeros(shape)
        m = (n + 1) // 2
        u1, u2 = _uniform_open01(m), _uniform_open01(m)
        r = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])[:n]
        return (z * std).reshape(shape)

    def uniform(self, n: int) -> np.ndarray:
        return _uniform_open01(n)

    def torch_generator(self, *labels: object) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(secrets.randbits(63))
        return g

    def seed_for(self, *labels: object) -> int:
        return secrets.randbits(64)


def secret_bytes(n: int = 32) -> bytes:
    """Key material and nonces (a ledger's MAC key, a run's nonce): always OS entropy, whatever
    the run's randomness setting, so a seeded simulation never has guessable keys."""
    if not 16 <= n <= 1024:
        raise ValueError(f"secret_bytes: n must be in [16, 1024], got {n}")
    return secrets.token_bytes(n)


def make_randomness(kind: str, seed: int, *labels: object) -> Randomness:
    """``kind`` is ``"seeded"`` (simulation) or ``"os"`` (deployment)."""
    if kind == "seeded":
        return SeededRandomness(seed, *labels)
    if kind == "os":
        return SecureRandomness()
    raise ValueError(f"randomness kind must be 'seeded' or 'os', got {kind!r}")
