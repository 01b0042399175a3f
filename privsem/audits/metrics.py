"""Membership-inference metrics: ROC curve, AUC, TPR at a low FPR, and a log-log ROC plot.

Convention everywhere in :mod:`privsem.audits`: a *higher* score means "more likely a member";
the attack guesses "member" for every example whose score is at or above a threshold.

Following Carlini, Chien, Nasr, Song, Terzis and Tramèr 2022 ("Membership Inference Attacks From
First Principles", IEEE S&P, §III), an attack is judged by its TPR at a low FPR (1 % and 0.1 %)
on a log-log ROC curve, not by its AUC or accuracy alone. A TPR at FPR 0.1 % only means
something with at least 1000 non-members: with fewer, the smallest non-zero FPR the data can show
is 1 / (number of non-members), and :func:`tpr_at_fpr` says so in its result instead of
pretending to resolve it.

Rules for changing this module: functions stay pure (arrays in, numbers or frozen dataclasses
out); every result that leaves the process has ``to_json()`` returning plain Python types; the
definitions in the docstrings are the contract the tests check (the AUC against the
Mann-Whitney U statistic).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike


def _scores(name: str, values: ArrayLike) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d array of scores, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: no scores; at least one is needed")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"{name}: score {bad} is {arr[bad]!r}; scores must be finite")
    return arr


@dataclass(frozen=True)
class RocCurve:
    """The empirical ROC curve of a threshold attack.

    Point ``j`` is the attack "member iff score >= thresholds[j]". ``thresholds`` run from
    ``+inf`` (no one flagged: the point (0, 0)) down through every distinct score, so the last
    point is (1, 1). ``fpr`` and ``tpr`` are non-decreasing.
    """

    fpr: np.ndarray  # (T,)
    tpr: np.ndarray  # (T,)
    thresholds: np.ndarray  # (T,), strictly decreasing, thresholds[0] = +inf
    n_members: int
    n_nonmembers: int

    def to_json(self) -> dict[str, Any]:
        return {"fpr": self.fpr.tolist(), "tpr": self.tpr.tolist(),
                "thresholds": [t if math.isfinite(t) else "inf" for t in self.thresholds.tolist()],
                "n_members": self.n_members, "n_nonmembers": self.n_nonmembers}


def roc_curve(member_scores: ArrayLike, nonmember_scores: ArrayLike) -> RocCurve:
    """The ROC curve of the threshold attack on the given scores (higher score = member).

    Every distinct score is a threshold; ties between a member and a non-member move both rates
    at once (a diagonal step), which is what makes the trapezoidal area count a tie as half.
    """
    mem = _scores("member_scores", member_scores)
    non = _scores("nonmember_scores", nonmember_scores)
    thresholds = np.unique(np.concatenate([mem, non]))[::-1]  # distinct, decreasing
    mem_sorted, non_sorted = np.sort(mem), np.sort(non)
    # number of scores >= t, for each threshold t
    tp = mem.size - np.searchsorted(mem_sorted, thresholds, side="left")
    fp = non.size - np.searchsorted(non_sorted, thresholds, side="left")
    return RocCurve(fpr=np.concatenate([[0.0], fp / non.size]),
                    tpr=np.concatenate([[0.0], tp / mem.size]),
                    thresholds=np.concatenate([[np.inf], thresholds]),
                    n_members=int(mem.size), n_nonmembers=int(non.size))


def auc(member_scores: ArrayLike, nonmember_scores: ArrayLike) -> float:
    """Exact area under the ROC curve: P[s_member > s_nonmember] + ½·P[s_member = s_nonmember],
    over independent uniform draws of one member and one non-member score.

    Computed by the trapezoidal rule on :func:`roc_curve`, which is exact for the empirical
    curve; it equals the Mann-Whitney U statistic of the members divided by
    ``n_members · n_nonmembers`` (Hanley and McNeil 1982), as the tests check.
    """
    roc = roc_curve(member_scores, nonmember_scores)
    return float(np.sum(np.diff(roc.fpr) * (roc.tpr[1:] + roc.tpr[:-1]) / 2.0))


def mann_whitney_auc(member_scores: ArrayLike, nonmember_scores: ArrayLike) -> float:
    """AUC by mid-ranks: (R_members − n₁(n₁+1)/2) / (n₁·n₀), R the rank sum of the members with
    tied scores given their mean rank. Same value as :func:`auc`; kept as the cross-check."""
    mem = _scores("member_scores", member_scores)
    non = _scores("nonmember_scores", nonmember_scores)
    both = np.concatenate([mem, non])
    order = np.argsort(both, kind="stable")
    ranks = np.empty(both.size, dtype=np.float64)
    ranks[order] = np.arange(1, both.size + 1, dtype=np.float64)
    values, inverse = np.unique(both, return_inverse=True)  # mid-ranks for ties
    sums = np.bincount(inverse, weights=ranks, minlength=values.size)
    counts = np.bincount(inverse, minlength=values.size)
    mid = (sums / counts)[inverse]
    u = float(mid[: mem.size].sum()) - mem.size * (mem.size + 1) / 2.0
    return u / (mem.size * non.size)


@dataclass(frozen=True)
class TprAtFpr:
    """The best TPR of a threshold attack whose FPR is at most ``target_fpr``.

    ``tpr = max {TPR(t) : FPR(t) <= target_fpr}`` over the thresholds of :func:`roc_curve`
    (no interpolation between thresholds). ``max_false_positives = floor(target_fpr ·
    n_nonmembers)`` is how many non-members the attack may flag; when it is 0 the data cannot
    resolve ``target_fpr`` (``resolved`` is False) and ``tpr`` is the TPR at zero false
    positives, i.e. at an FPR below ``1 / n_nonmembers``; ``note`` says so in words.
    """

    target_fpr: float
    tpr: float
    achieved_fpr: float
    threshold: float
    true_positives: int
    false_positives: int
    max_false_positives: int
    n_members: int
    n_nonmembers: int
    resolved: bool
    note: str

    def to_json(self) -> dict[str, Any]:
        return {"target_fpr": self.target_fpr, "tpr": self.tpr, "achieved_fpr": self.achieved_fpr,
                "threshold": self.threshold if math.isfinite(self.threshold) else "inf",
                "true_positives": self.true_positives, "false_positives": self.false_positives,
                "max_false_positives": self.max_false_positives, "n_members": self.n_members,
                "n_nonmembers": self.n_nonmembers, "resolved": self.resolved, "note": self.note}


def tpr_at_fpr(member_scores: ArrayLike, nonmember_scores: ArrayLike, target_fpr: float
               ) -> TprAtFpr:
    """TPR at FPR ≤ ``target_fpr`` (see :class:`TprAtFpr` for the exact definition)."""
    if not (isinstance(target_fpr, (int, float)) and 0.0 < target_fpr < 1.0):
        raise ValueError(f"target_fpr: {target_fpr!r} is not valid; use a number in (0, 1)")
    roc = roc_curve(member_scores, nonmember_scores)
    n1, n0 = roc.n_members, roc.n_nonmembers
    fp = np.rint(roc.fpr * n0).astype(np.int64)  # exact counts back from the rates
    tp = np.rint(roc.tpr * n1).astype(np.int64)
    max_fp = math.floor(target_fpr * n0 + 1e-9)  # the 1e-9 guards 0.01 * 300 = 2.9999…
    ok = np.flatnonzero(fp <= max_fp)  # non-empty: the +inf threshold has fp = 0
    j = int(ok[np.argmax(tp[ok])])  # first (highest-threshold) index with the best TPR
    resolved = max_fp >= 1
    if resolved:
        note = (f"FPR <= {target_fpr:g} allows {max_fp} false positive(s) among {n0} "
                "non-members")
    else:
        note = (f"not resolved: {n0} non-members cannot show an FPR of {target_fpr:g} (the "
                f"smallest non-zero FPR is 1/{n0} = {1 / n0:.3g}; at least "
                f"{math.ceil(1 / target_fpr - 1e-9)} are needed); the TPR given is at zero false "
                "positives")
    return TprAtFpr(target_fpr=float(target_fpr), tpr=float(tp[j] / n1),
                    achieved_fpr=float(fp[j] / n0), threshold=float(roc.thresholds[j]),
                    true_positives=int(tp[j]), false_positives=int(fp[j]),
                    max_false_positives=int(max_fp), n_members=n1, n_nonmembers=n0,
                    resolved=resolved, note=note)


@dataclass(frozen=True)
class AttackSummary:
    """AUC and TPR at the standard low FPRs of one attack on one member/non-member split."""

    attack: str
    auc: float
    tpr_at: tuple[TprAtFpr, ...]
    n_members: int
    n_nonmembers: int

    def to_json(self) -> dict[str, Any]:
        return {"attack": self.attack, "auc": self.auc,
                "tpr_at_fpr": [t.to_json() for t in self.tpr_at],
                "n_members": self.n_members, "n_nonmembers": self.n_nonmembers}


def summarize_attack(attack: str, member_scores: ArrayLike, nonmember_scores: ArrayLike, *,
                     fprs: Sequence[float] = (0.01, 0.001)) -> AttackSummary:
    """AUC plus :func:`tpr_at_fpr` at each of ``fprs`` (default 1 % and 0.1 %)."""
    mem = _scores("member_scores", member_scores)
    non = _scores("nonmember_scores", nonmember_scores)
    return AttackSummary(attack=attack, auc=auc(mem, non),
                         tpr_at=tuple(tpr_at_fpr(mem, non, f) for f in fprs),
                         n_members=int(mem.size), n_nonmembers=int(non.size))


def plot_roc_loglog(curves: dict[str, RocCurve], path: str | Path, *,
                    title: str = "Membership inference ROC (log-log)") -> Path:
    """Writes a log-log ROC plot of ``curves`` (label → curve) to ``path`` (PNG, SVG or PDF by
    suffix) and returns the path.

    Points with FPR or TPR 0 cannot be drawn on log axes; the axes start at half the smallest
    resolvable rate, ``1 / (2 · n)``, so the leftmost drawn point is the first false positive.
    The diagonal is the chance line (TPR = FPR). matplotlib is imported here, not at module
    import, and drawn through its object-oriented Agg canvas, which leaves pyplot's global
    state alone.
    """
    if not curves:
        raise ValueError("curves: nothing to plot; pass at least one label -> RocCurve")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plot_roc_loglog needs matplotlib; install it with "
                          "`pip install matplotlib`") from e
    out = Path(path)
    fig = Figure(figsize=(4.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    floor = min(min(0.5 / c.n_nonmembers, 0.5 / c.n_members) for c in curves.values())
    for label, c in curves.items():
        keep = (c.fpr > 0) & (c.tpr > 0)
        ax.plot(c.fpr[keep], c.tpr[keep], drawstyle="steps-post", label=label)
    ax.plot([floor, 1.0], [floor, 1.0], linestyle="--", color="grey", linewidth=0.8,
            label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(floor, 1.0)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
