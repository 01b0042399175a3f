"""Embedding-inversion audit (T44): what could the server read from one noised upload?

A client uploads a (P × 384) matrix: row j is the unit sentence embedding (all-MiniLM-L6-v2) of
its answer to public prompt j, plus Gaussian noise of standard deviation σ per entry. Two
attackers who know σ (it is public: the ledger records it):

(a) **Nearest-neighbour inversion** (the retrieval attack that GEIA, Li et al. 2023, and
    Vec2Text, Morris et al. 2023, use as their baseline): the attacker holds a pool of candidate
    texts that contains the true answers plus distractors, embeds them, and for each noised row
    returns the pool text with the largest inner product. For unit pool vectors that is the
    nearest in Euclidean distance, the maximum-likelihood guess under isotropic Gaussian noise.
    Reported: top-1 accuracy (the retrieved text equals the true one) and mean token-F1 of the
    retrieved text, next to chance (1/pool size, and the mean F1 of a uniformly random pool
    text).
(b) **A trained bag-of-words inverter** (a GEIA-style decoder cut down to what a CPU trains in
    seconds): a multi-label model from the noised embedding to the words of the text (one hidden
    ReLU layer, or linear), trained with binary cross-entropy on a corpus's embeddings with
    fresh noise of the same σ each epoch, predicting its ``top_k`` most probable words.
    Reported: mean token-F1 of those words against the true text, next to the chance predictor
    that always outputs the corpus's ``top_k`` most frequent words.

Token-F1 here is over *sets* of lower-cased word tokens (``\\w+``): precision = |pred ∩ true| /
|pred|, recall = |pred ∩ true| / |true|, F1 their harmonic mean (0 if either set is empty). Words
outside the inverter's vocabulary still count in the true set.

Randomness: noise and the inverter's initialisation, shuffling and training noise come from a
:class:`privsem.rng.Randomness` (never global RNGs); a seeded one makes the audit reproducible.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from privsem.rng import Randomness

_WORD = re.compile(r"\w+")


def word_tokens(text: str) -> list[str]:
    """Lower-cased ``\\w+`` tokens of ``text``, in order."""
    return _WORD.findall(text.lower())


def token_f1(predicted: Iterable[str], true_text: str) -> float:
    """Set token-F1 between the ``predicted`` words and the words of ``true_text``."""
    pred = {p.lower() for p in predicted}
    true = set(word_tokens(true_text))
    common = len(pred & true)
    if not pred or not true or common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(true)
    return 2 * precision * recall / (precision + recall)


def _matrix(name: str, x: np.ndarray, rows: int | None = None) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d (rows, dim) array, got shape {arr.shape}")
    if rows is not None and arr.shape[0] != rows:
        raise ValueError(f"{name}: {arr.shape[0]} rows, expected {rows}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: entries must be finite")
    return arr


def add_noise(embeddings: np.ndarray, std: float, randomness: Randomness) -> np.ndarray:
    """``embeddings`` + N(0, std²) per entry, drawn from ``randomness``."""
    emb = _matrix("embeddings", embeddings)
    return emb + randomness.gaussian(emb.shape, float(std))


# ---------------------------------------------------------------------------------------------
# (a) nearest-neighbour inversion


@dataclass(frozen=True)
class NnInversion:
    noise_std: float
    top1_accuracy: float
    mean_token_f1: float
    chance_top1: float  # 1 / pool size
    chance_token_f1: float  # mean F1 of a uniformly random pool text
    n_queries: int
    pool_size: int
    retrieved: tuple[int, ...]  # pool index returned for each row

    def to_json(self) -> dict[str, Any]:
        return {"noise_std": self.noise_std, "top1_accuracy": self.top1_accuracy,
                "mean_token_f1": self.mean_token_f1, "chance_top1": self.chance_top1,
                "chance_token_f1": self.chance_token_f1, "n_queries": self.n_queries,
                "pool_size": self.pool_size}


def nearest_neighbour_inversion(upload: np.ndarray, true_texts: Sequence[str],
                                pool_embeddings: np.ndarray, pool_texts: Sequence[str], *,
                                noise_std: float) -> NnInversion:
    """Attack (a) on one noised ``upload`` (rows = prompts); ``noise_std`` is recorded with the
    result. Every true text must be in ``pool_texts`` (the attacker's pool holds the answers)."""
    x = _matrix("upload", upload, rows=len(true_texts))  # (P, d)
    pool = _matrix("pool_embeddings", pool_embeddings, rows=len(pool_texts))  # (N, d)
    if x.shape[1] != pool.shape[1]:
        raise ValueError(f"upload has dimension {x.shape[1]}, the pool {pool.shape[1]}")
    in_pool = set(pool_texts)
    missing = [t for t in true_texts if t not in in_pool]
    if missing:
        raise ValueError(f"pool_texts: the true text {missing[0]!r} is not in the pool; the pool "
                         "must contain every true answer")
    retrieved = np.argmax(x @ pool.T, axis=1)  # (P,)
    hits = [pool_texts[int(j)] == t for j, t in zip(retrieved, true_texts, strict=True)]
    f1 = [token_f1(word_tokens(pool_texts[int(j)]), t)
          for j, t in zip(retrieved, true_texts, strict=True)]
    pool_tokens = [word_tokens(p) for p in pool_texts]
    chance_f1 = float(np.mean([np.mean([token_f1(pt, t) for pt in pool_tokens])
                               for t in true_texts]))
    return NnInversion(noise_std=float(noise_std), top1_accuracy=float(np.mean(hits)),
                       mean_token_f1=float(np.mean(f1)), chance_top1=1.0 / len(pool_texts),
                       chance_token_f1=chance_f1, n_queries=len(true_texts),
                       pool_size=len(pool_texts),
                       retrieved=tuple(int(j) for j in retrieved))


def nn_inversion_curve(true_embeddings: np.ndarray, true_texts: Sequence[str],
                       pool_embeddings: np.ndarray, pool_texts: Sequence[str],
                       noise_stds: Sequence[float], randomness: Randomness
                       ) -> list[NnInversion]:
    """Attack (a) at each noise level: fresh noise of that std on ``true_embeddings``."""
    return [nearest_neighbour_inversion(add_noise(true_embeddings, s, randomness), true_texts,
                                        pool_embeddings, pool_texts, noise_std=s)
            for s in noise_stds]


# ---------------------------------------------------------------------------------------------
# (b) trained bag-of-words inverter


@dataclass(frozen=True)
class InverterConfig:
    vocab_size: int = 1000  # most frequent words of the training corpus (document frequency)
    hidden: int = 256  # 0 = a linear model
    epochs: int = 60
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    top_k: int | None = None  # words predicted per text; None = mean distinct words per text

    def __post_init__(self) -> None:
        for name in ("vocab_size", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {value!r} is not valid; use an integer >= 1")
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 0:
            raise ValueError(f"hidden: {self.hidden!r} is not valid; use an integer >= 0")
        if not self.learning_rate > 0 or not self.weight_decay >= 0:
            raise ValueError("learning_rate must be > 0 and weight_decay >= 0")
        if self.top_k is not None and (isinstance(self.top_k, bool) or self.top_k < 1):
            raise ValueError(f"top_k: {self.top_k!r} is not valid; use None or an integer >= 1")


@dataclass(frozen=True)
class BowInverter:
    """A trained inverter: vocabulary, network, the noise it was trained for, and the chance
    predictor's words (the ``top_k`` most frequent of the corpus)."""

    vocabulary: tuple[str, ...]
    network: torch.nn.Module
    noise_std: float
    top_k: int
    frequent_words: tuple[str, ...]

    def predict_words(self, embeddings: np.ndarray) -> list[list[str]]:
        """The ``top_k`` most probable words for each row of ``embeddings``."""
        x = torch.as_tensor(_matrix("embeddings", embeddings), dtype=torch.float32)  # (n, d)
        with torch.no_grad():
            logits = self.network(x)  # (n, V)
        top = torch.topk(logits, k=min(self.top_k, len(self.vocabulary)), dim=1).indices
        return [[self.vocabulary[i] for i in row] for row in top.tolist()]


def train_bow_inverter(embeddings: np.ndarray, texts: Sequence[str], *, noise_std: float,
                       randomness: Randomness, config: InverterConfig = InverterConfig()
                       ) -> BowInverter:
    """Attack (b): trains on clean ``embeddings`` of ``texts`` with fresh N(0, noise_std²)
    noise added every epoch, so the inverter is fitted to the distribution it will see."""
    emb = _matrix("embeddings", embeddings, rows=len(texts))
    if len(texts) < 2:
        raise ValueError("texts: at least two training texts are needed")
    token_sets = [set(word_tokens(t)) for t in texts]
    doc_freq = Counter(w for s in token_sets for w in s)
    vocab = tuple(w for w, _ in sorted(doc_freq.items(), key=lambda kv: (-kv[1], kv[0]))
                  [:config.vocab_size])
    index = {w: i for i, w in enumerate(vocab)}
    top_k = config.top_k or max(1, round(float(np.mean([len(s) for s in token_sets]))))
    y = torch.zeros((len(texts), len(vocab)), dtype=torch.float32)  # (n, V) multi-hot
    for i, s in enumerate(token_sets):
        for w in s:
            if w in index:
                y[i, index[w]] = 1.0
    x = torch.as_tensor(emb, dtype=torch.float32)  # (n, d)
    gen = randomness.torch_generator("inverter", noise_std)
    with torch.random.fork_rng(devices=[]):  # nn.Linear initialises from the global RNG
        torch.manual_seed(randomness.seed_for("inverter-init", noise_std) & ((1 << 63) - 1))
        d, v = x.shape[1], len(vocab)
        net: torch.nn.Module = (torch.nn.Linear(d, v) if config.hidden == 0 else
                                torch.nn.Sequential(torch.nn.Linear(d, config.hidden),
                                                    torch.nn.ReLU(),
                                                    torch.nn.Linear(config.hidden, v)))
    opt = torch.optim.AdamW(net.parameters(), lr=config.learning_rate,
                            weight_decay=config.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    net.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(texts), generator=gen)
        noisy = x + noise_std * torch.randn(x.shape, generator=gen)  # (n, d)
        for start in range(0, len(texts), config.batch_size):
            idx = order[start:start + config.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(noisy[idx]), y[idx])
            loss.backward()
            opt.step()
    net.eval()
    return BowInverter(vocabulary=vocab, network=net, noise_std=float(noise_std), top_k=top_k,
                       frequent_words=vocab[:top_k])


@dataclass(frozen=True)
class InverterResult:
    noise_std: float
    mean_token_f1: float
    chance_token_f1: float  # the corpus's top_k most frequent words, for every text
    top_k: int
    n_queries: int

    def to_json(self) -> dict[str, Any]:
        return {"noise_std": self.noise_std, "mean_token_f1": self.mean_token_f1,
                "chance_token_f1": self.chance_token_f1, "top_k": self.top_k,
                "n_queries": self.n_queries}


def evaluate_inverter(inverter: BowInverter, upload: np.ndarray, true_texts: Sequence[str]
                      ) -> InverterResult:
    """Mean token-F1 of the inverter's words on a noised ``upload`` against ``true_texts``."""
    _matrix("upload", upload, rows=len(true_texts))
    preds = inverter.predict_words(upload)
    f1 = [token_f1(p, t) for p, t in zip(preds, true_texts, strict=True)]
    chance = [token_f1(inverter.frequent_words, t) for t in true_texts]
    return InverterResult(noise_std=inverter.noise_std, mean_token_f1=float(np.mean(f1)),
                          chance_token_f1=float(np.mean(chance)), top_k=inverter.top_k,
                          n_queries=len(true_texts))


def inverter_curve(train_embeddings: np.ndarray, train_texts: Sequence[str],
                   eval_embeddings: np.ndarray, eval_texts: Sequence[str],
                   noise_stds: Sequence[float], randomness: Randomness,
                   config: InverterConfig = InverterConfig()) -> list[InverterResult]:
    """Attack (b) at each noise level: an inverter trained for that σ, evaluated on
    ``eval_embeddings`` with fresh noise of that σ. The evaluation texts should be disjoint from
    the training corpus (the attacker does not hold the client's answers)."""
    out = []
    for s in noise_stds:
        inv = train_bow_inverter(train_embeddings, train_texts, noise_std=s,
                                 randomness=randomness, config=config)
        out.append(evaluate_inverter(inv, add_noise(eval_embeddings, s, randomness), eval_texts))
    return out
