"""Consensus per prompt and pseudo-label selection. Pure functions on arrays.

- ``mean``: c_j = S_j / n from the noisy sum S (the only operator a back-end that hides
  individual vectors supports). Agreement ‖c_j‖ is reported *debiased* for the known noise:
  E‖c + e‖² = ‖c‖² + d·σ², so a_j = sqrt(max(0, ‖ĉ_j‖² − d·σ²)) with σ the per-entry noise std
  of ĉ (post-processing of the release and public parameters).
- Plaintext-only operators on the individual (n, P, d) matrices: ``medoid`` (the client vector
  with the largest summed cosine similarity to the others), ``geometric_median`` (Weiszfeld
  1937, with the Vardi–Zhang guard against landing on a data point), ``trimmed_mean``
  (coordinate-wise, trimming a fraction from each end).
- ``weighted_consensus``: the expertise-weighted mean c_j = Σ_i w_ij·e_ij / Σ_i w_ij from the
  noisy sums of the rows w·e and of the column w (privsem.confidence). Selection needs only the
  direction of c_j, which the numerator alone gives while the noisy denominator is positive;
  agreement is ‖Σw·e‖ debiased as above, over Σw.
- Selection: the candidate with the largest inner product with c_j (all candidates are unit
  vectors, so this is the nearest in cosine); prompts with agreement below the threshold get
  no label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Consensus:
    points: np.ndarray  # (P, d)
    agreement: np.ndarray  # (P,)
    noise_std: float  # per-entry noise std of ``points`` (0 when unknown/none)
    weight: np.ndarray | None = None  # (P,) mean confidence Σw/n; None when unweighted

    def mean_weight(self) -> np.ndarray:
        """(P,) the mean confidence per prompt (1 everywhere for an unweighted consensus)."""
        return self.weight if self.weight is not None else np.ones(len(self.points))


def mean_consensus(total: np.ndarray, count: int, *, noise_variance: float) -> Consensus:
    """Consensus from the noisy sum of ``count`` contributions (noise variance per entry given)."""
    if count < 1:
        raise ValueError("mean_consensus: no contributors")
    points = total / count  # (P, d)
    var = noise_variance / count**2
    d = points.shape[1]
    raw2 = np.sum(points**2, axis=1)
    agreement = np.sqrt(np.maximum(0.0, raw2 - d * var))
    return Consensus(points, agreement, math.sqrt(var))


def weighted_consensus(total: np.ndarray, count: int, *, noise_variance: float,
                       floor: float = 1e-6) -> Consensus:
    """Consensus from the noisy sum (P, d + 1) of ``count`` weighted uploads [w·e, w].

    points = Σw·e / max(Σw, floor): the expertise-weighted mean where Σw > floor (with a noisy
    Σw at or below it, the direction of Σw·e, scaled by 1/floor, is all there is)."""
    if count < 1:
        raise ValueError("weighted_consensus: no contributors")
    num, den = total[:, :-1], total[:, -1]  # (P, d), (P,)
    d = num.shape[1]
    scale = np.maximum(den, floor)  # (P,)
    points = num / scale[:, None]
    raw2 = np.sum(num**2, axis=1)
    agreement = np.sqrt(np.maximum(0.0, raw2 - d * noise_variance)) / scale
    std = math.sqrt(noise_variance) / float(np.median(scale)) if noise_variance > 0 else 0.0
    return Consensus(points, agreement, std, weight=den / count)


def medoid(stack: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """(n, P, d) -> (P, d): per prompt, the member vector with the largest (``weights`` (n, P):
    confidence-weighted) summed cosine similarity to all members."""
    unit = stack / np.maximum(np.linalg.norm(stack, axis=2, keepdims=True), 1e-12)
    sims = np.einsum("npd,mpd->pnm", unit, unit)  # (P, n, n)
    if weights is not None:
        sims = sims * weights.T[:, None, :]  # member m's vote counts w_m
    best = np.argmax(sims.sum(axis=2), axis=1)  # (P,)
    return stack[best, np.arange(stack.shape[1])]


def geometric_median(stack: np.ndarray, *, iters: int = 100, eps: float = 1e-9) -> np.ndarray:
    """(n, P, d) -> (P, d): Weiszfeld iterations per prompt, started at the mean."""
    z = stack.mean(axis=0)  # (P, d)
    for _ in range(iters):
        dist = np.linalg.norm(stack - z[None], axis=2)  # (n, P)
        w = 1.0 / np.maximum(dist, eps)
        new = np.einsum("np,npd->pd", w, stack) / w.sum(axis=0)[:, None]
        if np.max(np.abs(new - z)) < 1e-10:
            return new
        z = new
    return z


def trimmed_mean(stack: np.ndarray, *, fraction: float) -> np.ndarray:
    """(n, P, d) -> (P, d): coordinate-wise mean after dropping ⌊fraction·n⌋ from each end."""
    n = stack.shape[0]
    k = math.floor(fraction * n)
    if 2 * k >= n:
        raise ValueError(f"trimmed_mean: trimming {k} of {n} from each end leaves nothing")
    s = np.sort(stack, axis=0)
    return s[k:n - k].mean(axis=0)


def robust_consensus(stack: np.ndarray, operator: str, *, trim_fraction: float,
                     weighted: bool = False) -> Consensus:
    """``stack`` (n, P, d), or (n, P, d + 1) weighted uploads [w·e, w] when ``weighted`` (only
    ``medoid`` takes weights)."""
    if weighted:
        if operator != "medoid":
            raise ValueError(f"robust_consensus: operator {operator!r} takes no confidence "
                             "weights; use medoid or mean")
        w = stack[:, :, -1]  # (n, P)
        pts = medoid(stack[:, :, :-1], w)
        pts = pts / np.maximum(np.linalg.norm(pts, axis=1, keepdims=True), 1e-12)
        return Consensus(pts, np.linalg.norm(pts, axis=1), 0.0, weight=w.mean(axis=0))
    if operator == "medoid":
        pts = medoid(stack)
    elif operator == "geometric_median":
        pts = geometric_median(stack)
    elif operator == "trimmed_mean":
        pts = trimmed_mean(stack, fraction=trim_fraction)
    else:
        raise ValueError(f"robust_consensus: unknown operator {operator!r}")
    return Consensus(pts, np.linalg.norm(pts, axis=1), 0.0)


def select_nearest(candidates: np.ndarray, points: np.ndarray, agreement: np.ndarray, *,
                   threshold: float) -> list[int | None]:
    """candidates (P, k, d) unit vectors -> per prompt the index nearest c_j, or None if skipped."""
    scores = np.einsum("pkd,pd->pk", candidates, points)  # (P, k)
    best = np.argmax(scores, axis=1)
    return [int(b) if agreement[j] >= threshold else None for j, b in enumerate(best)]
