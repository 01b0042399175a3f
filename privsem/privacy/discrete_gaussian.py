"""The discrete Gaussian: a vectorised sampler, its exact pmf, and the zCDP of a sum of shares.

Pure, stateless functions; randomness comes in as a ``uniform(n)`` callable supplied by
:mod:`privsem.rng` (the only module that owns randomness), so the same code serves the seeded
simulation generator and the OS-entropy one.

- Sampler: Canonne, Kamath, Steinke 2020, "The Discrete Gaussian for Differential Privacy"
  (NeurIPS 2020, arXiv:2004.00010), Algorithm 3 (rejection from a discrete Laplace proposal),
  with the discrete Laplace drawn as in their Algorithm 2, vectorised over numpy arrays.
- Accounting: Kairouz, Liu, Steinke 2021, "The Distributed Discrete Gaussian Mechanism for
  Federated Learning with Secure Aggregation" (ICML 2021, arXiv:2102.06387), Proposition 14 /
  Eq. 17: the Rényi divergence of a sum of ``n`` independent discrete Gaussians per coordinate.

Rules for changing this module: keep it free of state and of any generator; every probability
the sampler realises must stay a float64 comparison against a fresh uniform (no branch on a
value derived from the secret input); the accounting must never return less than the bound it
cites, so any new term enters through ``min`` of valid bounds, never by replacing one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

# The sampler consumes uniforms of the form k / 2**53 with k uniform in [1, 2**53) (what
# privsem.rng supplies); k is recovered exactly as u * 2**53 for the integer-uniform step.
_GRID = float(1 << 53)
_GRID_VALUES = (1 << 53) - 1  # how many values k - 1 takes: 0 .. 2**53 - 2
# Above this the integers |Y| < 37 t of a candidate would approach 2**53, where float64 stops
# representing them exactly; 2**47 ≈ 1.4e14 is far beyond any noise scale used in practice.
MAX_SIGMA = float(2**47)
MAX_BATCHES = 1000
_DRAWS_PER_CANDIDATE = 3


def _check_sigma(sigma: float, where: str) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where}: sigma must be a real number, got {sigma!r}")
    value = float(sigma)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: sigma must be finite and >= 0, got {sigma!r}")
    if value > MAX_SIGMA:
        raise ValueError(f"{where}: sigma must be <= 2**47 (float64 keeps the samples exact "
                         f"integers only below that), got {sigma!r}")
    return value


def _draw(uniform: Callable[[int], np.ndarray], n: int) -> np.ndarray:
    u = np.asarray(uniform(n), dtype=np.float64)
    if u.shape != (n,):
        raise ValueError(f"sample_discrete_gaussian: uniform({n}) returned shape {u.shape}, "
                         f"expected ({n},)")
    if not bool(np.all((u > 0.0) & (u < 1.0))):
        raise ValueError("sample_discrete_gaussian: uniform() returned values outside the open "
                         "interval (0, 1)")
    return u


def _candidates(sigma: float, t: int, m: int,
                uniform: Callable[[int], np.ndarray]) -> np.ndarray:
    """``m`` candidate rounds of CKS Algorithm 3; returns the accepted samples, in order."""
    u = _draw(uniform, _DRAWS_PER_CANDIDATE * m).reshape(_DRAWS_PER_CANDIDATE, m)
    # Discrete Laplace with scale t (CKS Algorithm 2): magnitude X = R + t*V is geometric with
    # ratio exp(-1/t) when R in {0..t-1} has P(R=r) ∝ exp(-r/t) and V ~ Geometric(ratio e^-1).
    # R and the sign come from one 53-bit integer k - 1 (uniform on 2**53 - 1 values): reject
    # the incomplete last block of 2t values, then R = j mod t and the sign = parity of j // t
    # are exactly uniform and independent. R's weight exp(-r/t) is applied below.
    j = (u[0] * _GRID).astype(np.int64) - 1  # (m,) uniform on [0, 2**53 - 1)
    keep = j < (_GRID_VALUES // (2 * t)) * (2 * t)
    r = j % t
    negative = ((j // t) & 1) == 1
    # V: inverse CDF, P(V >= v) = exp(-v); at most 36 because u >= 2**-53.
    v = np.floor(-np.log(u[1])).astype(np.int64)
    x = r + t * v  # (m,) magnitude, at most 37 t < 2**53
    keep &= ~(negative & (x == 0))  # Algorithm 2 rejects (B = 1, X = 0) so 0 is not doubled
    # One Bernoulli for both acceptance steps: exp(-r/t) (Algorithm 2) times
    # exp(-(|Y| - sigma²/t)² / (2 sigma²)) (Algorithm 3), the latter written as
    # (|Y|/sigma - sigma/t)² / 2 so that sigma² cannot underflow for tiny sigma. A rejection at
    # either step restarts from a fresh proposal, so merging them leaves the output law as is.
    with np.errstate(over="ignore"):  # tiny sigma: (x/sigma)² = inf, exp(-inf) = 0, rejected
        log_accept = r / t + 0.5 * np.square(x / sigma - sigma / t)
    keep &= u[2] < np.exp(-log_accept)
    return np.where(negative, -x, x)[keep]


def sample_discrete_gaussian(sigma: float, shape: tuple[int, ...],
                             uniform: Callable[[int], np.ndarray]) -> np.ndarray:
    """int64 samples of shape ``shape`` from the discrete Gaussian N_Z(0, sigma²).

    N_Z(0, sigma²) puts mass proportional to exp(-y²/(2 sigma²)) on every integer y. The
    algorithm is Canonne, Kamath, Steinke 2020 (arXiv:2004.00010), Algorithm 3: with
    t = floor(sigma) + 1, draw Y from the discrete Laplace with scale t and accept it with
    probability exp(-(|Y| - sigma²/t)² / (2 sigma²)); the discrete Laplace is their Algorithm 2
    (a geometric magnitude R + t·V, a sign, and rejection of "-0"). Both algorithms' acceptance
    steps are merged into one Bernoulli(exp(-R/t) · exp(-(|Y| - sigma²/t)²/(2 sigma²))): a
    rejection at either restarts from a fresh proposal, so the output law is unchanged. Each
    candidate costs three uniforms; all candidates of a batch are drawn at once with numpy and
    rejected positions are refilled from further batches.

    ``uniform(n)`` must return ``n`` float64 values in the open interval (0, 1); the step that
    needs a uniform integer is exact when they are k / 2**53 with k uniform in [1, 2**53), which
    is what :meth:`privsem.rng.Randomness.uniform` supplies.

    Precision, honestly: CKS sample *exactly*, with rational arithmetic and Bernoulli trials
    built from random bits. Here R and the sign are exact (integer arithmetic on 53 random
    bits), but the acceptance probability exp(-R/t - bias) and the geometric boundaries
    exp(-v) are computed in float64 (relative error ~2**-52) and realised against a 53-bit
    uniform (absolute error <= 2**-53). Each candidate uses two such trials and a sample needs
    about two candidates, so the output law deviates from N_Z(0, sigma²) by a small multiple of
    2**-53 in total variation per sample, uniformly in sigma (the per-outcome *relative*
    deviation grows only in tails whose mass is itself below ~2**-53).
    The geometric magnitude is deliberately not floor(-t·log(U)): for large t that inversion
    resolves each outcome of mass ~1/t on a 2**-53 grid, a relative error of order t·2**-53
    (≈1e-7 at sigma = 1e9); splitting it as R + t·V with R an exact uniform integer avoids this.

    ``sigma == 0`` returns zeros. Raises ``ValueError`` for negative, non-finite or > 2**47
    ``sigma`` and for malformed uniforms, ``TypeError`` for a ``sigma`` that is not a number,
    and ``RuntimeError`` if :data:`MAX_BATCHES` batches leave positions unfilled (a candidate
    is accepted with probability above 0.3 at every sigma, so that means a broken ``uniform``,
    not bad luck).
    """
    sigma = _check_sigma(sigma, "sample_discrete_gaussian")
    if any(int(s) < 0 for s in shape):
        raise ValueError(f"sample_discrete_gaussian: shape must be non-negative, got {shape}")
    n = math.prod(int(s) for s in shape)
    out = np.zeros(n, dtype=np.int64)
    if sigma == 0.0 or n == 0:
        return out.reshape(shape)
    t = math.floor(sigma) + 1
    filled, rate = 0, 0.45  # rate: running estimate of the acceptance rate, sizes each batch
    for _ in range(MAX_BATCHES):
        need = n - filled
        m = int(need / rate * 1.1) + 16
        accepted = _candidates(sigma, t, m, uniform)
        take = min(need, accepted.size)
        out[filled:filled + take] = accepted[:take]
        filled += take
        if filled == n:
            return out.reshape(shape)
        rate = max(accepted.size / m, 0.01)
    raise RuntimeError(f"sample_discrete_gaussian: {n - filled} of {n} positions still "
                       f"rejected after {MAX_BATCHES} batches (sigma={sigma}); is uniform() "
                       f"returning uniform values?")


def _normaliser(sigma: float) -> float:
    """sum over all integers k of exp(-k²/(2 sigma²)), to float64 accuracy."""
    if sigma >= 1.0:
        # Poisson summation (Jacobi theta): sigma·sqrt(2π)·sum_m exp(-2π² sigma² m²); the m = ±1
        # terms are below 3e-9 relative and m = ±2 below 1e-34, so three terms are exact.
        dual = sum(math.exp(-2.0 * math.pi**2 * sigma**2 * m * m) for m in (1, 2, 3))
        return sigma * math.sqrt(2.0 * math.pi) * (1.0 + 2.0 * dual)
    half_width = math.ceil(40.0 * sigma + 10.0)
    k = np.arange(-half_width, half_width + 1, dtype=np.float64)
    return float(np.sum(np.exp(-0.5 * np.square(k / sigma))))


def discrete_gaussian_pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    """Exact P[Y = x] for Y ~ N_Z(0, sigma²) at every integer ``x`` in ``support`` (float64).

    P[Y = x] = exp(-x²/(2 sigma²)) / sum_k exp(-k²/(2 sigma²)) (the definition in CKS 2020). The
    normaliser is a direct sum over |k| <= 40 sigma + 10 for sigma < 1 and the Poisson-summation
    (theta function) identity for sigma >= 1, which is exact to float64 and costs three terms
    even at sigma = 1e9. For tests and audits; ``sigma == 0`` is the point mass at 0.
    """
    sigma = _check_sigma(sigma, "discrete_gaussian_pmf")
    x = np.asarray(support)
    integral = x.dtype.kind in "iu" or (
        x.dtype.kind == "f" and bool(np.all(np.isfinite(x) & (x == np.round(x)))))
    if not integral:
        raise ValueError(f"discrete_gaussian_pmf: support must hold integers, got dtype {x.dtype}")
    xf = x.astype(np.float64)
    if sigma == 0.0:
        return (xf == 0.0).astype(np.float64)
    return np.exp(-0.5 * np.square(xf / sigma)) / _normaliser(sigma)


def _check_count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"ddg_zcdp: {name} must be an integer >= 1, got {value!r}")
    return int(value)


def ddg_zcdp(*, l2_sensitivity: float, sigma: float, shares: int, dim: int) -> float:
    """rho such that x + Z is rho-zCDP, Z_j a sum of ``shares`` independent N_Z(0, sigma²).

    The mechanism: on an integer vector x in Z^dim whose L2 sensitivity is ``l2_sensitivity``
    (Δ), each of n = ``shares`` parties adds its own N_Z(0, sigma²) to every coordinate and only
    the sum x + Z is released (secure aggregation).

    Bound (Kairouz, Liu, Steinke 2021, arXiv:2102.06387, Proposition 14 / Eq. 17, for
    sigma >= 1/2): with tau = 10 · sum_{k=1}^{n-1} exp(-2π² sigma² k/(k+1)), for all α >= 1

        D_α(x + Z || x' + Z) <= min{ α Δ²/(2 n sigma²) + tau·dim,
                                     (α/2) (Δ/(sqrt(n) sigma) + tau·sqrt(dim))² }

    (the proposition's third term, which needs the L1 sensitivity, is left out: dropping a term
    of a minimum keeps a valid bound). Since α >= 1, tau·dim <= α·tau·dim, so each term is at
    most α·rho with

        rho = min{ Δ²/(2 n sigma²) + tau·dim,  (Δ/(sqrt(n) sigma) + tau·sqrt(dim))² / 2 },

    i.e. ½ε²-concentrated DP with ε = min{ sqrt(Δ²/(n sigma²) + 2 tau·dim),
    Δ/(sqrt(n) sigma) + tau·sqrt(dim) }, the form in which implementations citing the paper's
    Theorem 1 state it. Provenance: the proposition's terms as implemented by the authors in
    google-research/federated, distributed_dp/accounting_utils.py (``compute_rdp_dgaussian``);
    the conversion to zCDP is the one-line argument above.

    For n = 1, tau = 0 and rho = Δ²/(2 sigma²) exactly: the single discrete Gaussian's
    guarantee (Canonne, Kamath, Steinke 2020: N_Z(0, sigma²) is Δ²/(2 sigma²)-zCDP per
    coordinate, and Rényi divergences of independent coordinates add), valid for every
    sigma > 0; for n >= 2 the proposition needs sigma >= 1/2. The result is never below
    Δ²/(2 n sigma²), the continuous Gaussian's value for the same total variance (clamped there
    against float rounding; both terms are >= it mathematically).
    """
    if isinstance(l2_sensitivity, bool) or not isinstance(
            l2_sensitivity, (int, float, np.integer, np.floating)):
        raise TypeError(f"ddg_zcdp: l2_sensitivity must be a real number, got {l2_sensitivity!r}")
    delta = float(l2_sensitivity)
    if not math.isfinite(delta) or delta < 0:
        raise ValueError(f"ddg_zcdp: l2_sensitivity must be finite and >= 0, got "
                         f"{l2_sensitivity!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.integer, np.floating)):
        raise TypeError(f"ddg_zcdp: sigma must be a real number, got {sigma!r}")
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"ddg_zcdp: sigma must be finite and > 0, got {sigma!r}")
    sigma = float(sigma)
    n = _check_count(shares, "shares")
    d = _check_count(dim, "dim")
    if n >= 2 and sigma < 0.5:
        raise ValueError(f"ddg_zcdp: the bound for shares >= 2 (Kairouz et al. 2021, Prop. 14) "
                         f"needs sigma >= 1/2, got sigma={sigma!r} with shares={n}")
    k = np.arange(1, n, dtype=np.float64)  # (n-1,)
    tau = 10.0 * float(np.sum(np.exp(-2.0 * math.pi**2 * sigma**2 * k / (k + 1.0))))
    base = delta**2 / (2 * n * sigma**2)
    first = base + tau * d
    second = 0.5 * (delta / (math.sqrt(n) * sigma) + tau * math.sqrt(d)) ** 2
    return max(base, min(first, second))
