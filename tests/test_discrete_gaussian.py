"""The discrete Gaussian sampler, its exact pmf, and the zCDP of a sum of shares (T24).

Statistical tests are seeded (SeededRandomness) and state their tolerance; each tolerance is
several standard errors wide, so a correct sampler passes for any seed and a wrong law fails.
"""

import math

import numpy as np
import pytest

import privsem.rng
from privsem.privacy.discrete_gaussian import (
    MAX_BATCHES,
    ddg_zcdp,
    discrete_gaussian_pmf,
    sample_discrete_gaussian,
)
from privsem.rng import SecureRandomness, SeededRandomness


def _support(sigma: float) -> np.ndarray:
    half_width = math.ceil(40 * sigma + 10)
    return np.arange(-half_width, half_width + 1)


def _ks_distance(samples: np.ndarray, sigma: float) -> float:
    """sup_x |F_empirical(x) - F(x)|; both CDFs step only at integers, so integers suffice."""
    support = _support(sigma)
    counts = np.bincount(samples - support[0], minlength=support.size)
    assert counts.size == support.size, "a sample fell outside ±(40 sigma + 10)"
    empirical = np.cumsum(counts) / samples.size
    exact = np.cumsum(discrete_gaussian_pmf(sigma, support))
    return float(np.max(np.abs(empirical - exact)))


def _exact_moments(sigma: float) -> tuple[float, float]:
    support = _support(sigma)
    pmf = discrete_gaussian_pmf(sigma, support)
    mean = float(np.sum(support * pmf))
    return mean, float(np.sum((support - mean) ** 2 * pmf))


@pytest.mark.parametrize("sigma", [0.8, 3.0, 25.0])
def test_T24_ks_distance_to_exact_pmf_falls_with_n(sigma):
    # Kolmogorov: sqrt(N)·D exceeds 1.63 with probability 1% for a continuous law and less for
    # a discrete one; 1.5 × that bound is a ~1e-5 event. D must also shrink as N grows.
    rng = SeededRandomness(24, "ks", sigma)
    distances = []
    for n in (10**3, 10**4, 10**5):
        d = _ks_distance(rng.discrete_gaussian((n,), sigma), sigma)
        assert d < 1.5 * 1.63 / math.sqrt(n), (sigma, n, d)
        distances.append(d)
    assert distances[0] > distances[1] > distances[2], distances


def test_T24_pmf_is_normalised_and_matches_theta_identity():
    for sigma in (0.3, 0.8, 1.0, 3.0, 25.0):
        # Direct sum over ±(40 sigma + 10): the tail beyond is below exp(-800).
        assert discrete_gaussian_pmf(sigma, _support(sigma)).sum() == pytest.approx(1.0, abs=1e-13)
    # Reference value: P[Y = 0] for sigma = 1 is 1 / sum_k exp(-k²/2) = 1 / 2.50662827...
    # (sqrt(2π)·(1 + 2·exp(-2π²)), Poisson summation), i.e. 0.398942...
    p0 = discrete_gaussian_pmf(1.0, np.array([0]))[0]
    assert p0 == pytest.approx(1 / (math.sqrt(2 * math.pi) * (1 + 2 * math.exp(-2 * math.pi**2))),
                               rel=1e-14)
    assert discrete_gaussian_pmf(0.0, np.array([-1, 0, 1])).tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="integers"):
        discrete_gaussian_pmf(1.0, np.array([0.5]))


def test_T24_secure_sampler_draws_from_os_entropy(monkeypatch):
    real_urandom = privsem.rng.os.urandom
    requested = []

    def counting_urandom(n: int) -> bytes:
        requested.append(n)
        return real_urandom(n)

    monkeypatch.setattr(privsem.rng.os, "urandom", counting_urandom)
    rng = SecureRandomness()
    a = rng.discrete_gaussian((1000,), 10.0)
    assert requested, "SecureRandomness.discrete_gaussian did not call os.urandom"
    # At least three 8-byte uniforms per returned sample (one candidate each, at minimum).
    assert sum(requested) >= 3 * 8 * 1000
    b = rng.discrete_gaussian((1000,), 10.0)
    assert a.dtype == np.int64 and a.shape == (1000,)
    assert not np.array_equal(a, b)  # equal by chance with probability < 0.2**1000


def test_T24_seeded_sampler_is_reproducible_and_never_touches_os_entropy(monkeypatch):
    def forbidden(n: int) -> bytes:
        raise AssertionError("seeded randomness read os.urandom")

    monkeypatch.setattr(privsem.rng.os, "urandom", forbidden)
    a = SeededRandomness(5, "dg").discrete_gaussian((500,), 7.5)
    b = SeededRandomness(5, "dg").discrete_gaussian((500,), 7.5)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sigma", [1e3, 1e7, 1e9])
def test_T24_large_sigma_mean_and_variance(sigma):
    # N = 2·10^5: the sample mean has std sigma/sqrt(N) and the sample variance has relative
    # std sqrt(2/N) ≈ 0.0032; both are checked to 5 standard errors. For sigma >= 3 the exact
    # variance equals sigma² to float64 (the correction is ~4π²sigma²·exp(-2π²sigma²)).
    n = 200_000
    x = SeededRandomness(24, "moments", sigma).discrete_gaussian((n,), sigma)
    assert x.dtype == np.int64 and x.shape == (n,)
    assert abs(x.mean()) < 5 * sigma / math.sqrt(n)
    assert x.astype(np.float64).var() / sigma**2 == pytest.approx(1.0, abs=5 * math.sqrt(2 / n))
    assert np.abs(x).max() < 40 * sigma  # a tail beyond 40 sigma has mass below exp(-800)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])
def test_T24_small_sigma_variance_matches_exact_pmf(sigma):
    # The discrete Gaussian's variance is below sigma² for small sigma (0.863 sigma² at 0.5);
    # the sampler must match the exact variance, not sigma². N = 2·10^5, 5 standard errors
    # with the exact fourth moment.
    n = 200_000
    x = SeededRandomness(24, "small", sigma).discrete_gaussian((n,), sigma).astype(np.float64)
    mean, var = _exact_moments(sigma)
    support = _support(sigma)
    m4 = float(np.sum(support.astype(np.float64) ** 4 * discrete_gaussian_pmf(sigma, support)))
    var_se = math.sqrt((m4 - var**2) / n)
    assert abs(mean) < 1e-12
    assert abs(x.mean()) < 5 * math.sqrt(var / n)
    assert abs(x.var() - var) < 5 * var_se
    if sigma == 0.5:
        assert var < 0.9 * sigma**2  # the test can tell the two apart at this sigma


def test_T24_huge_sigma_low_digits_are_uniform():
    # Float artefacts at large scale (a coarse floor(-t·log U), say) show up as a non-uniform
    # last digit. sigma = 1e9, N = 10^5: each residue mod 16 has count 6250 ± 77; allow 6 sd.
    x = SeededRandomness(24, "digits").discrete_gaussian((10**5,), 1e9)
    counts = np.bincount(np.mod(x, 16), minlength=16)
    assert np.all(np.abs(counts - 6250) < 6 * math.sqrt(10**5 / 16 * 15 / 16)), counts


def test_T24_shapes_and_zero_sigma():
    rng = SeededRandomness(1)
    assert rng.discrete_gaussian((3, 4), 2.0).shape == (3, 4)
    assert rng.discrete_gaussian((), 2.0).shape == ()
    assert rng.discrete_gaussian((0, 5), 2.0).shape == (0, 5)
    zeros = rng.discrete_gaussian((7,), 0.0)
    assert zeros.dtype == np.int64 and not zeros.any()
    tiny = rng.discrete_gaussian((1000,), 1e-300)  # P[Y != 0] = 2·exp(-5e599) = 0
    assert not tiny.any()


@pytest.mark.parametrize("sigma, error", [
    (-1.0, ValueError), (math.nan, ValueError), (math.inf, ValueError), (-math.inf, ValueError),
    (2.0**48, ValueError), ("3", TypeError), (True, TypeError),
])
def test_T24_sigma_validation_names_the_value(sigma, error):
    with pytest.raises(error, match="sigma") as info:
        SeededRandomness(1).discrete_gaussian((4,), sigma)
    assert repr(sigma) in str(info.value)


def test_T24_malformed_uniform_is_rejected():
    with pytest.raises(ValueError, match="open interval"):
        sample_discrete_gaussian(2.0, (10,), lambda n: np.zeros(n))
    with pytest.raises(ValueError, match="shape"):
        sample_discrete_gaussian(2.0, (10,), lambda n: np.full(n + 1, 0.5))


def test_T24_sampler_gives_up_instead_of_looping_forever():
    # u = 1 - 2**-53 everywhere: V = 0, R = t - 1 and the acceptance draw always fails.
    stuck = 1.0 - 2.0**-53
    calls = []

    def uniform(n: int) -> np.ndarray:
        calls.append(n)
        return np.full(n, stuck)

    with pytest.raises(RuntimeError, match="batches"):
        sample_discrete_gaussian(2.0, (10,), uniform)
    assert len(calls) == MAX_BATCHES


def test_T24_uniform_is_open_53_bit_grid():
    for rng in (SeededRandomness(3), SecureRandomness()):
        u = rng.uniform(100_000)
        assert u.dtype == np.float64 and u.shape == (100_000,)
        assert np.all((u > 0) & (u < 1))
        k = u * 2.0**53
        assert np.array_equal(k, np.floor(k))  # exactly k / 2**53
        assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / u.size)
        with pytest.raises(ValueError, match="n must be"):
            rng.uniform(-1)


# --- ddg_zcdp -----------------------------------------------------------------------------


def test_T24_ddg_zcdp_single_share_is_cks_bound_exactly():
    # Canonne, Kamath, Steinke 2020: one discrete Gaussian is Δ²/(2σ²)-zCDP for every σ > 0.
    for delta, sigma, dim in ((1.0, 1.0, 1), (3.0, 0.3, 5), (7.5, 40.0, 10**6)):
        assert ddg_zcdp(l2_sensitivity=delta, sigma=sigma, shares=1, dim=dim) == \
            delta**2 / (2 * sigma**2)


@pytest.mark.parametrize("shares", [2, 10, 1000])
def test_T24_ddg_zcdp_large_sigma_matches_central_gaussian(shares):
    # tau = 10·sum exp(-2π²σ²k/(k+1)) <= 10·n·exp(-π²σ²) ≈ 0 at σ = 10: the sum of n shares
    # is as private as one Gaussian of variance nσ². Never below it (the continuous value).
    for delta, dim in ((1.0, 1), (5.0, 10**6)):
        rho = ddg_zcdp(l2_sensitivity=delta, sigma=10.0, shares=shares, dim=dim)
        central = delta**2 / (2 * shares * 10.0**2)
        assert rho >= central
        assert rho == pytest.approx(central, rel=1e-12)


def test_T24_ddg_zcdp_small_sigma_pays_for_the_sum():
    # At σ = 1/2 the sum of discrete Gaussians is not a discrete Gaussian; the bound adds
    # tau·d. Hand value, n = 2, d = 1, Δ = 1: tau = 10·exp(-2π²·(1/4)·(1/2)) = 0.8480...,
    # rho = min(1/(2·2·(1/4)) + tau, (1/sqrt(2·1/4) + tau)²/2) = min(1.848, 2.531) = 1.848.
    tau = 10 * math.exp(-(math.pi**2) / 4)
    rho = ddg_zcdp(l2_sensitivity=1.0, sigma=0.5, shares=2, dim=1)
    assert rho == pytest.approx(1.0 + tau, rel=1e-12)
    assert rho > 1.0 / (2 * 2 * 0.25)
    # More dimensions, more shares, less noise: never more private.
    assert ddg_zcdp(l2_sensitivity=1.0, sigma=0.5, shares=2, dim=100) > rho
    grid = [ddg_zcdp(l2_sensitivity=1.0, sigma=s, shares=5, dim=1000)
            for s in (0.5, 0.75, 1.0, 2.0)]
    assert grid == sorted(grid, reverse=True)


def test_T24_ddg_zcdp_second_term_wins_for_large_dim():
    # With tau·d large, (Δ/(sqrt(n)σ) + tau·sqrt(d))²/2 < Δ²/(2nσ²) + tau·d.
    sigma, n, d, delta = 0.6, 3, 10**6, 100.0
    k = np.arange(1, n)
    tau = 10 * float(np.sum(np.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1))))
    first = delta**2 / (2 * n * sigma**2) + tau * d
    second = 0.5 * (delta / (math.sqrt(n) * sigma) + tau * math.sqrt(d)) ** 2
    assert second < first
    assert ddg_zcdp(l2_sensitivity=delta, sigma=sigma, shares=n, dim=d) == \
        pytest.approx(second, rel=1e-12)


@pytest.mark.parametrize("kwargs, bad", [
    ({"l2_sensitivity": -1.0}, "-1.0"),
    ({"l2_sensitivity": math.nan}, "nan"),
    ({"sigma": 0.0}, "0.0"),
    ({"sigma": -2.0}, "-2.0"),
    ({"sigma": math.inf}, "inf"),
    ({"sigma": 0.4}, "0.4"),  # shares >= 2 needs sigma >= 1/2
    ({"shares": 0}, "0"),
    ({"shares": 2.0}, "2.0"),
    ({"shares": True}, "True"),
    ({"dim": 0}, "0"),
    ({"dim": -3}, "-3"),
])
def test_T24_ddg_zcdp_rejects_invalid_arguments(kwargs, bad):
    args = {"l2_sensitivity": 1.0, "sigma": 2.0, "shares": 4, "dim": 8} | kwargs
    with pytest.raises(ValueError, match="ddg_zcdp") as info:
        ddg_zcdp(**args)
    assert bad in str(info.value)


@pytest.mark.parametrize("kwargs", [{"sigma": "2"}, {"sigma": True}, {"l2_sensitivity": "1"}])
def test_T24_ddg_zcdp_rejects_non_numbers(kwargs):
    args = {"l2_sensitivity": 1.0, "sigma": 2.0, "shares": 4, "dim": 8} | kwargs
    with pytest.raises(TypeError, match="ddg_zcdp"):
        ddg_zcdp(**args)


def test_T24_ddg_zcdp_is_keyword_only():
    with pytest.raises(TypeError):
        ddg_zcdp(1.0, 2.0, 4, 8)  # type: ignore[misc]
