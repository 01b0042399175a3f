"""Canaries: random secrets planted in a client's private data, and the Secret Sharer exposure.

Carlini, Liu, Erlingsson, Kos and Song 2019, "The Secret Sharer: Evaluating and Testing
Unintended Memorization in Neural Networks" (USENIX Security). A canary is a fixed format with a
random secret drawn uniformly from a space R (``"My account PIN is {secret}."`` with 6 random
digits: |R| = 10⁶; or a sequence of words from a fixed vocabulary). Its *rank* is its position
among all candidate secrets sorted by the model's loss (1 = lowest loss), and its *exposure* is
``log2 |R| − log2 rank`` (their Definition 4): 0 for the least likely candidate, ``log2 |R|``
for a canary the model ranks first. A canary the model never saw has a uniformly random rank,
so its expected exposure is :func:`chance_exposure` (about log2 e ≈ 1.44 bits for large R).

How ranks are computed here (:func:`exposure`): with ``c`` the number of other candidates whose
loss is below the canary's (ties count ½) out of ``n`` compared, exposure = ``log2(n + 1) −
log2(1 + c)``. When R is small enough (``|R| − 1 ≤ max_enumerate``) every other candidate is
compared (``n = |R| − 1``) and this is exactly Carlini's definition. Otherwise ``n`` candidates
are drawn uniformly from R (with replacement, the canary's own secret redrawn), which estimates
``P[loss(t) ≤ loss(canary)]`` for t uniform in R, their §4.2 sampling approach, with a +1 in
numerator and denominator so the estimate is never infinite; it cannot exceed ``log2(n + 1)``,
and ``censored`` is then True when no sampled candidate beat the canary (the true exposure may be
higher). Carlini's extrapolation by a fitted skew-normal is not implemented.

Randomness: secrets and the member/non-member split come from a :class:`privsem.rng.Randomness`
(OS entropy in secure mode), through :func:`uniform_integers`, an exact rejection sampler over
its 53-bit uniforms. The split is the auditor's secret and is returned separately from the
canaries, each canary included independently with probability ½ (the design the one-run audit
of :mod:`privsem.audits.one_run` requires).

Rules for changing this module: canary text is built only by :meth:`CanaryFormat.render`, so
the verbatim check and the exposure ranking see exactly the strings that were trained on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from privsem.data import Example
from privsem.rng import Randomness

_BITS53 = 1 << 53
SECRET = "{secret}"


def uniform_integers(randomness: Randomness, n: int, high: int) -> np.ndarray:
    """``n`` integers uniform on ``[0, high)`` (int64), exactly: each 53-bit uniform ``k/2**53``
    of ``randomness`` gives ``k - 1`` uniform on ``[0, 2**53 - 1)``, values at or above the
    largest multiple of ``high`` are redrawn, the rest are reduced mod ``high``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: {n!r} is not valid; use an integer >= 0")
    if isinstance(high, bool) or not isinstance(high, int) or not 1 <= high <= _BITS53 - 1:
        raise ValueError(f"high: {high!r} is not valid; use an integer in [1, 2**53 - 1]")
    span = _BITS53 - 1
    limit = span - span % high
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        need = n - filled
        k = (randomness.uniform(need + need // 8 + 8) * _BITS53).astype(np.int64) - 1
        k = k[k < limit][:need]
        out[filled:filled + k.size] = k % high
        filled += k.size
    return out


def random_split(n: int, randomness: Randomness) -> np.ndarray:
    """The auditor's secret: ``n`` booleans, each True (member) independently with prob. ½."""
    return uniform_integers(randomness, n, 2).astype(bool)


@dataclass(frozen=True)
class CanaryFormat:
    """A canary template and its secret space R = ``alphabet`` ^ ``length``.

    ``template`` is the reply the model is trained on and must contain ``{secret}`` exactly once;
    the secret is ``separator.join(length symbols of alphabet)``. ``prompt`` is the user turn
    the reply answers. :meth:`digits` and :meth:`words` build the two usual kinds.
    """

    template: str
    alphabet: tuple[str, ...]
    length: int
    separator: str = ""
    prompt: str = "Please repeat the note I gave you."

    def __post_init__(self) -> None:
        if self.template.count(SECRET) != 1:
            raise ValueError(f"template: {self.template!r} must contain {SECRET} exactly once")
        if not self.alphabet or len(set(self.alphabet)) != len(self.alphabet):
            raise ValueError(f"alphabet: {self.alphabet!r} must be non-empty with distinct "
                             "symbols")
        if any(not a or "{" in a or "}" in a for a in self.alphabet):
            raise ValueError("alphabet: symbols must be non-empty and free of braces")
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 1:
            raise ValueError(f"length: {self.length!r} is not valid; use an integer >= 1")
        if self.space_size > _BITS53 - 1:
            raise ValueError(f"secret space |R| = {len(self.alphabet)}^{self.length} is larger "
                             "than 2**53 - 1; use a shorter secret")

    @classmethod
    def digits(cls, length: int = 6, template: str = "My account PIN is {secret}.", *,
               prompt: str = "What is my account PIN?") -> CanaryFormat:
        return cls(template=template, alphabet=tuple("0123456789"), length=length,
                   separator="", prompt=prompt)

    @classmethod
    def words(cls, vocabulary: Sequence[str], length: int = 4,
              template: str = "The secret phrase is {secret}.", *,
              prompt: str = "What is the secret phrase?") -> CanaryFormat:
        return cls(template=template, alphabet=tuple(vocabulary), length=length, separator=" ",
                   prompt=prompt)

    @property
    def space_size(self) -> int:
        """|R|."""
        return len(self.alphabet) ** self.length

    def secret_of(self, index: int) -> str:
        """The secret with mixed-radix index ``index`` in ``[0, |R|)`` (first symbol most
        significant): a bijection between R and the integers below |R|."""
        if not 0 <= index < self.space_size:
            raise ValueError(f"index: {index} is outside [0, {self.space_size})")
        base = len(self.alphabet)
        symbols = []
        for _ in range(self.length):
            index, d = divmod(index, base)
            symbols.append(self.alphabet[d])
        return self.separator.join(reversed(symbols))

    def render(self, secret: str) -> str:
        return self.template.replace(SECRET, secret)

    def example(self, secret: str) -> Example:
        """The training example carrying ``secret``: the prompt, then the rendered reply."""
        return Example(messages=(("user", self.prompt),), response=self.render(secret))


@dataclass(frozen=True)
class Canary:
    index: int
    secret_index: int  # position of the secret in R (see CanaryFormat.secret_of)
    secret: str
    text: str  # the rendered reply, what a verbatim leak would contain
    example: Example

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "secret_index": self.secret_index, "secret": self.secret,
                "text": self.text, "prompt": self.example.messages[-1][1]}


def make_canaries(fmt: CanaryFormat, n: int, randomness: Randomness) -> list[Canary]:
    """``n`` canaries with distinct secrets drawn uniformly from R (redrawn on a repeat)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: {n!r} is not valid; use an integer >= 0")
    if n > fmt.space_size:
        raise ValueError(f"n: {n} distinct canaries asked for, but |R| = {fmt.space_size}")
    chosen: list[int] = []
    seen: set[int] = set()
    while len(chosen) < n:
        for idx in uniform_integers(randomness, n - len(chosen), fmt.space_size).tolist():
            if idx not in seen:
                seen.add(idx)
                chosen.append(idx)
    out = []
    for i, idx in enumerate(chosen):
        secret = fmt.secret_of(idx)
        out.append(Canary(index=i, secret_index=idx, secret=secret, text=fmt.render(secret),
                          example=fmt.example(secret)))
    return out


def plant_canaries(fmt: CanaryFormat, n: int, randomness: Randomness
                   ) -> tuple[list[Canary], np.ndarray]:
    """``n`` canaries and, separately, the auditor's secret inclusion vector (bool, shape
    (n,)): canary i goes into the training data iff ``included[i]``."""
    return make_canaries(fmt, n, randomness), random_split(n, randomness)


# ---------------------------------------------------------------------------------------------
# Exposure

LossFn = Callable[[Sequence[Example]], np.ndarray]
"""Maps examples to one loss each (lower = more likely under the model), e.g.
``functools.partial(privsem.audits.mia.example_losses, model, tokenizer)``."""


@dataclass(frozen=True)
class Exposure:
    """Secret Sharer exposure of one canary (see the module docstring for the definition)."""

    canary_index: int
    exposure: float
    rank: float  # 1 + c: the canary's rank among itself and the n compared candidates
    compared: int  # n
    space_size: int  # |R|
    method: str  # "enumerated" (exact) or "sampled" (estimate, capped at log2(n + 1))
    censored: bool  # sampled and no candidate beat the canary: the exposure may be higher
    canary_loss: float

    def to_json(self) -> dict[str, Any]:
        return {"canary_index": self.canary_index, "exposure": self.exposure, "rank": self.rank,
                "compared": self.compared, "space_size": self.space_size,
                "method": self.method, "censored": self.censored,
                "canary_loss": self.canary_loss}


def exposure(canary_loss: float, candidate_losses: np.ndarray) -> tuple[float, float]:
    """``(exposure, rank)`` of a canary against ``n`` other candidates' losses: rank = 1 + c,
    c = #{loss < canary_loss} + ½·#{loss = canary_loss}; exposure = log2(n + 1) − log2(rank)."""
    losses = np.asarray(candidate_losses, dtype=np.float64)
    if losses.ndim != 1:
        raise ValueError(f"candidate_losses: expected a 1-d array, got shape {losses.shape}")
    if not math.isfinite(canary_loss) or not np.all(np.isfinite(losses)):
        raise ValueError("exposure: losses must be finite")
    c = float(np.sum(losses < canary_loss)) + 0.5 * float(np.sum(losses == canary_loss))
    rank = 1.0 + c
    return math.log2(losses.size + 1) - math.log2(rank), rank


def chance_exposure(space_size: int) -> float:
    """Expected exposure of a canary whose rank is uniform on 1..|R| (a model that never saw
    it): log2|R| − log2(|R|!)/|R|, which tends to log2 e ≈ 1.443 bits."""
    if isinstance(space_size, bool) or not isinstance(space_size, int) or space_size < 1:
        raise ValueError(f"space_size: {space_size!r} is not valid; use an integer >= 1")
    return math.log2(space_size) - math.lgamma(space_size + 1) / math.log(2) / space_size


def secret_sharer_exposure(canary: Canary, fmt: CanaryFormat, loss_fn: LossFn,
                           randomness: Randomness, *, max_enumerate: int = 10_000,
                           n_samples: int = 2_000) -> Exposure:
    """Exposure of ``canary`` under the model behind ``loss_fn``: exact by enumerating R when
    ``|R| − 1 <= max_enumerate``, else estimated from ``n_samples`` uniform draws from R
    (``randomness`` draws them). ``loss_fn`` sees the canary's example first, then the
    candidates'."""
    if fmt.render(canary.secret) != canary.text:
        raise ValueError(f"canary {canary.index}: its text was not rendered by this format")
    size = fmt.space_size
    if size - 1 <= max_enumerate:
        others = [i for i in range(size) if i != canary.secret_index]
        method = "enumerated"
    else:
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples: {n_samples!r} is not valid; use an integer >= 1")
        draws = uniform_integers(randomness, n_samples, size)
        while np.any(draws == canary.secret_index):  # draw from R minus the canary's secret
            hit = draws == canary.secret_index
            draws[hit] = uniform_integers(randomness, int(hit.sum()), size)
        others = draws.tolist()
        method = "sampled"
    examples = [canary.example] + [fmt.example(fmt.secret_of(i)) for i in others]
    losses = np.asarray(loss_fn(examples), dtype=np.float64)
    if losses.shape != (len(examples),):
        raise ValueError(f"loss_fn returned shape {losses.shape} for {len(examples)} examples")
    exp, rank = exposure(float(losses[0]), losses[1:])
    return Exposure(canary_index=canary.index, exposure=exp, rank=rank, compared=len(others),
                    space_size=size, method=method,
                    censored=(method == "sampled" and rank == 1.0),
                    canary_loss=float(losses[0]))


# ---------------------------------------------------------------------------------------------
# Verbatim leaks (T34: canaries never appear verbatim in pseudo-labels)

_WS = re.compile(r"\s+")


def _normalise(text: str) -> str:
    return _WS.sub(" ", text).strip()


@dataclass(frozen=True)
class VerbatimHit:
    canary_index: int
    text_index: int
    matched: str  # "canary" (the whole rendered reply) or "secret" (the secret alone)


@dataclass(frozen=True)
class VerbatimReport:
    texts_checked: int
    canaries_checked: int
    hits: tuple[VerbatimHit, ...]

    @property
    def clean(self) -> bool:
        return not self.hits

    def to_json(self) -> dict[str, Any]:
        return {"texts_checked": self.texts_checked, "canaries_checked": self.canaries_checked,
                "clean": self.clean,
                "hits": [{"canary_index": h.canary_index, "text_index": h.text_index,
                          "matched": h.matched} for h in self.hits]}


def find_verbatim(canaries: Sequence[Canary], texts: Sequence[str], *,
                  check_secret: bool = True) -> VerbatimReport:
    """Every (canary, text) pair where the canary's rendered reply, or (``check_secret``) its
    secret alone, occurs in the text as a substring, after collapsing runs of whitespace to one
    space (case-sensitive). A secret found alone is reported even if it could be a coincidence
    (6 random digits occur by chance in about n·10⁻⁶ of n-digit strings): the report is a leak
    signal for a person to look at, and pseudo-labels should hold none."""
    norm_texts = [_normalise(t) for t in texts]
    hits: list[VerbatimHit] = []
    for c in canaries:
        whole, secret = _normalise(c.text), _normalise(c.secret)
        for j, t in enumerate(norm_texts):
            if whole in t:
                hits.append(VerbatimHit(c.index, j, "canary"))
            elif check_secret and secret in t:
                hits.append(VerbatimHit(c.index, j, "secret"))
    return VerbatimReport(texts_checked=len(texts), canaries_checked=len(canaries),
                          hits=tuple(hits))
