"""The client-level release: validate, jointly clip and noise the (prompts × dim) matrix.

DESIGN.md §2: the per-prompt unit embeddings form a (P, d) matrix; its Frobenius norm is bounded
by one joint clip C per round and Gaussian noise of std z·C is added (Gaussian mechanism with
L2 sensitivity C under add/remove of one client). One release per round, composed over rounds.
Everything here runs on the client before anything leaves it (T23, T30).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from privsem.errors import EmbeddingRejected
from privsem.rng import Randomness

UNIT_TOLERANCE = 1e-3


def validate_embeddings(matrix: object, *, prompts: int, dim: int) -> np.ndarray:
    """Returns ``matrix`` as float64 if it is a finite (prompts, dim) matrix of unit rows (T30)."""
    if not isinstance(matrix, np.ndarray):
        raise EmbeddingRejected(f"embeddings: expected a numpy array, got {type(matrix).__name__}")
    if matrix.dtype not in (np.float32, np.float64):
        raise EmbeddingRejected(f"embeddings: dtype {matrix.dtype} is not float32 or float64")
    if matrix.shape != (prompts, dim):
        raise EmbeddingRejected(
            f"embeddings: shape {matrix.shape} does not match (prompts={prompts}, dim={dim})")
    if not np.all(np.isfinite(matrix)):
        bad = int(np.sum(~np.isfinite(matrix)))
        raise EmbeddingRejected(f"embeddings: {bad} non-finite values (NaN or Inf)")
    norms = np.linalg.norm(matrix.astype(np.float64), axis=1)
    off = np.flatnonzero(np.abs(norms - 1.0) > UNIT_TOLERANCE)
    if off.size:
        raise EmbeddingRejected(
            f"embeddings: row {int(off[0])} has norm {norms[off[0]]:.6g}, not a unit vector "
            f"({off.size} such rows; an all-zero row means the encoder produced nothing)")
    return matrix.astype(np.float64)


def joint_clip(matrix: np.ndarray, clip: float) -> tuple[np.ndarray, float]:
    """Scales ``matrix`` so that its Frobenius norm is at most ``clip``. Returns (clipped, factor)."""
    if not (clip > 0 and math.isfinite(clip)):
        raise ValueError(f"joint_clip: clip must be finite and > 0, got {clip}")
    norm = float(np.linalg.norm(matrix))
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    return matrix * factor, factor


@dataclass(frozen=True)
class Release:
    """What leaves the client: the noisy matrix and the facts needed to account for it."""

    noisy: np.ndarray  # (prompts, dim), float64
    clip: float
    clip_factor: float
    noise_std: float


def release(matrix: np.ndarray, *, clip: float, noise_multiplier: float,
            randomness: Randomness) -> Release:
    """Joint clip to ``clip``, then add N(0, (noise_multiplier·clip)²) to every entry."""
    if noise_multiplier < 0 or not math.isfinite(noise_multiplier):
        raise ValueError(f"release: noise_multiplier must be finite and >= 0, got "
                         f"{noise_multiplier}")
    clipped, factor = joint_clip(matrix, clip)
    std = noise_multiplier * clip
    noisy = clipped + randomness.gaussian(clipped.shape, std)
    return Release(noisy=noisy, clip=clip, clip_factor=factor, noise_std=std)
