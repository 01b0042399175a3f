"""The canary audit of a finished run (TESTING.md T34, T43): ``privsem audit canaries RUN_DIR``.

The run planted canaries in one client's private data (``audit.canaries``;
:mod:`privsem.audits.planting`), each included with probability ½, the inclusion secret kept in
``RUN_DIR/audit/canaries.json``. This audit rebuilds that client's model after a round (its base
model plus the LoRA adapter it checkpointed, :func:`~privsem.audits.folder.load_client_model`;
where the run routes, once with each of the two adapters the client answers with,
:func:`~privsem.audits.folder.audited_adapters`, and the stronger is reported) and measures:

- **Membership inference on the canaries**: loss, zlib and reference scores
  (:mod:`privsem.audits.mia`; the reference is the same base model with the adapter disabled),
  ROC, AUC and TPR at FPR 1 % and 0.1 %, members against non-members
  (:mod:`privsem.audits.metrics`).
- **The one-run empirical ε lower bound** (Steinke, Nasr and Jagielski 2023;
  :mod:`privsem.audits.one_run`), at the record-level δ of the run, from each attack's scores
  over the default (k₊, k₋) grid. The three attacks (on each audited adapter) are fixed in
  advance and each is tested at confidence 1 − β/(3 × adapters), so the largest of their bounds
  holds with confidence 1 − β (union bound).
  Canaries are single training records and everything the client's model became is
  post-processing of its DP-SGD releases (pseudo-labels, the consensus and the other clients
  included), so the bound is compared with the **record-level ε the ledger accounts** for that
  client up to the round. A bound above it refutes the accounting: a bug signal (T43), reported
  loudly and with exit status 3.
- **Exposure** (Carlini et al. 2019) of every canary, estimated by sampling ``n`` secrets from
  the secret space, next to the chance level ``log2 e`` for a canary the model never saw (T34:
  ≈ chance under DP).
- **Verbatim leaks** (T34): no canary (nor its secret) may appear in any client's pseudo-labels
  (``state/<client>/labels-<r>.json``), and no canary text in any other text file the run
  persisted (metrics, ledger, configuration, report; the ``audit/`` folder is the auditor's and
  is skipped). The client's own candidate answers (``state/<client>/candidates-<r>.json``,
  client-local) are checked too and reported, as a sign of memorisation rather than of a leak.
  A leak in labels or persisted files also exits with status 3.

Outputs: ``RUN_DIR/audit/canary_audit.json``, ``canary_roc.png`` (log-log ROC),
``canary_scores.png`` (scores and exposure, members against non-members), and the audit section
of report.md/report.html (regenerated). The report shows numbers only, never a canary.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privsem.audits.canaries import (
    VerbatimReport,
    chance_exposure,
    find_verbatim,
    secret_sharer_exposure,
)
from privsem.audits.folder import (
    RunFolder,
    audited_adapters,
    elapsed,
    json_number,
    load_client_model,
    now,
    open_run,
    refresh_report,
    use_adapter,
    write_result,
)
from privsem.audits.metrics import plot_roc_loglog, roc_curve, summarize_attack
from privsem.audits.one_run import OneRunAudit, one_run_audit_grid
from privsem.audits.planting import AUDIT_DIR, PlantedCanaries, load_planted
from privsem.errors import PrivsemError
from privsem.rng import SeededRandomness

RESULT = "canary_audit.json"
ROC_PLOT = "canary_roc.png"
SCORES_PLOT = "canary_scores.png"
EXIT_VIOLATION = 3  # the audit refuted the accounting or found a leak
TEXT_SUFFIXES = (".json", ".jsonl", ".yaml", ".yml", ".md", ".html", ".txt", ".toml")


@dataclass(frozen=True)
class CanaryAudit:
    """The result; ``violations`` lists what makes the audit fail (empty when it passes)."""

    result: dict[str, Any]
    violations: tuple[str, ...]
    path: Path


def score_canaries(model: Any, tokenizer: Any, prompt_format: str, planted: PlantedCanaries, *,
                   max_length: int, batch_size: int = 32
                   ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(scores by attack, target losses, reference losses) of every canary, members and
    non-members alike (higher score = more likely a member)."""
    from privsem.audits.mia import example_losses, loss_scores, reference_scores, zlib_scores

    examples = [c.example for c in planted.canaries]
    target = example_losses(model, tokenizer, examples, prompt_format=prompt_format,
                            max_length=max_length, batch_size=batch_size)
    with model.disable_adapter():  # the base model: the client's starting point
        ref = example_losses(model, tokenizer, examples, prompt_format=prompt_format,
                             max_length=max_length, batch_size=batch_size)
    return ({"loss": loss_scores(target), "zlib": zlib_scores(target, examples),
             "reference": reference_scores(target, ref)}, target, ref)


def one_run_bounds(scores: dict[str, np.ndarray], included: np.ndarray, *, delta: float,
                   confidence: float) -> tuple[str, OneRunAudit, dict[str, OneRunAudit]]:
    """Each attack's one-run bound at confidence 1 − β/|attacks| over the default grid; the
    largest (attack, audit) holds with confidence ``confidence`` (union bound)."""
    beta = 1.0 - confidence
    each = 1.0 - beta / len(scores)
    audits = {name: one_run_audit_grid(s, included, delta=delta, confidence=each)
              for name, s in scores.items()}
    best = max(audits, key=lambda k: audits[k].epsilon_lower_bound)  # ties: first attack
    return best, audits[best], audits


@dataclass(frozen=True)
class _AdapterScores:
    """The canary attacks on one adapter: scores, losses, summaries and one-run bounds."""

    scores: dict[str, np.ndarray]
    target: np.ndarray
    ref: np.ndarray
    attacks: dict[str, Any]
    best: str
    bound: OneRunAudit
    per_attack: dict[str, OneRunAudit]


def _score_adapter(model: Any, tok: Any, fmt: str, planted: PlantedCanaries, *,
                   max_length: int, delta: float, confidence: float) -> _AdapterScores:
    scores, target, ref = score_canaries(model, tok, fmt, planted, max_length=max_length)
    inc = planted.included
    best, bound, per_attack = one_run_bounds(scores, inc, delta=delta, confidence=confidence)
    return _AdapterScores(scores, target, ref,
                          {k: summarize_attack(k, s[inc], s[~inc]) for k, s in scores.items()},
                          best, bound, per_attack)


def _label_texts(run: RunFolder) -> tuple[list[str], list[str]]:
    """Every pseudo-label text of every client and round, with its file (relative path)."""
    from privsem.protocol.state import read_json

    texts, where = [], []
    for c in run.cfg.clients:
        for p in sorted(run.state(c.id).glob("labels-*.json")):
            for item in read_json(p):
                texts.append(str(item.get("response", "")))
                where.append(str(p.relative_to(run.path)))
    return texts, where


def _candidate_texts(run: RunFolder, client: str) -> list[str]:
    from privsem.protocol.state import read_json

    out: list[str] = []
    for p in sorted(run.state(client).glob("candidates-*.json")):
        out.extend(str(t) for row in read_json(p) for t in row)
    return out


def _persisted_files(run: RunFolder) -> list[Path]:
    """Text files of the run folder other than the auditor's folder and the label/candidate
    files checked on their own."""
    out = []
    for p in sorted(run.path.rglob("*")):
        rel = p.relative_to(run.path)
        if not p.is_file() or p.suffix not in TEXT_SUFFIXES or rel.parts[0] == AUDIT_DIR:
            continue
        if p.name.startswith(("labels-", "candidates-")):
            continue
        out.append(p)
    return out


def verbatim_checks(run: RunFolder, planted: PlantedCanaries) -> dict[str, Any]:
    """T34: canaries (and their secrets) in pseudo-labels; canary texts in other persisted
    files; canaries in the client's own candidate answers (client-local; memorisation)."""
    canaries = list(planted.canaries)
    texts, where = _label_texts(run)
    labels = find_verbatim(canaries, texts)
    files = _persisted_files(run)
    contents = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    # Secrets alone are not looked for here: digit runs in numbers and hashes match them by
    # chance (6 digits recur in ~10^-6 of positions, and these files hold 10^5 of them).
    persisted = find_verbatim(canaries, contents, check_secret=False)
    candidates = find_verbatim(canaries, _candidate_texts(run, planted.client))

    def hits(rep: VerbatimReport, names: list[str]) -> list[dict[str, Any]]:
        return [{"canary_index": h.canary_index, "member": bool(planted.included[h.canary_index]),
                 "matched": h.matched, "where": names[h.text_index]} for h in rep.hits]

    return {
        "pseudo_labels": {"texts_checked": labels.texts_checked, "clean": labels.clean,
                          "files": sorted(set(where)), "hits": hits(labels, where)},
        "persisted_files": {"files_checked": [str(p.relative_to(run.path)) for p in files],
                            "clean": persisted.clean,
                            "hits": hits(persisted, [str(p.relative_to(run.path))
                                                     for p in files])},
        "own_candidates": {"texts_checked": candidates.texts_checked,
                           "clean": candidates.clean,
                           "hits": hits(candidates, ["candidates"] * candidates.texts_checked),
                           "note": "the client's own generated answers, client-local (never "
                                   "sent under local selection): a hit means the model "
                                   "reproduces a canary, not that it left the client"},
        "canaries_checked": len(canaries)}


def exposures(model: Any, tokenizer: Any, prompt_format: str, planted: PlantedCanaries, *,
              samples: int, max_length: int, seed: int) -> list[dict[str, Any]]:
    """Sampled Secret Sharer exposure of every canary (``samples`` secrets from R each)."""
    from privsem.audits.mia import example_losses

    loss_fn = functools.partial(example_losses, model, tokenizer, prompt_format=prompt_format,
                                max_length=max_length, batch_size=64)
    rng = SeededRandomness(seed, "audit", "exposure")
    out = []
    for c, inc in zip(planted.canaries, planted.included, strict=True):
        e = secret_sharer_exposure(c, planted.fmt, loss_fn, rng, max_enumerate=samples,
                                   n_samples=samples)
        out.append({**e.to_json(), "member": bool(inc)})
    return out


def _plot_scores(path: Path, scores: np.ndarray, included: np.ndarray,
                 exposure: list[dict[str, Any]] | None, chance: float, title: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 3.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if exposure else 1, squeeze=False)[0]
    bins = np.histogram_bin_edges(scores, bins=20)
    axes[0].hist(scores[included], bins=bins, alpha=0.6, label="members (trained on)")
    axes[0].hist(scores[~included], bins=bins, alpha=0.6, label="non-members")
    axes[0].set_xlabel("reference score: loss(base) − loss(client model)")
    axes[0].set_ylabel("canaries")
    axes[0].set_title(title)
    axes[0].legend(fontsize="small")
    if exposure:
        ex = np.array([e["exposure"] for e in exposure])
        mem = np.array([e["member"] for e in exposure], dtype=bool)
        ebins = np.histogram_bin_edges(ex, bins=20)
        axes[1].hist(ex[mem], bins=ebins, alpha=0.6, label="members")
        axes[1].hist(ex[~mem], bins=ebins, alpha=0.6, label="non-members")
        axes[1].axvline(chance, color="grey", linestyle="--", label=f"chance {chance:.2f}")
        axes[1].set_xlabel("exposure (bits, sampled)")
        axes[1].set_title("Secret Sharer exposure")
        axes[1].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    return path


def run_canary_audit(run_dir: str | Path, *, round: int | None = None,
                     exposure_samples: int = 100, confidence: float = 0.95, seed: int = 0,
                     report: bool = True) -> CanaryAudit:
    """Runs the audit and writes its files; see the module docstring."""
    t0 = now()
    run = open_run(run_dir)
    planted = load_planted(run.path)
    rnd = run.round(round)
    ccfg = run.client(planted.client)
    if isinstance(exposure_samples, bool) or exposure_samples < 0:
        raise ValueError(f"exposure_samples: {exposure_samples!r} is not valid; use an integer "
                         ">= 0 (0 skips exposure)")
    max_length = ccfg.model.max_length
    inc = planted.included
    if inc.all() or not inc.any():
        raise PrivsemError(f"{run.path}: all {inc.size} canaries are on one side of the split; "
                           "the audit needs members and non-members (plant more canaries)")
    rd = run.cfg.privacy.record
    # every adapter an attacker can reach (two where the run routes); each adapter's bound at
    # confidence 1 − β/|adapters|, so the largest over adapters and attacks holds at
    # ``confidence`` (union bound), and the stronger adapter is the headline
    tags = audited_adapters(run, rnd)
    model, tok, fmt = load_client_model(run, planted.client, rnd, adapter=tags[0])
    scored: dict[str, _AdapterScores] = {}
    for tag in tags:
        if tag != tags[0]:
            use_adapter(run, planted.client, model, tag)
        scored[tag] = _score_adapter(model, tok, fmt, planted, max_length=max_length,
                                     delta=rd.delta,
                                     confidence=1.0 - (1.0 - confidence) / len(tags))
    adapter = max(tags, key=lambda t: scored[t].bound.epsilon_lower_bound)  # ties: first
    if adapter != tags[-1]:
        use_adapter(run, planted.client, model, adapter)  # exposure samples from it
    s = scored[adapter]
    scores, target, ref, best, bound, per_attack, attacks = (
        s.scores, s.target, s.ref, s.best, s.bound, s.per_attack, s.attacks)
    accounted = run.accounted_epsilon(planted.client, "record", rnd)
    contradiction = bound.contradicts(accounted)
    exp = (exposures(model, tok, fmt, planted, samples=exposure_samples,
                     max_length=max_length, seed=seed) if exposure_samples else None)
    chance = chance_exposure(planted.fmt.space_size)
    verbatim = verbatim_checks(run, planted)

    violations = []
    if contradiction:
        violations.append(
            f"T43: the empirical lower bound ε ≥ {bound.epsilon_lower_bound:.3f} "
            f"(confidence {confidence:g}) exceeds the record-level ε = {accounted:.3f} the "
            f"ledger accounts for client {planted.client} after round {rnd}: the accounting or "
            "the DP-SGD implementation is wrong (a bug signal)")
    for part in ("pseudo_labels", "persisted_files"):
        if not verbatim[part]["clean"]:
            n = len(verbatim[part]["hits"])
            violations.append(f"T34: {n} verbatim canary hit(s) in {part.replace('_', ' ')} "
                              f"({sorted({h['where'] for h in verbatim[part]['hits']})[:3]})")

    def mean(xs: list[float]) -> float | None:
        return float(np.mean(xs)) if xs else None

    result: dict[str, Any] = {
        "audit": "canaries", "run": run.cfg.name, "client": planted.client, "round": rnd,
        "adapter": adapter,
        "adapters": {t: {"best_attack": v.best,
                         "epsilon_lower_bound": v.bound.epsilon_lower_bound,
                         "auc": {k: a.auc for k, a in v.attacks.items()}}
                     for t, v in scored.items()},
        "model": ccfg.model.name, "canaries": len(planted.canaries),
        "members": int(inc.sum()), "space_size": planted.fmt.space_size,
        "format": {"template": planted.fmt.template.replace("{secret}", "<secret>"),
                   "length": planted.fmt.length, "alphabet_size": len(planted.fmt.alphabet)},
        "record_dp_enabled": rd.enabled,
        "attacks": {k: a.to_json() for k, a in attacks.items()},
        "roc": {k: roc_curve(s[inc], s[~inc]).to_json() for k, s in scores.items()},
        "one_run": {"confidence": confidence, "attacks": list(scores),
                    "per_attack_confidence": 1.0 - (1.0 - confidence) / (len(scores)
                                                                          * len(tags)),
                    "best_attack": best, "epsilon_lower_bound": bound.epsilon_lower_bound,
                    "best": bound.to_json(),
                    "per_attack": {k: a.to_json() for k, a in per_attack.items()}},
        "accounted": {"unit": "record", "epsilon": json_number(accounted), "delta": rd.delta,
                      "accountant": run.cfg.privacy.accountant,
                      "target": rd.epsilon if rd.enabled else None},
        "contradiction": contradiction,
        "exposure": None if exp is None else {
            "samples": exposure_samples, "cap": math.log2(exposure_samples + 1),
            "chance": chance,
            "mean_members": mean([e["exposure"] for e in exp if e["member"]]),
            "mean_nonmembers": mean([e["exposure"] for e in exp if not e["member"]]),
            "censored_members": sum(e["censored"] for e in exp if e["member"]),
            "per_canary": exp},
        "verbatim": verbatim,
        "losses": {"target": target.tolist(), "reference": ref.tolist(),
                   "included": inc.tolist()},
        "violations": violations, "seconds": elapsed(t0)}
    out = run.audit_dir
    plot_roc_loglog({k: roc_curve(s[inc], s[~inc]) for k, s in scores.items()}, out / ROC_PLOT,
                    title=f"Canaries of {planted.client}, round {rnd}: ROC (log-log)")
    _plot_scores(out / SCORES_PLOT, scores["reference"], inc, exp, chance,
                 f"{planted.client}, round {rnd}")
    path = write_result(run, RESULT, result)
    if report:
        refresh_report(run)
    return CanaryAudit(result=result, violations=tuple(violations), path=path)


def summary_lines(result: dict[str, Any]) -> list[str]:
    r = result
    lines = [(f"canary audit of client {r['client']} ({r['model']}) after round {r['round']} of "
             f"run {r['run']}: {r['canaries']} canaries, {r['members']} trained on; adapter "
             f"{r['adapter']}" + (f" (the stronger of {', '.join(r['adapters'])})"
                                  if len(r["adapters"]) > 1 else "")),
             f"  {'attack':<10} {'AUC':>6} {'TPR@1%FPR':>10} {'TPR@0.1%FPR':>12}"]
    for k, a in r["attacks"].items():
        t1, t01 = a["tpr_at_fpr"]
        lines.append(f"  {k:<10} {a['auc']:>6.3f} {t1['tpr']:>10.3f} {t01['tpr']:>12.3f}"
                     + ("" if t01["resolved"] else "  (0.1% not resolved: "
                        f"{a['n_nonmembers']} non-members)"))
    o, acc = r["one_run"], r["accounted"]
    b = o["best"]
    lines.append(f"  one-run empirical ε lower bound: {o['epsilon_lower_bound']:.3f} "
                 f"(confidence {o['confidence']:g}; best attack {o['best_attack']}, "
                 f"{b['v']}/{b['r']} guesses correct, k+={b['k_plus']}, k-={b['k_minus']}, "
                 f"δ={b['delta']:g})")
    eps = acc["epsilon"]
    lines.append(f"  accounted record-level ε (ledger, δ={acc['delta']:g}): "
                 + ("∞ (DP-SGD off: no claim)" if eps == "inf" else f"{eps:.3f}"))
    e = r["exposure"]
    if e is not None:
        mm = "–" if e["mean_members"] is None else f"{e['mean_members']:.2f}"
        mn = "–" if e["mean_nonmembers"] is None else f"{e['mean_nonmembers']:.2f}"
        lines.append(f"  exposure (bits; {e['samples']} sampled secrets each, cap "
                     f"{e['cap']:.2f}): members {mm}, non-members {mn}, chance "
                     f"{e['chance']:.2f}")
    v = r["verbatim"]
    lines.append(f"  verbatim: pseudo-labels {'clean' if v['pseudo_labels']['clean'] else 'LEAK'}"
                 f" ({v['pseudo_labels']['texts_checked']} texts), persisted files "
                 f"{'clean' if v['persisted_files']['clean'] else 'LEAK'} "
                 f"({len(v['persisted_files']['files_checked'])} files), own candidates "
                 f"{'clean' if v['own_candidates']['clean'] else 'canaries reproduced'} "
                 f"({v['own_candidates']['texts_checked']} texts)")
    return lines




def run_from_args(args: argparse.Namespace) -> int:
    audit = run_canary_audit(args.run_dir, round=args.round,
                             exposure_samples=args.exposure_samples,
                             confidence=args.confidence, seed=args.seed,
                             report=not args.no_report)
    print("\n".join(summary_lines(audit.result)))
    print(f"  written: {audit.path} (+ {ROC_PLOT}, {SCORES_PLOT})")
    if audit.violations:
        bar = "!" * 78
        print(f"{bar}\nPRIVACY AUDIT FAILED\n" + "\n".join(f"- {v}" for v in audit.violations)
              + f"\n{bar}", file=sys.stderr)
        return EXIT_VIOLATION
    return 0
