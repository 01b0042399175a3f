"""Consensus operators and pseudo-label selection."""

import numpy as np
import pytest

from privsem.consensus import (
    geometric_median,
    mean_consensus,
    medoid,
    select_nearest,
    trimmed_mean,
)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_mean_consensus_debiases_agreement_for_known_noise():
    rng = np.random.default_rng(0)
    P, d, n, std = 200, 384, 5, 0.2
    base = _unit(rng.normal(size=(P, d)))
    total = n * base + rng.normal(0, std, size=(n, P, d)).sum(0)
    c = mean_consensus(total, n, noise_variance=n * std**2)
    # true agreement is 1 for every prompt; raw norms are inflated by the noise
    raw = np.linalg.norm(total / n, axis=1)
    assert raw.mean() > 1.2
    assert c.agreement.mean() == pytest.approx(1.0, abs=0.05)
    assert c.noise_std == pytest.approx(std / np.sqrt(n))


def test_robust_operators_resist_an_outlier():
    rng = np.random.default_rng(1)
    honest = _unit(np.ones((1, 1, 8)) + 0.05 * rng.normal(size=(6, 1, 8)))
    attacker = -10 * np.ones((1, 1, 8))
    stack = np.concatenate([honest, attacker])
    target = _unit(np.ones(8))
    for pts in (medoid(stack), geometric_median(stack), trimmed_mean(stack, fraction=0.2)):
        assert float(_unit(pts[0]) @ target) > 0.95
    assert float(_unit(stack.mean(0)[0]) @ target) < 0  # the mean is dragged away


def test_geometric_median_of_symmetric_points_is_centre():
    pts = np.array([[[1.0, 0]], [[-1.0, 0]], [[0, 1.0]], [[0, -1.0]]])
    assert np.allclose(geometric_median(pts)[0], 0, atol=1e-6)


def test_select_nearest_respects_threshold():
    cand = np.stack([np.eye(3)[[0, 1]], np.eye(3)[[1, 2]]])  # (P=2, k=2, d=3)
    pts = np.array([[0, 1.0, 0], [0, 0, 1.0]])
    assert select_nearest(cand, pts, np.array([1.0, 1.0]), threshold=0.5) == [1, 1]
    assert select_nearest(cand, pts, np.array([1.0, 0.1]), threshold=0.5) == [1, None]
