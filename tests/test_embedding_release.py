"""The client-level release: joint clip and noise scale (T23), bad embeddings rejected (T30)."""

import numpy as np
import pytest

from privsem.errors import EmbeddingRejected
from privsem.privacy.analysis import epsilon, gaussian_event
from privsem.privacy.embedding import joint_clip, release, validate_embeddings
from privsem.rng import SecureRandomness, SeededRandomness


def _unit_rows(p, d, seed=0):
    m = np.random.default_rng(seed).normal(size=(p, d))
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def test_T23_joint_clip_bounds_frobenius_norm():
    m = _unit_rows(16, 384) * 3.0
    clipped, factor = joint_clip(m, 2.0)
    assert np.linalg.norm(clipped) == pytest.approx(2.0)
    assert factor == pytest.approx(2.0 / np.linalg.norm(m))
    _same, f1 = joint_clip(_unit_rows(16, 384), 4.0)  # ||.||_F = sqrt(16) = 4: untouched
    assert f1 == pytest.approx(1.0)


@pytest.mark.parametrize("rng", [SeededRandomness(7), SecureRandomness()])
def test_T23_noise_std_is_multiplier_times_clip(rng):
    m = _unit_rows(64, 384)
    rel = release(m, clip=8.0, noise_multiplier=0.5, randomness=rng)
    noise = rel.noisy - m  # clip 8 = sqrt(64): the clip does not scale
    assert rel.noise_std == pytest.approx(4.0)
    # 24576 samples: the sample std is within 3% of 4.0 with overwhelming probability
    assert noise.std() == pytest.approx(4.0, rel=0.03)
    assert abs(noise.mean()) < 0.1


def test_T23_ledger_matches_hand_computation():
    # One joint clip per round, R Gaussian releases: RDP of R Gaussians at order a is
    # R*a/(2 z^2); the accountant's epsilon for R rounds must equal that of a single Gaussian
    # with noise z/sqrt(R) (same RDP curve).
    z, R = 1.3, 4
    e_rounds = epsilon([gaussian_event(noise_multiplier=z)] * R, delta=1e-5)
    e_single = epsilon([gaussian_event(noise_multiplier=z / np.sqrt(R))], delta=1e-5)
    assert e_rounds == pytest.approx(e_single, rel=1e-9)


@pytest.mark.parametrize("bad,what", [
    (lambda m: np.where(np.arange(m.size).reshape(m.shape) == 5, np.nan, m), "non-finite"),
    (lambda m: np.where(np.arange(m.size).reshape(m.shape) == 5, np.inf, m), "non-finite"),
    (lambda m: np.zeros_like(m), "norm"),
    (lambda m: m[:, :100], "shape"),
    (lambda m: m.astype(np.float16), "dtype"),
    (lambda m: m.astype(np.int64), "dtype"),
    (lambda m: m.tolist(), "numpy array"),
])
def test_T30_bad_embeddings_rejected(bad, what):
    m = _unit_rows(4, 384)
    with pytest.raises(EmbeddingRejected, match=what):
        validate_embeddings(bad(m), prompts=4, dim=384)


def test_T30_valid_embeddings_pass_unchanged():
    m = _unit_rows(4, 384).astype(np.float32)
    copy = m.copy()
    out = validate_embeddings(m, prompts=4, dim=384)
    assert out.dtype == np.float64 and np.array_equal(m, copy)
