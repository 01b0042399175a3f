"""Empirical ε lower bounds from one training run (Steinke, Nasr and Jagielski 2023).

The audit (T. Steinke, M. Nasr, M. Jagielski, "Privacy Auditing with One (1) Training Run",
NeurIPS 2023, arXiv:2305.08846, Algorithm 1): ``m`` canaries are each included in the training
data independently with probability ½; the inclusion vector ``S`` is the auditor's secret. After
the single run the auditor scores every canary (higher score = "was included"), guesses
"included" for the ``k₊`` highest scores and "excluded" for the ``k₋`` lowest, abstains on the
rest, and counts the ``v`` correct guesses out of ``r = k₊ + k₋``.

The bound (their main result, Theorem 3.1 of arXiv:2305.08846, for (ε, δ)-DP). If the training
algorithm is (ε, δ)-DP with respect to the inclusion of each canary, then for every ``v``::

    P[W ≥ v] ≤ P[W' ≥ v] + 2·m·δ · max_{i = 1..m} P[v − i ≤ W' < v] / i,
    W' ~ Binomial(r, e^ε / (1 + e^ε)),

where W is the number of correct guesses. For δ = 0 this says that W is stochastically
dominated by Binomial(r, e^ε/(1+e^ε)), the accuracy of ε-DP randomised response on each bit.
:func:`p_value` computes the right-hand side exactly as the paper's Appendix D code
(``p_value_DP_audit``) does; the maximum can stop at ``i = v`` because for ``i ≥ v`` the
numerator no longer grows. :func:`epsilon_lower_bound` is their ``get_eps_audit``: the largest ε
at which the observed ``v`` has p-value below β, found by bracketing and bisection (it
returns the low end of the final bracket, i.e. it never rounds up). Reproduced published values:
``(m, r, v, δ, β) = (1000, 100, 75, 1e-4, 0.05)`` gives 0.673 (Appendix D) and
``(100000, 1510, 1439, 1e-5, 0.05)`` gives 2.675 (§7); the tests check both.

Why any rejected ε is a valid bound (confidence 1 − β), without assuming the p-value is
monotone in ε: let ε* be the true ε of the algorithm (at this δ). It is (ε, δ)-DP for every
ε ≥ ε*, so g(v) = min over ε ≥ ε* and u ≤ v of p_u(ε) is still a tail bound, P[W ≥ v] ≤ g(v),
and it is non-increasing in v; hence P[g(W) < β] ≤ β. Reporting some ε > ε* with p_W(ε) < β
implies g(W) < β. Monotonicity only matters for bisection to find the *largest* rejected ε; it
was checked numerically (3000 random (m, r, v, δ), 400-point ε grid: no decrease).

Rules the caller must keep for the bound to mean anything: the guesses may depend on the scores
(the training output) but never on ``S``; ties between equal scores are broken by canary index,
which is independent of ``S``. Choosing (k₊, k₋) after looking at ``S`` is a multiple test:
:func:`one_run_audit_grid` tries a grid fixed in advance and pays for it with a union bound
(each grid point is tested at β / |grid|), so the maximum over the grid still holds with
confidence 1 − β.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import special, stats


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: {value!r} is not an integer count")
    return int(value)


def _check_counts(m: object, r: object, v: object) -> tuple[int, int, int]:
    m_, r_, v_ = _count("m", m), _count("r", r), _count("v", v)
    if m_ < 1:
        raise ValueError(f"m: {m_} canaries; at least one is needed")
    if not 0 <= v_ <= r_ <= m_:
        raise ValueError(f"need 0 <= v <= r <= m (correct <= guesses <= canaries), got v={v_}, "
                         f"r={r_}, m={m_}")
    return m_, r_, v_


def _check_delta(delta: float) -> float:
    if not (isinstance(delta, (int, float)) and not isinstance(delta, bool)
            and 0.0 <= delta < 1.0):
        raise ValueError(f"delta: {delta!r} is not valid; use a number in [0, 1)")
    return float(delta)


def _check_beta(name: str, beta: float) -> float:
    if not (isinstance(beta, (int, float)) and not isinstance(beta, bool) and 0.0 < beta < 1.0):
        raise ValueError(f"{name}: {beta!r} is not valid; use a number in (0, 1)")
    return float(beta)


def p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Upper bound on P[at least ``v`` of ``r`` guesses correct] for any (ε, δ)-DP algorithm in
    the one-run game with ``m`` canaries (Steinke et al. 2023, Thm 3.1; App. D's
    ``p_value_DP_audit``). See the module docstring for the formula."""
    m, r, v = _check_counts(m, r, v)
    delta = _check_delta(delta)
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon: {epsilon!r} is not valid; use a finite number >= 0")
    q = float(special.expit(epsilon))  # e^ε / (1 + e^ε): accuracy of ε-DP randomised response
    tail = float(stats.binom.sf(v - 1, r, q))  # P[W' >= v]
    if delta == 0.0 or v == 0:
        return min(tail, 1.0)
    i = np.arange(1, v + 1)  # (v,)
    window = np.cumsum(stats.binom.pmf(v - i, r, q))  # P[v - i <= W' < v]
    alpha = float(np.max(window / i))
    return min(tail + 2.0 * m * delta * alpha, 1.0)


def epsilon_lower_bound(*, m: int, r: int, v: int, delta: float, beta: float,
                        tolerance: float = 1e-9) -> float:
    """The largest ε at which ``v`` correct of ``r`` guesses has :func:`p_value` below ``beta``
    (0 if not even ε = 0 is rejected): with confidence 1 − β the algorithm is not (ε', δ)-DP
    for any ε' below it. App. D's ``get_eps_audit``: the bracket's top steps up by 1 until it
    is not rejected, then bisection to ``tolerance``; the low end is returned."""
    m, r, v = _check_counts(m, r, v)
    delta, beta = _check_delta(delta), _check_beta("beta", beta)
    if not (isinstance(tolerance, float) and tolerance > 0):
        raise ValueError(f"tolerance: {tolerance!r} is not valid; use a float > 0")

    def rejected(eps: float) -> bool:
        return p_value(m=m, r=r, v=v, epsilon=eps, delta=delta) < beta

    if not rejected(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while rejected(hi):  # terminates: at ε ≳ 37, q rounds to 1 and P[W' >= v] = 1
        lo, hi = hi, hi + 1.0
    while hi - lo > tolerance:
        mid = (lo + hi) / 2.0
        if mid in (lo, hi):
            break
        if rejected(mid):
            lo = mid
        else:
            hi = mid
    return lo


def perfect_guessing_bound(*, r: int, beta: float) -> float:
    """Closed form of :func:`epsilon_lower_bound` for δ = 0 and ``v = r``: the p-value is
    q^r, so ε = logit(β^(1/r)) (used by the tests as the reference)."""
    r = _count("r", r)
    if r < 1:
        raise ValueError(f"r: {r} guesses; at least one is needed")
    beta = _check_beta("beta", beta)
    q = beta ** (1.0 / r)
    return max(0.0, math.log(q) - math.log1p(-q))


@dataclass(frozen=True)
class OneRunAudit:
    """Result of a one-run audit.

    ``epsilon_lower_bound`` holds with probability at least ``confidence`` over the random
    inclusion of the canaries: the training run was not (ε', ``delta``)-DP for any ε' below it.
    ``grid_size`` is the number of (k₊, k₋) pairs tried; each was tested at
    ``beta_per_test = (1 − confidence) / grid_size`` (union bound), and the reported pair is the
    one with the largest bound (ties: the first in grid order).
    """

    epsilon_lower_bound: float
    confidence: float
    r: int
    v: int
    k_plus: int
    k_minus: int
    m: int
    delta: float
    beta_per_test: float
    grid_size: int
    p_value_at_bound: float

    def contradicts(self, claimed_epsilon: float) -> bool:
        """True if the audit refutes the accounted ε at this δ (T43: a bug signal, fail CI).
        Only meaningful when ``delta`` is the δ the accountant reported ε for."""
        return self.epsilon_lower_bound > claimed_epsilon

    def to_json(self) -> dict[str, Any]:
        return {"epsilon_lower_bound": self.epsilon_lower_bound, "confidence": self.confidence,
                "r": self.r, "v": self.v, "k_plus": self.k_plus, "k_minus": self.k_minus,
                "m": self.m, "delta": self.delta, "beta_per_test": self.beta_per_test,
                "grid_size": self.grid_size, "p_value_at_bound": self.p_value_at_bound}


def _inputs(scores: ArrayLike, included: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(included)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores: expected a non-empty 1-d array, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores: every canary's score must be finite")
    if inc.shape != s.shape:
        raise ValueError(f"included: shape {inc.shape} does not match scores {s.shape}")
    if inc.dtype != np.bool_:
        raise ValueError(f"included: expected a boolean array (the secret inclusion vector), "
                         f"got dtype {inc.dtype}")
    return s, inc


def guess_counts(scores: ArrayLike, included: ArrayLike, *, k_plus: int, k_minus: int
                 ) -> tuple[int, int]:
    """``(r, v)``: guess "included" for the ``k_plus`` highest scores and "excluded" for the
    ``k_minus`` lowest (ties broken by canary index, never by ``included``), count the correct
    guesses. Steinke et al. 2023, Algorithm 1, steps 6-8."""
    s, inc = _inputs(scores, included)
    kp, km = _count("k_plus", k_plus), _count("k_minus", k_minus)
    if kp < 0 or km < 0 or kp + km > s.size:
        raise ValueError(f"k_plus={kp}, k_minus={km}: need both >= 0 and k_plus + k_minus <= "
                         f"m = {s.size}")
    order = np.lexsort((np.arange(s.size), -s))  # descending score, then ascending index
    plus, minus = order[:kp], order[s.size - km:]
    v = int(inc[plus].sum()) + int((~inc[minus]).sum())
    return kp + km, v


def one_run_audit(scores: ArrayLike, included: ArrayLike, *, k_plus: int, k_minus: int,
                  delta: float, confidence: float = 0.95) -> OneRunAudit:
    """The one-run audit with a single (k₊, k₋) fixed before looking at ``included``."""
    return one_run_audit_grid(scores, included, grid=[(k_plus, k_minus)], delta=delta,
                              confidence=confidence)


def default_grid(m: int) -> list[tuple[int, int]]:
    """A small grid of (k₊, k₋), fixed before the audit: k₊ = ⌈f·m⌉ for f in 1, 2, 5, 10, 20
    and 50 %, each with k₋ = 0 (guess members only) and k₋ = k₊; duplicates and pairs with
    k₊ + k₋ > m dropped. At most 12 pairs, so each is tested at β/12."""
    m = _count("m", m)
    if m < 1:
        raise ValueError(f"m: {m} canaries; at least one is needed")
    grid: list[tuple[int, int]] = []
    for f in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5):
        k = max(1, math.ceil(f * m))
        for pair in ((k, 0), (k, k)):
            if sum(pair) <= m and pair not in grid:
                grid.append(pair)
    return grid


def one_run_audit_grid(scores: ArrayLike, included: ArrayLike, *,
                       grid: Sequence[tuple[int, int]] | None = None, delta: float,
                       confidence: float = 0.95) -> OneRunAudit:
    """The best bound over a grid of (k₊, k₋) fixed in advance (default :func:`default_grid`),
    each tested at β/|grid| with β = 1 − ``confidence`` (Bonferroni), so the reported maximum
    holds with confidence ``confidence``."""
    s, inc = _inputs(scores, included)
    delta = _check_delta(delta)
    beta = 1.0 - _check_beta("confidence", confidence)
    pairs = list(default_grid(s.size) if grid is None else grid)
    if not pairs:
        raise ValueError("grid: no (k_plus, k_minus) pair to try")
    per_test = beta / len(pairs)
    best: OneRunAudit | None = None
    for kp, km in pairs:
        r, v = guess_counts(s, inc, k_plus=kp, k_minus=km)
        eps = epsilon_lower_bound(m=s.size, r=r, v=v, delta=delta, beta=per_test)
        if best is None or eps > best.epsilon_lower_bound:
            best = OneRunAudit(
                epsilon_lower_bound=eps, confidence=float(confidence), r=r, v=v, k_plus=int(kp),
                k_minus=int(km), m=int(s.size), delta=delta, beta_per_test=per_test,
                grid_size=len(pairs),
                p_value_at_bound=p_value(m=s.size, r=r, v=v, epsilon=eps, delta=delta))
    if best is None:  # unreachable: pairs is non-empty
        raise ValueError("grid: no (k_plus, k_minus) pair to try")
    return best
