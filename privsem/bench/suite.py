"""``privsem bench``: every method on the same federations, tasks and seeds, side by side.

The grid: tasks (``knowledge``, ``instructions``) × federations (``homogeneous``: three clients of
one architecture, where FedAvg can run; ``heterogeneous``: two architectures, where it cannot)
× privacy (``dp``: DP-SGD at record-level ε = 8, δ = 1e-5 for every method; ``none``: no DP
anywhere). In each cell: zero-shot, local-only, FedAvg (homogeneous only), centralised and
semantic consensus with record-level DP only (the protection FedAvg has); under ``dp`` also
``semantic+client``, privsem's default, which adds client-level noise at ε = 8 on every upload
(FedAvg offers no counterpart). Semantic consensus uses ``shared`` pseudo-label selection (the
paper's protocol: the server returns the candidate nearest the consensus), the only selection by
which a client can learn text its own model cannot produce.

Results: ``OUT/bench.json`` (everything, with the machine described), ``OUT/bench.md`` (the
tables), ``OUT/plots/*.png``; the run folders of every method stay under ``OUT/runs/``.

The full grid takes hours, so nothing finished is lost to an interruption: each method's result
is written to ``OUT/results/`` the moment it finishes, with what it was computed from (the
configuration, the content of every data file it read) and when and where it ran. A run with
``resume=True`` keeps every stored result whose inputs still match and runs only the rest; a run
folder left by an interrupted method, and a stored result that no longer matches, are moved
aside (``NAME.aside-K``), never deleted. ``bench.json`` says which results were kept and which
ran in this invocation.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privsem import bounded_json
from privsem.bench.baselines import METHODS, MethodRun, perplexity, run_method
from privsem.bench.tasks import TASK_CLIENTS, TASKS, TaskFiles, write_task
from privsem.config import RunConfig, build, to_dict

FEDERATIONS = ("homogeneous", "heterogeneous")
PRIVACY = ("dp", "none")
CLIENT_IDS = ("alice", "bob", "carol")
EPSILON, DELTA = 8.0, 1e-5


@dataclass(frozen=True)
class Size:
    """How big the benchmark runs: ``quick`` (CI, tiny random models), ``probe`` (the real
    models on a slice, for iterating: at most 15 minutes for the semantic runs on 2 cores) or
    the full run."""

    quick: bool
    models: tuple[str, str]  # architecture A (all homogeneous clients), architecture B
    rounds: int
    epochs_per_round: float
    candidates: int
    gen_tokens: dict[str, int]  # per task: answers to the public prompts
    eval_tokens: dict[str, int]  # per task: answers to the evaluation questions
    max_length: int
    name: str = "full"
    data: dict[str, dict[str, int]] | None = None  # per task: the task writer's sizes
    federations: tuple[str, ...] = FEDERATIONS
    privacy: tuple[str, ...] = PRIVACY
    tasks: tuple[str, ...] = TASKS


QUICK = Size(True, ("tiny-llama", "tiny-gemma3"), rounds=2, epochs_per_round=1.0, candidates=2,
             gen_tokens={"knowledge": 8, "instructions": 8, "overlap": 8},
             eval_tokens={"knowledge": 8, "instructions": 8, "overlap": 8}, max_length=96,
             name="quick")
# Answers to the knowledge task are one sentence (about 12 tokens), to the instructions task two
# or three (about 45); generation is the costliest phase on a CPU, so it gets what it needs.
FULL = Size(False, ("smollm2-135m-instruct", "gemma3-270m"), rounds=3, epochs_per_round=2.0,
            candidates=2, gen_tokens={"knowledge": 24, "instructions": 56, "overlap": 24},
            eval_tokens={"knowledge": 24, "instructions": 56, "overlap": 24}, max_length=128)
# The probe: the full size's models, data and private-data budget (6 epochs), in 2 rounds
# instead of 3, with fewer public prompts (instructions) and evaluation questions, one
# architecture, no DP. It moves with the full grid's no-DP cells; it does not replace them.
PROBE = Size(False, FULL.models, rounds=2, epochs_per_round=3.0, candidates=2,
             gen_tokens=FULL.gen_tokens, eval_tokens=FULL.eval_tokens, max_length=128,
             name="probe",
             data={"knowledge": {"entities_per_topic": 4, "eval_per_scope": 8},
                   "instructions": {"train_per_client": 16, "eval_per_scope": 4,
                                    "public_per_topic": 4}},
             federations=("homogeneous",), privacy=("none",),
             tasks=("knowledge", "instructions"))
SIZES = {"quick": QUICK, "probe": PROBE, "full": FULL}


def federation_models(federation: str, size: Size,
                      clients: Sequence[str] = CLIENT_IDS) -> dict[str, str]:
    """Each client's model: one architecture, or (heterogeneous) the second one for every
    client at an odd position (bob; bob and dave)."""
    a, b = size.models
    if federation == "homogeneous":
        return {c: a for c in clients}
    if federation == "heterogeneous":
        return {c: b if k % 2 else a for k, c in enumerate(clients)}
    raise ValueError(f"federation {federation!r} is not known; use one of "
                     f"{', '.join(FEDERATIONS)}")


def methods_for(federation: str, privacy: str) -> list[str]:
    """The method variants of a cell, in table order."""
    out = ["zero_shot", "local"]
    if federation == "homogeneous":
        out.append("fedavg")
    out += ["centralised", "semantic"]
    if privacy == "dp":
        out.append("semantic+client")
    return out


# Variants of semantic consensus: the default (``semantic``), with client-level noise, and the
# ablations (each a change of the default's configuration).
VARIANTS: dict[str, dict[str, Any]] = {
    "semantic": {},
    "semantic+client": {"privacy": {"client": {"enabled": True}}},
    # the earlier protocol: plain mean, labels trained on after private training, every label
    "semantic-sequential": {"training": {"schedule": "sequential", "pseudo_label_epochs": 1,
                                         "pseudo_label_learning_rate": 1e-3},
                            "consensus": {"confidence": "none", "accept_labels": False,
                                          "nominate": "nearest"}},
    # the default before routing (stops 23–29): ¾ of the private budget before round 1, the
    # rest mixed with the labels; ``gain`` confidence; refuse a label only 0.5 nats less likely
    "semantic-unrouted": {
        "training": {"first_phase_share": 0.75, "pseudo_label_epochs": 2,
                     "pseudo_label_learning_rate": 1e-3},
        "consensus": {"confidence": "gain", "route": "none", "accept_margin": 0.5,
                      "own_answer": False}},
    "semantic-nearest": {"consensus": {"nominate": "nearest"}},
    "semantic-mean": {"consensus": {"confidence": "none"}},
    "semantic-likelihood": {"consensus": {"confidence": "likelihood"}},
    "semantic-self_agreement": {"consensus": {"confidence": "self_agreement"}},
    "semantic-proximity": {"consensus": {"confidence": "proximity"}},
    "semantic-proximity-keep_own": {"consensus": {"confidence": "proximity",
                                                  "accept_margin": None}},
    # the whole private budget in round 1, then labels only (at the private learning rate);
    # an expert refuses labels where its data lies and rehearses its own answer there
    "semantic-proximity-rehearse": {
        "training": {"first_phase_share": 1.0, "pseudo_label_learning_rate": 2e-3},
        "consensus": {"confidence": "proximity", "accept_margin": None, "own_answer": True}},
    # the same without rehearsal: refused labels are dropped
    "semantic-proximity-labels_after": {
        "training": {"first_phase_share": 1.0, "pseudo_label_learning_rate": 2e-3},
        "consensus": {"confidence": "proximity", "accept_margin": None}},
    # ¾ of the budget before round 1, ¼ in the last phase with the last labels, labels only in
    # between; proximity, experts keep their own answers (no rehearsal)
    "semantic-proximity-ends": {
        "training": {"first_phase_share": 0.75, "final_phase_share": 0.25},
        "consensus": {"confidence": "proximity", "accept_margin": None}},
    # proximity routing: the phase-1 adapter (private data only) answers prompts near the
    # client's own data, the label-trained adapter everything else
    "semantic-proximity-routed": {
        "training": {"first_phase_share": 1.0, "pseudo_label_learning_rate": 2e-3},
        "consensus": {"confidence": "proximity", "accept_margin": None, "own_answer": True,
                      "route": "proximity"}},
    # the same with twice the label passes (routing keeps them off the client's own topics)
    "semantic-proximity-routed-passes4": {
        "training": {"first_phase_share": 1.0, "pseudo_label_learning_rate": 2e-3,
                     "pseudo_label_epochs": 4},
        "consensus": {"confidence": "proximity", "accept_margin": None, "own_answer": True,
                      "route": "proximity"}},
    "semantic-proximity-routed-passes8": {
        "training": {"first_phase_share": 1.0, "pseudo_label_learning_rate": 2e-3,
                     "pseudo_label_epochs": 8},
        "consensus": {"confidence": "proximity", "accept_margin": None, "own_answer": True,
                      "route": "proximity"}},
    "semantic-proximity-ends-routed": {
        "training": {"first_phase_share": 0.75, "final_phase_share": 0.25},
        "consensus": {"confidence": "proximity", "accept_margin": None,
                      "route": "proximity"}},
    "semantic-power1": {"consensus": {"confidence_power": 1.0}},
    "semantic-accept_all": {"consensus": {"accept_labels": False}},
    "semantic-accept_share": {"consensus": {"accept_share": 0.5}},
    "semantic-margin0": {"consensus": {"accept_margin": 0.0}},
    "semantic-min_weight": {"consensus": {"min_weight": 0.1}},
    "semantic-first90": {"training": {"first_phase_share": 0.9}},
    "semantic-first90-keep_own": {"training": {"first_phase_share": 0.9},
                                  "consensus": {"accept_margin": None}},
    "semantic-label_passes1": {"training": {"pseudo_label_epochs": 1}},
    "semantic-label_passes4": {"training": {"pseudo_label_epochs": 4}},
    "semantic-medoid": {"consensus": {"operator": "medoid"},
                        "aggregation": {"backend": "plaintext"}},
    "semantic-k4": {"generation": {"candidates": 4}},
    "semantic-sampled": {"generation": {"greedy_first": False}},
    "semantic-local_selection": {"consensus": {"selection": "local"}},
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def cell_config(files: TaskFiles, federation: str, privacy: str, variant: str, size: Size,
                seed: int = 0) -> RunConfig:
    """The run configuration of one method in one cell. Every method of a cell shares the
    clients, data, models, rounds and private-data budget; the baselines train R phases of
    private data only (schedule ``sequential``, with no labels), semantic variants add their
    changes (:data:`VARIANTS`) to privsem's default protocol."""
    if variant.startswith("semantic") and variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not known; use one of {', '.join(VARIANTS)}")
    if privacy not in PRIVACY:
        raise ValueError(f"privacy {privacy!r} is not known; use one of {', '.join(PRIVACY)}")
    models = federation_models(federation, size, list(files.train))
    dp = privacy == "dp"
    data: dict[str, Any] = {
        "name": f"bench-{files.task}-{federation}-{privacy}-{variant}",
        "seed": seed, "rounds": size.rounds, "prompts": str(files.prompts),
        "clients": [{"id": c, "model": {"name": m, "max_length": size.max_length},
                     "train": str(files.train[c]), "eval": str(files.eval[c])}
                    for c, m in models.items()],
        "training": {"batch_size": 8, "epochs_per_round": size.epochs_per_round,
                     "learning_rate": 2e-3,
                     "schedule": "mixed" if variant.startswith("semantic") else "sequential"},
        "privacy": {"randomness": "seeded",
                    "record": {"enabled": dp, "epsilon": EPSILON, "delta": DELTA},
                    "client": {"enabled": False, "epsilon": EPSILON, "delta": DELTA}},
        "generation": {"candidates": size.candidates,
                       "max_new_tokens": size.gen_tokens[files.task],
                       "temperature": 0.8, "top_p": 0.95, "batch_size": 24},
        "evaluation": {"max_new_tokens": size.eval_tokens[files.task], "before_training": False},
        "consensus": {"selection": "shared", "server_trusted_with_texts": not dp},
        "aggregation": {"backend": "masked"},
    }
    return build(RunConfig, _merge(data, VARIANTS.get(variant, {})))


# ---------------------------------------------------------------------------------------------
# Summaries


def _mean(xs: Sequence[float | None]) -> float | None:
    v = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(v) / len(v) if v else None


PRIMARY = {"knowledge": "key_recall", "instructions": "rouge_l", "overlap": "key_recall"}
# Version of a stored result's content: 2 adds per-question scores (and so intervals); a stored
# result of another format is run again, never silently kept without them.
RESULTS_FORMAT = 2
MAX_RESULT_BYTES = 256 * 1024 * 1024  # a stored result (per-question rows): far below this
BOOTSTRAP = 2000


def interval(rows_by_client: dict[str, list[dict[str, Any]]], scope: str, metric: str
             ) -> tuple[float, float] | None:
    """95 % percentile-bootstrap interval of the client mean of ``metric`` over the questions
    of ``scope`` (the tables' statistic: each client's mean, averaged over clients), resampling
    questions within each client (seeded: the same rows give the same interval). None where
    there are no such questions."""
    import numpy as np

    groups = [np.asarray([r[metric] for r in rows if r["scope"] == scope
                          and r.get(metric) is not None], dtype=np.float64)
              for rows in rows_by_client.values()]
    groups = [g for g in groups if g.size]
    if not groups:
        return None
    rng = np.random.default_rng(0)
    means = np.zeros(BOOTSTRAP)
    for g in groups:
        idx = rng.integers(0, g.size, size=(BOOTSTRAP, g.size))
        means += g[idx].mean(axis=1)
    means /= len(groups)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def summarise(task: str, run: dict[str, Any]) -> dict[str, Any]:
    """Client means of a method's scores, traffic and time per round."""
    scores = run["scores"]
    questions = run.get("questions") or {}
    out: dict[str, Any] = {}
    for scope in ("own", "other"):
        for m in (PRIMARY[task], "similarity", "rouge_l", "nll"):
            out[f"{scope}_{m}"] = _mean([s.get(f"{scope}_{m}") for s in scores.values()])
            out[f"{scope}_{m}_ci"] = interval(questions, scope, m) if questions else None
        out[f"{scope}_perplexity"] = perplexity(out[f"{scope}_nll"])
    rounds = run["rounds"]
    up = [t["up"] for r in rounds for t in r["traffic"].values()]
    down = [t["down"] for r in rounds for t in r["traffic"].values()]
    out["bytes_up_per_client_round"] = _mean(up) if rounds else 0.0
    out["bytes_down_per_client_round"] = _mean(down) if rounds else 0.0
    out["wall_s_per_round"] = _mean([r["wall_s"] for r in rounds])
    out["cpu_s_per_round"] = _mean([r["cpu_s"] for r in rounds])
    eps = run["epsilon"]
    for unit in ("record", "client"):
        vals = [e.get(unit) for e in eps.values()]
        out[f"epsilon_{unit}"] = None if any(v is None for v in vals) else max(
            v for v in vals if v is not None)
    return out


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if math.isinf(v):
            return "∞"
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _with_ci(summary: dict[str, Any], key: str) -> str:
    """A mean with its 95 % interval, where the result has per-question scores."""
    ci = summary.get(f"{key}_ci")
    return _fmt(summary[key]) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _bytes(v: float | None) -> str:
    if v is None:
        return "—"
    if v == 0:
        return "0"
    return f"{v / 1024:,.1f} KiB" if v < 1024 ** 2 else f"{v / 1024 ** 2:,.2f} MiB"


def format_cells(result: dict[str, Any]) -> str:
    """The comparison tables, one per task."""
    lines: list[str] = []
    for task in result["settings"]["tasks"]:
        metric = {"key_recall": "exact match", "rouge_l": "ROUGE-L"}[PRIMARY[task]]
        lines += [f"### Task: {task}", "",
                  (f"| federation | privacy | method | own {metric} | other {metric} | "
                  "own sim. | other sim. | own ppl | other ppl | up / client / round | "
                  "down / client / round | wall s / round | CPU s / round | ε record | "
                  "ε client |"),
                  "|" + "---|" * 15]
        for cell in result["cells"]:
            if cell["task"] != task:
                continue
            for name, run in cell["methods"].items():
                s = run["summary"]
                p = PRIMARY[task]
                lines.append(
                    f"| {cell['federation']} | {cell['privacy']} | {name} | "
                    f"{_with_ci(s, f'own_{p}')} | {_with_ci(s, f'other_{p}')} | "
                    f"{_fmt(s['own_similarity'], 3)} | {_fmt(s['other_similarity'], 3)} | "
                    f"{_fmt(s['own_perplexity'], 1)} | {_fmt(s['other_perplexity'], 1)} | "
                    f"{_bytes(s['bytes_up_per_client_round'])} | "
                    f"{_bytes(s['bytes_down_per_client_round'])} | "
                    f"{_fmt(s['wall_s_per_round'], 1)} | {_fmt(s['cpu_s_per_round'], 1)} | "
                    f"{_fmt(s['epsilon_record'])} | {_fmt(s['epsilon_client'])} |")
        lines.append("")
    return "\n".join(lines)


def per_client_table(cell: dict[str, Any], task: str) -> str:
    p = PRIMARY[task]
    rows = [f"| method | client | model | own {p} | other {p} | own sim. | other sim. |",
            "|---|---|---|---|---|---|---|"]
    for name, run in cell["methods"].items():
        for cid, s in run["scores"].items():
            rows.append(f"| {name} | {cid} | {cell['models'][cid]} | {_fmt(s.get(f'own_{p}'))} "
                        f"| {_fmt(s.get(f'other_{p}'))} | {_fmt(s.get('own_similarity'), 3)} | "
                        f"{_fmt(s.get('other_similarity'), 3)} |")
    return "\n".join(rows)


def phase_table(result: dict[str, Any]) -> str:
    """Mean seconds per phase of every semantic run, per client model (the in-process runtime
    runs the clients one after another, so a round's wall time is about their sum plus the
    server's)."""
    rows = ["| task | federation | privacy | method | model | " + " | ".join(PHASES) +
            " | round wall s |", "|" + "---|" * (6 + len(PHASES))]
    for cell in result["cells"]:
        for name, run in cell["methods"].items():
            if run["method"] != "semantic" or not run["rounds"]:
                continue
            for model in sorted(set(cell["models"].values())):
                cids = [c for c, m in cell["models"].items() if m == model]
                vals = [_mean([r["phase_s"][c].get(p, 0.0) for r in run["rounds"] for c in cids])
                        for p in PHASES]
                rows.append(f"| {cell['task']} | {cell['federation']} | {cell['privacy']} | "
                            f"{name} | {model} | " + " | ".join(_fmt(v, 1) for v in vals) +
                            f" | {_fmt(run['summary']['wall_s_per_round'], 1)} |")
    return "\n".join(rows)


# the client's timed phases (privsem.protocol.client), in round order; ``train_final`` is the
# mixed schedule's phase after the last round's labels
PHASES = ("train_private", "train_pseudo", "generate", "confidence", "embed_release",
          "aggregate", "train_final")


# ---------------------------------------------------------------------------------------------
# Plots


def plot_cells(result: dict[str, Any], folder: Path) -> list[Path]:
    """Per task: the primary metric (own and other) of every method in every cell, and the
    bytes per client per round (log scale)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for task in result["settings"]["tasks"]:
        cells = [c for c in result["cells"] if c["task"] == task]
        if not cells:
            continue
        p = PRIMARY[task]
        fig = Figure(figsize=(4.2 * len(cells), 3.6))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(cells), squeeze=False)[0]
        for ax, cell in zip(axes, cells, strict=True):
            names = list(cell["methods"])
            own = [cell["methods"][n]["summary"][f"own_{p}"] or 0.0 for n in names]
            other = [cell["methods"][n]["summary"][f"other_{p}"] or 0.0 for n in names]
            x = range(len(names))
            ax.bar([i - 0.2 for i in x], own, width=0.4, label="own topics / facts")
            ax.bar([i + 0.2 for i in x], other, width=0.4, label="others' (never seen)")
            ax.set_xticks(list(x))
            ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
            ax.set_title(f"{cell['federation']}, {cell['privacy']}", fontsize=9)
            ax.set_ylim(0, 1)
        axes[0].set_ylabel({"key_recall": "exact match", "rouge_l": "ROUGE-L"}[p])
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{task}: utility per method (client mean)", fontsize=10)
        path = folder / f"{task}-utility.png"
        fig.savefig(path, bbox_inches="tight", metadata={"Software": None})
        written.append(path)
    # traffic: every method that sends anything, from the first cell that has it
    seen: dict[str, float] = {}
    for cell in result["cells"]:
        for n, run in cell["methods"].items():
            b = run["summary"]["bytes_up_per_client_round"]
            if b and n not in seen:
                seen[n] = b
    if seen:
        fig = Figure(figsize=(5, 3))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        ax.bar(list(seen), list(seen.values()))
        ax.set_yscale("log")
        ax.set_ylabel("bytes up per client per round")
        ax.set_title("measured upload per client per round", fontsize=10)
        path = folder / "traffic.png"
        fig.savefig(path, bbox_inches="tight", metadata={"Software": None})
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------
# The whole benchmark


def machine() -> dict[str, Any]:
    """The micro-benchmarks' machine description, plus the memory size."""
    from privsem.bench.micro import machine as describe

    out = describe()
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                out["memory_gib"] = round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        out["memory_gib"] = None
    return out


def _sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# Configuration a baseline (zero-shot, local-only, FedAvg, centralised) never reads: semantic
# consensus' own settings. Left out of a baseline's inputs, so that tuning semantic consensus
# does not throw away a grid's baselines (hours of runs); tests/test_bench_baselines.py holds
# that the baselines' results do not change with them.
SEMANTIC_ONLY = {"consensus": None, "generation": None,
                 "training": ("pseudo_label_ratio", "pseudo_label_epochs", "first_phase_share",
                              "final_phase_share", "pseudo_label_learning_rate",
                              "pseudo_label_batch_size")}


def method_inputs(cfg: RunConfig, method: str) -> dict[str, Any]:
    """What a method's result is computed from: its configuration (for a baseline, without
    :data:`SEMANTIC_ONLY`), with every data file it reads replaced by the SHA-256 of the file's
    content (so the same data at another path matches and changed data does not)."""
    data = to_dict(cfg)
    if not method.startswith("semantic"):
        for section, keys in SEMANTIC_ONLY.items():
            if keys is None:
                data.pop(section, None)
            else:
                for k in keys:
                    data.get(section, {}).pop(k, None)
    if cfg.prompts is not None:
        data["prompts"] = _sha256_file(cfg.prompts)
    for c, spec in zip(data["clients"], cfg.clients, strict=True):
        c["train"] = _sha256_file(spec.train)
        if spec.eval is not None:
            c["eval"] = _sha256_file(spec.eval)
    canonical = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return {"method": method, "config_sha256": hashlib.sha256(canonical.encode()).hexdigest(),
            "format": RESULTS_FORMAT}


def _commit() -> str | None:
    """The git commit of the code that ran, where privsem runs from a checkout."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0 or not done.stdout.strip():
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=Path(__file__).parent, capture_output=True, text=True,
                           timeout=10, check=False)
    return done.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _load() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _aside(path: Path) -> Path:
    """Moves ``path`` to the first free ``NAME.aside-K`` beside it; returns where it went."""
    k = 1
    while (dest := path.with_name(f"{path.name}.aside-{k}")).exists():
        k += 1
    path.rename(dest)
    return dest


def _write_json(path: Path, data: Any) -> None:
    """Atomically and durably (fsync), as the protocol's state files are written."""
    from privsem.protocol.state import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=1, default=str) + "\n")


def _kept(path: Path, inputs: dict[str, Any], progress: Callable[[str], None]
          ) -> dict[str, Any] | None:
    """The stored result at ``path`` if its inputs are ``inputs``; a stored result that is
    unreadable or was computed from other inputs is moved aside."""
    if not path.exists():
        return None
    try:
        stored = bounded_json.read_file(path, max_bytes=MAX_RESULT_BYTES, max_depth=32,
                                        allow_nonfinite=True)
        same = stored["inputs"] == inputs
        entry = stored["entry"] if same else None
    except (ValueError, KeyError, TypeError) as exc:
        progress(f"bench: {path.name} is not a readable result ({exc}); moved to "
                 f"{_aside(path).name}, running it again")
        return None
    if entry is None:
        progress(f"bench: {path.name} was computed from other inputs; moved to "
                 f"{_aside(path).name}, running it again")
    return entry


def _run_one(variant: str, cfg: RunConfig, folder: Path, commit: str | None,
             progress: Callable[[str], None]) -> dict[str, Any]:
    """Runs one method into ``folder`` (a folder an interrupted invocation left there is moved
    aside first) and returns its entry, with when and where it ran."""
    if folder.exists():
        progress(f"bench: {folder} was left unfinished; moved to {_aside(folder).name}")
    ran = {"started_utc": _now(), "load_average_at_start": _load(), "commit": commit}
    method = "semantic" if variant.startswith("semantic") else variant
    t0 = time.perf_counter()
    r: MethodRun = run_method(method, cfg, folder, lambda s: None)
    seconds = time.perf_counter() - t0
    return {"method": method, "note": r.note, "scores": r.scores, "questions": r.questions,
            "rounds": r.rounds,
            "epsilon": r.epsilon, "seconds": seconds, "folder": str(folder),
            "ran": {**ran, "finished_utc": _now(), "load_average_at_end": _load()}}


def run_cells(out: Path, size: Size, *, tasks: Sequence[str] = TASKS,
              federations: Sequence[str] = FEDERATIONS, privacy: Sequence[str] = PRIVACY,
              resume: bool = False, progress: Callable[[str], None] = print,
              ablations: Sequence[str] = (), only: Sequence[str] = ()
              ) -> list[dict[str, Any]]:
    """Every method of every cell, then the ``ablations`` (semantic variants of
    :data:`VARIANTS`); ``only``: just these methods. Each result is stored in ``out/results/``
    as it finishes; with ``resume`` a stored result whose inputs match is kept instead of run
    again (its entry says ``"kept": true``)."""
    for v in [*ablations, *only]:
        if v not in VARIANTS and v not in METHODS:
            raise ValueError(f"method {v!r} is not known; use one of "
                             f"{', '.join([*METHODS, *VARIANTS])}")
    cells = []
    commit = _commit()
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"task {task!r} is not known; use one of {', '.join(TASKS)}")
        files = write_task(task, out / "data" / task, TASK_CLIENTS[task], quick=size.quick,
                           sizes=(size.data or {}).get(task))
        for fed in federations:
            zero: dict[str, Any] | None = None
            for priv in privacy:
                cell: dict[str, Any] = {
                    "task": task, "federation": fed, "privacy": priv,
                    "models": federation_models(fed, size, TASK_CLIENTS[task]),
                    "description": files.description,
                    "methods": {}}
                for variant in [*methods_for(fed, priv), *ablations]:
                    if only and variant not in only:
                        continue
                    if variant == "zero_shot" and zero is not None:
                        cell["methods"][variant] = zero
                        continue
                    # privacy plays no part in the zero-shot floor: one run serves both cells
                    key = ("zero_shot" if variant == "zero_shot"
                           else f"{priv}-{variant.replace('+', '-')}")
                    cfg = cell_config(files, fed, "none" if variant == "zero_shot" else priv,
                                      variant, size)
                    inputs = method_inputs(cfg, variant)
                    stored = out / "results" / f"{task}-{fed}-{key}.json"
                    entry = _kept(stored, inputs, progress) if resume else None
                    if entry is not None:
                        progress(f"bench: {task} / {fed} / {priv} / {variant}: kept (finished "
                                 f"{entry['ran']['finished_utc']})")
                        entry["kept"] = True
                    else:
                        progress(f"bench: {task} / {fed} / {priv} / {variant}")
                        entry = _run_one(variant, cfg,
                                         out / "runs" / task / fed / key.replace("-", "/", 1),
                                         commit, progress)
                        _write_json(stored, {"inputs": inputs, "entry": entry})
                        entry["kept"] = False
                    entry["summary"] = summarise(task, entry)
                    cell["methods"][variant] = entry
                    if variant == "zero_shot":
                        zero = entry
                cells.append(cell)
    return cells


def run_bench(out: Path, *, quick: bool = False, size_name: str | None = None,
              tasks: Sequence[str] | None = None, federations: Sequence[str] | None = None,
              privacy: Sequence[str] | None = None, micro: bool = True, resume: bool = False,
              ablations: Sequence[str] = (), only: Sequence[str] = (),
              progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the benchmark into ``out`` and returns the JSON it wrote. With ``resume``, results
    stored in ``out/results/`` by an earlier invocation are kept where their inputs match."""
    from privsem.bench import comm

    size = SIZES[size_name or ("quick" if quick else "full")]
    tasks = tuple(tasks or size.tasks)
    federations = tuple(federations or size.federations)
    privacy = tuple(privacy or size.privacy)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "machine": machine(), "quick": size.quick, "size": size.name,
        "settings": {"tasks": list(tasks), "federations": list(federations),
                     "privacy": list(privacy), "epsilon": EPSILON, "delta": DELTA,
                     "size": {k: v for k, v in size.__dict__.items()},
                     "methods": METHODS},
        "communication": comm.summary(),
    }
    if micro:
        from privsem.bench import micro as micro_mod

        stored = out / "results" / "micro.json"
        inputs = {"benchmark": "micro", "quick": quick}
        kept = _kept(stored, inputs, progress) if resume else None
        if kept is not None:
            progress(f"bench: micro-benchmarks kept (finished {kept['ran']['finished_utc']})")
            result["micro"], result["micro_seconds"] = kept["micro"], kept["seconds"]
        else:
            progress("bench: micro-benchmarks")
            t0, begun = time.perf_counter(), _now()
            result["micro"] = micro_mod.run_all(quick)
            result["micro_seconds"] = time.perf_counter() - t0
            _write_json(stored, {"inputs": inputs, "entry": {
                "micro": result["micro"], "seconds": result["micro_seconds"],
                "ran": {"started_utc": begun, "finished_utc": _now(), "commit": _commit()}}})
        result["micro_kept"] = kept is not None
    t0 = time.perf_counter()
    result["cells"] = run_cells(out, size, tasks=tasks, federations=federations,
                                privacy=privacy, resume=resume, progress=progress,
                                ablations=ablations, only=only)
    result["cells_seconds"] = time.perf_counter() - t0
    result["seconds"] = time.perf_counter() - started
    result["machine"]["load_average_at_end"] = _load()
    result["provenance"] = provenance(result)
    (out / "bench.json").write_text(json.dumps(result, indent=1, default=str) + "\n",
                                    encoding="utf-8")
    plot_cells(result, out / "plots")
    (out / "bench.md").write_text(format_markdown(result), encoding="utf-8")
    return result


def provenance(result: dict[str, Any]) -> dict[str, Any]:
    """Where the figures of a result come from: how many method runs ran in this invocation and
    how many were kept from earlier ones, when they ran, the code commits and the summed
    seconds of every method run (the time the whole grid took, however it was split)."""
    entries = {id(e): e for c in result["cells"] for e in c["methods"].values()}.values()
    ran = [e["ran"] for e in entries]
    return {"method_runs": len(ran), "kept": sum(bool(e.get("kept")) for e in entries),
            "first_started_utc": min((r["started_utc"] for r in ran), default=None),
            "last_finished_utc": max((r["finished_utc"] for r in ran), default=None),
            "commits": sorted({str(r.get("commit")) for r in ran}),
            "method_seconds": sum(e["seconds"] for e in entries)}


def _provenance_line(result: dict[str, Any]) -> str:
    p = result.get("provenance")
    if not p:
        return ""
    kept = (f"{p['kept']} of them kept from earlier invocations (`--resume`), "
            f"{p['method_runs'] - p['kept']} run in this one"
            if p["kept"] else "all run in this invocation")
    return (f"{p['method_runs']} method runs, {kept}; started {p['first_started_utc']}, last "
            f"finished {p['last_finished_utc']}; {p['method_seconds'] / 60:.1f} min of method "
            f"runs in all; code {', '.join(_short(c) for c in p['commits'])}.")


def _short(commit: str) -> str:
    return commit[:10] + ("-dirty" if commit.endswith("-dirty") else "")


def format_markdown(result: dict[str, Any]) -> str:
    from privsem.bench import comm

    m = result["machine"]
    name = result.get("size", "quick" if result["quick"] else "full")
    parts = [f"# privsem bench{'' if name == 'full' else ' --' + name}", "",
             (f"Machine: {m['cpu_model']}, {m['logical_cores']} cores, "
              f"{m.get('memory_gib')} GiB, torch {m['torch']} ({m['torch_threads']} threads), "
              f"Python {m['python']}; {m['date_utc']}; load average at start "
              f"{m['load_average_at_start']}, at end {m.get('load_average_at_end')}. "
              f"Total {result['seconds'] / 60:.1f} min."), "", _provenance_line(result), "",
             "## Utility, traffic and time at matched privacy", "",
             format_cells(result)]
    parts += ["## Round time by phase (semantic consensus, seconds per client per round)", "",
              phase_table(result), ""]
    parts += ["## Per client", ""]
    for cell in result["cells"]:
        parts += [f"### {cell['task']}, {cell['federation']}, {cell['privacy']}", "",
                  per_client_table(cell, cell["task"]), ""]
    if "micro" in result:
        from privsem.bench import micro as micro_mod

        parts += ["## Micro-benchmarks", "", micro_mod.format_markdown(result["micro"]), ""]
    parts += ["## Communication at scale (analytic)", "",
              comm.format_summary(result["communication"]), ""]
    return "\n".join(parts)
