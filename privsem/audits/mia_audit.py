"""Membership inference on one client's own training examples (TESTING.md T43):
``privsem audit mia RUN_DIR --client C``.

Members are the examples of the client's training file (canaries, if any were planted, are left
to the canary audit). Non-members must come from the same distribution and never have been
trained on, or the attack measures the difference between two distributions instead of
membership. Two sources, in this order:

- ``--nonmembers FILE`` (JSONL in any training format), supplied by the auditor;
- for the shipped demo data (``demo:<client>.train.jsonl``), fresh examples of the same
  generator (:func:`privsem.data.demo.build` with more entities): the same templates and name
  syllables, new invented entities, so their facts cannot be in any client's data. The
  generator's names repeat after 16 entities, so 4 fresh entities (16 examples) is all it can
  give.

Not used as non-members: the client's held-out evaluation questions. In the demo they ask about
the very facts the client trains on (a third phrasing with the same answer), so their replies
*are* training replies.

The model is rebuilt after a round (:func:`~privsem.audits.folder.load_client_model`), with
each adapter an attacker can reach (:func:`~privsem.audits.folder.audited_adapters`: two where
the run routes); attacks: loss, zlib and reference (the base model, adapter disabled);
reported for the adapter with the larger best AUC (``adapter``; every adapter's AUCs under
``adapters``): AUC, TPR at FPR 1 % and 0.1 % (with how many non-members can resolve them), and
a log-log ROC plot. Outputs
``RUN_DIR/audit/mia-<client>.json`` and ``mia-<client>-roc.png``, and the report's audit
section.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privsem.audits.folder import (
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
from privsem.data import Example, load_examples
from privsem.errors import DataError

DEMO_ENTITIES = 16  # the demo generator's names repeat after 16 entities


def result_name(client: str) -> str:
    return f"mia-{client}.json"


def roc_name(client: str) -> str:
    return f"mia-{client}-roc.png"


def demo_nonmembers(train: str) -> list[Example] | None:
    """Fresh same-distribution examples for a demo client's training file, or None when
    ``train`` is not one of the shipped demo training files."""
    from privsem.data import demo
    from privsem.data.jsonl import parse_example

    prefix, _, name = train.partition(":")
    if prefix != "demo" or not name.endswith(".train.jsonl"):
        return None
    if name.removesuffix(".train.jsonl") not in demo.CLIENTS:
        return None
    shipped = len(demo.build()[name])
    rows = demo.build(entities_per_client=DEMO_ENTITIES)[name][shipped:]
    where = Path(f"demo generator ({name}, entities {DEMO_ENTITIES})")
    return [parse_example(row, where, i) for i, row in enumerate(rows, start=1)]


@dataclass(frozen=True)
class MiaAudit:
    result: dict[str, Any]
    path: Path


def run_mia_audit(run_dir: str | Path, client: str, *, round: int | None = None,
                  nonmembers: str | None = None, report: bool = True) -> MiaAudit:
    from privsem.audits.mia import example_losses, mia_scores, reference_scores

    t0 = now()
    run = open_run(run_dir)
    ccfg = run.client(client)
    rnd = run.round(round)
    members = load_examples(ccfg.train)
    if nonmembers is not None:
        non = load_examples(nonmembers)
        source = f"file {nonmembers}"
    else:
        fresh = demo_nonmembers(ccfg.train)
        if fresh is None:
            raise DataError(ccfg.train, None, "no non-member examples for this client's data: "
                            "pass --nonmembers FILE with examples of the same distribution the "
                            "client never trained on (not its evaluation file if that repeats "
                            "training facts)")
        non, source = fresh, ("fresh examples of the demo generator (same templates, new "
                              "entities)")
    texts = {(e.messages, e.response) for e in members}
    overlap = sum((e.messages, e.response) in texts for e in non)
    if overlap:
        raise DataError(nonmembers or ccfg.train, None, f"{overlap} non-member example(s) are "
                        "also training examples; non-members must never have been trained on")
    if not non:
        raise DataError(nonmembers or ccfg.train, None, "no non-member examples")
    examples = [*members, *non]
    n = len(members)
    tags = audited_adapters(run, rnd)
    model, tok, fmt = load_client_model(run, client, rnd, adapter=tags[0])
    with model.disable_adapter():  # the base model: the client's starting point
        ref_losses = example_losses(model, tok, examples, prompt_format=fmt,
                                    max_length=ccfg.model.max_length)
    scored = {}  # per adapter: (summaries, curves, target losses)
    for tag in tags:
        if tag != tags[0]:
            use_adapter(run, client, model, tag)
        scores = mia_scores(model, tok, examples, prompt_format=fmt,
                            max_length=ccfg.model.max_length)
        attacks = {**scores.attacks(), "reference": reference_scores(scores.target_loss,
                                                                     ref_losses)}
        scored[tag] = ({k: summarize_attack(k, s[:n], s[n:]) for k, s in attacks.items()},
                       {k: roc_curve(s[:n], s[n:]) for k, s in attacks.items()},
                       scores.target_loss)
    # the stronger adapter (the larger best AUC) is the headline; with one adapter, that one
    adapter = max(scored, key=lambda t: max(a.auc for a in scored[t][0].values()))
    summaries, curves, target_loss = scored[adapter]
    rd = run.cfg.privacy.record
    result: dict[str, Any] = {
        "audit": "mia", "run": run.cfg.name, "client": client, "round": rnd,
        "adapter": adapter,
        "adapters": {t: {k: a.auc for k, a in v[0].items()} for t, v in scored.items()},
        "model": ccfg.model.name, "members": n, "nonmembers": len(non),
        "nonmember_source": source, "record_dp_enabled": rd.enabled,
        "accounted": {"unit": "record", "delta": rd.delta,
                      "epsilon": json_number(run.accounted_epsilon(client, "record", rnd))},
        "attacks": {k: s.to_json() for k, s in summaries.items()},
        "roc": {k: c.to_json() for k, c in curves.items()},
        "mean_loss": {"members": float(target_loss[:n].mean()),
                      "nonmembers": float(target_loss[n:].mean())},
        "seconds": elapsed(t0)}
    plot_roc_loglog(curves, run.audit_dir / roc_name(client),
                    title=f"{client}, round {rnd}: membership inference (log-log)")
    path = write_result(run, result_name(client), result)
    if report:
        refresh_report(run)
    return MiaAudit(result=result, path=path)


def summary_lines(r: dict[str, Any]) -> list[str]:
    lines = [(f"membership inference on client {r['client']} ({r['model']}) after round "
             f"{r['round']}: {r['members']} training examples vs {r['nonmembers']} non-members "
             f"({r['nonmember_source']}); adapter {r['adapter']}"
             + (f" (the stronger of {', '.join(r['adapters'])})" if len(r["adapters"]) > 1
                else "")),
             f"  {'attack':<10} {'AUC':>6} {'TPR@1%FPR':>10} {'TPR@0.1%FPR':>12}"]
    for k, a in r["attacks"].items():
        t1, t01 = a["tpr_at_fpr"]
        lines.append(f"  {k:<10} {a['auc']:>6.3f} {t1['tpr']:>10.3f} {t01['tpr']:>12.3f}")
    if not r["attacks"]["loss"]["tpr_at_fpr"][0]["resolved"]:
        lines.append(f"  (TPR at low FPR is at zero false positives: {r['nonmembers']} "
                     "non-members cannot resolve 1 %)")
    m = r["mean_loss"]
    lines.append(f"  mean loss: members {m['members']:.3f}, non-members {m['nonmembers']:.3f}")
    return lines




def run_from_args(args: argparse.Namespace) -> int:
    audit = run_mia_audit(args.run_dir, args.client, round=args.round,
                          nonmembers=args.nonmembers, report=not args.no_report)
    print("\n".join(summary_lines(audit.result)))
    print(f"  written: {audit.path} (+ {roc_name(args.client)})")
    return 0
