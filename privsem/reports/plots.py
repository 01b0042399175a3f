"""The report's plots as PNG bytes, drawn with matplotlib's object API on the Agg canvas.

No pyplot and no global state: each figure is a ``matplotlib.figure.Figure`` rendered to bytes
under an ``rc_context``. Every plot reads :class:`~privsem.reports.model.RunData` only, so it
shows the same numbers as the tables. A client keeps its colour in every plot.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from privsem.reports.model import RunData

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
UNIT_TITLE = {"record": "record level (one training example)",
              "client": "client level (all of one client's uploads)"}


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None}, bbox_inches="tight")
    return buf.getvalue()


def _colours(data: RunData) -> dict[str, tuple[float, float, float, float]]:
    cmap = matplotlib.colormaps["tab10"]
    return {c: cmap(i % 10) for i, c in enumerate(data.clients)}


def _round_ticks(ax: Axes, last: int) -> None:
    ax.set_xticks(list(range(last + 1)))
    ax.set_xlim(-0.2, last + 0.2)


def epsilon_plot(data: RunData) -> bytes:
    """ε spent per client after each round, one panel per unit, budget as a horizontal line."""
    col = _colours(data)
    fig = Figure(figsize=(10.5, 3.8))
    axes = fig.subplots(1, 2)
    n = len(data.clients)
    for ax, unit in zip(axes, ("record", "client"), strict=True):
        s = data.spend[unit]
        ax.set_title(f"ε spent, {UNIT_TITLE[unit]}")
        ax.set_xlabel("after round")
        ax.set_ylabel(f"ε (δ = {s.delta:g})")
        _round_ticks(ax, data.last_round)
        if not s.enabled or any(math.isinf(v) for vs in s.by_client.values() for v in vs):
            ax.text(0.5, 0.5, "no guarantee at this level\n(DP off: ε = ∞)",
                    ha="center", va="center", transform=ax.transAxes, fontsize=11)
            ax.set_yticks([])
            continue
        for i, (c, series) in enumerate(s.by_client.items()):
            # Clients often spend alike: draw later ones thinner so overlapping lines stay visible.
            ax.plot(range(len(series)), series, marker=MARKERS[i % len(MARKERS)],
                    color=col[c], lw=2.6 - 1.6 * i / max(n - 1, 1), ms=8 - 4 * i / max(n - 1, 1),
                    label=c)
        if math.isfinite(s.budget):
            ax.axhline(s.budget, color="#c0392b", ls="--", lw=1.4,
                       label=f"budget ε = {s.budget:g}")
        if s.target != s.budget:
            ax.axhline(s.target, color="#7f8c8d", ls=":", lw=1.2,
                       label=f"target ε = {s.target:g}")
        top = max([s.budget if math.isfinite(s.budget) else 0.0, s.worst(), 1e-3])
        ax.set_ylim(0, top * 1.12)
        ax.legend(loc="lower right", frameon=True)
    fig.tight_layout()
    return _png(fig)


def budget_plot(data: RunData) -> bytes:
    """Per unit, one bar per client: the budget, the part spent filled, what is left labelled."""
    col = _colours(data)
    clients = list(data.clients)
    fig = Figure(figsize=(10.5, 0.55 * len(clients) + 1.6))
    axes = fig.subplots(1, 2)
    for ax, unit in zip(axes, ("record", "client"), strict=True):
        s = data.spend[unit]
        ax.set_title(f"budget left after round {data.last_round}, {unit} level")
        ax.grid(axis="y", visible=False)
        y = list(range(len(clients)))
        ax.set_yticks(y, clients)
        ax.invert_yaxis()
        if not math.isfinite(s.budget):
            ax.text(0.5, 0.5, "no budget at this level (DP off)", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_xticks([])
            continue
        spent = [min(s.final(c), s.budget) for c in clients]
        ax.barh(y, [s.budget] * len(y), color="#e9edf2", edgecolor="#9aa5b1", height=0.6,
                label="budget")
        ax.barh(y, spent, color=[col[c] for c in clients], height=0.6, label="spent")
        for yi, c in zip(y, clients, strict=True):
            left = s.left(c)
            ax.text(s.budget * 1.01, yi, f"{left:.2f} left" if left > 1e-9 else "spent",
                    va="center", ha="left", fontsize=9)
        ax.set_xlim(0, s.budget * 1.22)
        ax.set_xlabel(f"ε (δ = {s.delta:g})")
    fig.tight_layout()
    return _png(fig)


def agreement_plot(data: RunData) -> bytes | None:
    """Debiased agreement ‖c_j‖ per prompt, one bar per round; None when no round has one."""
    rounds = [o for o in data.outcomes if o.agreement is not None]
    if not rounds:
        return None
    P = len(rounds[0].agreement or ())
    labels = list(data.prompt_ids) if len(data.prompt_ids) == P else [str(j + 1) for j in range(P)]
    width = 0.8 / len(rounds)
    fig = Figure(figsize=(max(7.0, min(0.42 * P * max(1, len(rounds) / 2) + 2, 15)), 4.0))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"]
    for k, o in enumerate(rounds):
        xs = [j - 0.4 + width * (k + 0.5) for j in range(P)]
        shade = cmap(0.15 + 0.7 * k / max(len(rounds) - 1, 1))
        ax.bar(xs, list(o.agreement or ()), width=width, color=shade, label=f"round {o.round}")
    ax.axhline(1.0, color="#555555", ls=":", lw=1.2, label="1: the most without noise")
    thr = data.cfg.consensus.agreement_threshold
    if thr > 0:
        ax.axhline(thr, color="#c0392b", ls="--", lw=1.2, label=f"label threshold {thr:g}")
    ax.set_xticks(list(range(P)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_xlim(-0.6, P - 0.4)
    ax.set_xlabel("public prompt")
    ax.set_ylabel("agreement ‖c_j‖ (debiased)")
    ax.set_title("Agreement of the consensus per prompt")
    ax.legend(loc="upper right", ncols=min(len(rounds) + 1 + (thr > 0), 4))
    top = max([thr, 1.0, *(a for o in rounds for a in (o.agreement or ()))])
    ax.set_ylim(0, top * 1.18)
    fig.tight_layout()
    return _png(fig)


def utility_plot(data: RunData) -> bytes | None:
    """Held-out scores per client and round: own topics solid, other clients' topics dashed."""
    panels = [(s, title, yl) for s, title, yl in (
        ("similarity", "answer similarity to the reference", "cosine similarity (higher is better)"),
        ("nll", "reference NLL", "nats per token (lower is better)"),
        ("key_recall", "key recall", "share of answers with the fact"))
        if any(r.scores.get(f"{w}_{s}") is not None for r in data.rows for w in ("own", "other"))]
    if not panels:
        return None
    col = _colours(data)
    fig = Figure(figsize=(3.6 * len(panels) + 0.6, 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (score, title, ylabel) in zip(axes, panels, strict=True):
        ax.set_title(title)
        ax.set_xlabel("round (0 = before training)")
        ax.set_ylabel(ylabel)
        _round_ticks(ax, max(data.metric_rounds, default=0))
        for c in data.clients:
            mine = sorted((r for r in data.rows if r.client == c), key=lambda r: r.round)
            for where, ls in (("own", "-"), ("other", "--")):
                pts = [(r.round, r.scores[f"{where}_{score}"]) for r in mine
                       if r.scores.get(f"{where}_{score}") is not None]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], ls=ls, marker="o", ms=4,
                            color=col[c], label=f"{c}, {where} topics")
    handles, labels = axes[0].get_legend_handles_labels()
    legend_rows = math.ceil(len(labels) / 6)
    fig.tight_layout(rect=(0, 0.03 + 0.065 * legend_rows, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncols=min(len(labels), 6), frameon=False)
    return _png(fig)


def bytes_plot(data: RunData) -> bytes | None:
    """KiB up and down per client per round (serialised messages), bars grouped by round."""
    rows = [r for r in data.rows if r.round > 0]
    if not rows:
        return None
    col = _colours(data)
    rounds = sorted({r.round for r in rows})
    clients = list(data.clients)
    width = 0.8 / len(clients)
    fig = Figure(figsize=(10.5, 3.6))
    axes = fig.subplots(1, 2)
    for ax, direction in zip(axes, ("up", "down"), strict=True):
        for i, c in enumerate(clients):
            xs, ys = [], []
            for k, rnd in enumerate(rounds):
                r = next((r for r in rows if r.round == rnd and r.client == c), None)
                if r is not None:
                    xs.append(k - 0.4 + width * (i + 0.5))
                    ys.append((r.bytes_up if direction == "up" else r.bytes_down) / 1024)
            ax.bar(xs, ys, width=width, color=col[c], label=c)
        ax.set_xticks(list(range(len(rounds))), [f"round {r}" for r in rounds])
        ax.set_ylabel("KiB per client")
        ax.set_title(f"bytes {'sent (up)' if direction == 'up' else 'received (down)'}")
        ax.grid(axis="x", visible=False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.03 + 0.07 * math.ceil(len(labels) / 8), 1, 1))
    fig.legend(handles, labels, loc="lower center", ncols=min(len(labels), 8), frameon=False)
    return _png(fig)


PLOTS: dict[str, Callable[[RunData], bytes | None]] = {
    "epsilon": epsilon_plot, "budget": budget_plot, "agreement": agreement_plot,
    "utility": utility_plot, "bytes": bytes_plot}


def render_all(data: RunData) -> dict[str, bytes]:
    """Every plot that has data, keyed as the report's figures name them."""
    out = {}
    with matplotlib.rc_context({
            "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
            "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
            "grid.alpha": 0.3, "savefig.dpi": 110}):
        for key, fn in PLOTS.items():
            png = fn(data)
            if png is not None:
                out[key] = png
    return out
