"""Per-prompt confidence: how much a client's own model knows about a public prompt.

The confidence w_j ∈ [0, 1] of prompt j weighs the client's answer in the consensus (the upload
carries the rows w_j·e_j and the column w_j; the server forms Σ w·e / Σ w) and decides whether
the client accepts a pseudo-label (:func:`accepts`). It is computed from the client's own
model and its own candidates (``gain``, ``likelihood``, ``self_agreement``), so under
record-level DP it is post-processing of the DP-SGD model and costs nothing; the release that
carries it is clipped and noised with the rest of the matrix at client level. ``proximity``
reads the private prompts directly: it is refused with record-level DP (the configuration
fails closed), and at client level it is covered like every other part of the release.

Measures (``consensus.confidence``), each per prompt from the k candidates y_1..y_k sampled from
the client's current model for prompt x, with ℓ_M(y) the mean per-token negative log-likelihood
of y given x under the model M of the client's *private* training: with the ``mixed`` schedule
the adapter after training phase 1, before any pseudo-label was mixed in (once every client has
trained on the same labels, its current model has moved on every prompt, and only the private
phase tells who knew); with ``sequential``, the current model.
- ``gain``: 1 − exp(−mean_i [ℓ_base(y_i) − ℓ_M(y_i)]), with ℓ_base under the same model with its
  LoRA adapter switched off (the public base model). It measures how far the client's own
  fine-tuning moved its answers to this prompt: near 0 where private training taught nothing
  about the prompt, near 1 where it taught the answer (a template, an invented name). A
  likelihood ratio against a public reference, as in reference-model membership inference.
- ``likelihood``: exp(−mean_i ℓ_M(y_i)), the geometric-mean token probability of its own
  candidates.
- ``self_agreement``: the mean pairwise ROUGE-L F1 between the k candidates (1 when the model
  says the same thing every time; needs k ≥ 2).
- ``proximity``: how close the public prompt lies to the client's private data: the largest
  cosine similarity s_j between the prompt's sentence embedding and those of the client's
  private prompts (the user turns of its training examples), mapped linearly from
  [``proximity_low``, ``proximity_high``] onto [0, 1] and clipped. It asks "was I taught about
  this?" of the data rather than of the model, so it does not depend on how well the model
  memorised; it is not post-processing of a DP-SGD model.
- ``none``: no confidence column; every client weighs 1 (the plain mean).

Then w ← w^power (``consensus.confidence_power``): a power above 1 sharpens the weighting.
Rules for changing it: a measure is a pure function of the client's own model and candidates
returning finite values in [0, 1]; :func:`validate_confidence` is the client's last check before
the values enter the release.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from privsem.errors import EmbeddingRejected

CONFIDENCES = ("none", "gain", "likelihood", "self_agreement", "proximity")
# measures that read the private data directly, not only the DP-SGD model: refused under
# record-level DP
DATA_CONFIDENCES = ("proximity",)


def gain_confidence(nll_model: np.ndarray, nll_base: np.ndarray) -> np.ndarray:
    """(P, k) mean token NLLs under the fine-tuned and the base model -> (P,) in [0, 1]."""
    gain = np.mean(nll_base - nll_model, axis=1)  # (P,) nats per token
    return np.clip(1.0 - np.exp(-gain), 0.0, 1.0)


def likelihood_confidence(nll_model: np.ndarray) -> np.ndarray:
    """(P, k) mean token NLLs -> (P,) geometric-mean token probability in (0, 1]."""
    return np.clip(np.exp(-np.mean(nll_model, axis=1)), 0.0, 1.0)


def proximity_confidence(prompts: np.ndarray, private: np.ndarray, *, low: float,
                         high: float) -> np.ndarray:
    """(P, d) public-prompt and (N, d) private-prompt unit embeddings -> (P,) in [0, 1]: the
    largest cosine similarity of each public prompt to a private one, mapped linearly from
    [low, high] onto [0, 1] and clipped."""
    if not 0 <= low < high <= 1:
        raise ValueError(f"proximity confidence: need 0 <= low < high <= 1, got low={low}, "
                         f"high={high}")
    if private.shape[0] == 0:
        return np.zeros(prompts.shape[0])
    s = np.max(prompts.astype(np.float64) @ private.astype(np.float64).T, axis=1)  # (P,)
    return np.clip((s - low) / (high - low), 0.0, 1.0)


def self_agreement_confidence(texts: Sequence[Sequence[str]]) -> np.ndarray:
    """Per prompt, the mean pairwise ROUGE-L F1 of its candidates -> (P,) in [0, 1]."""
    from privsem.models.scores import rouge_l

    pairs = [list(itertools.combinations(row, 2)) for row in texts]
    if any(not p for p in pairs):
        raise ValueError("self_agreement confidence needs at least 2 candidates per prompt")
    flat_a = [a for p in pairs for a, _ in p]
    flat_b = [b for p in pairs for _, b in p]
    scores = rouge_l(flat_a, flat_b)
    out, pos = [], 0
    for p in pairs:
        out.append(float(np.mean(scores[pos:pos + len(p)])))
        pos += len(p)
    return np.clip(np.asarray(out, dtype=np.float64), 0.0, 1.0)


def validate_confidence(w: object, *, prompts: int) -> np.ndarray:
    """Returns ``w`` as float64 if it is a finite (prompts,) vector in [0, 1]; refuses it on
    the client, before anything is released, otherwise."""
    if not isinstance(w, np.ndarray):
        raise EmbeddingRejected(f"confidence: expected a numpy array, got {type(w).__name__}")
    if w.shape != (prompts,):
        raise EmbeddingRejected(f"confidence: shape {w.shape} does not match ({prompts},)")
    if not np.issubdtype(w.dtype, np.floating):
        raise EmbeddingRejected(f"confidence: dtype {w.dtype} is not a float type")
    v = w.astype(np.float64)
    if not np.all(np.isfinite(v)):
        raise EmbeddingRejected(f"confidence: {int(np.sum(~np.isfinite(v)))} non-finite values "
                                "(NaN or Inf)")
    bad = np.flatnonzero((v < 0.0) | (v > 1.0))
    if bad.size:
        raise EmbeddingRejected(f"confidence: prompt {int(bad[0])} has w = {v[bad[0]]:.6g}, "
                                f"outside [0, 1] ({bad.size} such prompts)")
    return v


def weighted_rows(matrix: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(P, d) unit rows and (P,) confidences -> the (P, d + 1) upload [w·e, w].

    Row norm w·√2 ≤ √2, so the Frobenius norm is at most √(2P): the default joint clip for a
    weighted upload, which never shrinks it."""
    return np.concatenate([matrix * w[:, None], w[:, None]], axis=1)


def upload_dim(encoder_dim: int, confidence: str) -> int:
    """Width of a client's upload: the encoder's dimension, plus the confidence column."""
    return encoder_dim + (0 if confidence == "none" else 1)


def knows(w: np.ndarray, total_w: np.ndarray, *, min_confidence: float,
          share: float) -> np.ndarray:
    """Prompts (P,) bool on which a client counts as the one who knows: its confidence is at
    least ``min_confidence`` and at least ``share`` of the federation's Σw (its own included).

    A share, not the federation's mean: a client whose confidence is high everywhere (its
    adapter raises the likelihood of its own style on every prompt) is above the mean on
    topics it does not know, and would refuse the experts' labels there."""
    return (w >= min_confidence) & (w >= share * total_w)


def accepts(own_nll: np.ndarray | None, label_nll: np.ndarray | None, confident: np.ndarray, *,
            margin: float | None) -> np.ndarray:
    """Which pseudo-labels a client trains on (P,) bool: all but those of prompts where it
    knows (``confident``, from :func:`knows`) and its own model finds the label less likely
    than its own candidates by more than ``margin`` nats per token (its answer disagrees).
    ``margin`` None: it refuses every label where it knows (the likelihoods are not needed)."""
    if margin is None:
        return ~confident
    if own_nll is None or label_nll is None:
        raise ValueError("accepts: a margin needs the likelihoods of own answers and labels")
    disagrees = (label_nll - own_nll) > margin
    return ~(confident & disagrees)
