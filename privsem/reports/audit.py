"""The report's audit section, from the files under ``RUN_DIR/audit/``.

It appears when the run planted canaries (``audit/canaries.json``) or an audit has written its
results (``canary_audit.json``, ``mia-<client>.json``, ``inversion-<client>.json``; see
:mod:`privsem.audits`). Figures are the PNGs the audits wrote, embedded as they are.

Rules for changing it: the section shows numbers only, never a canary's text or secret (the
report is a file the whole federation may read; the canary audit checks that no canary text
appears in it). A result file that cannot be read is named in the section, not skipped silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privsem import bounded_json
from privsem.reports.document import Block, Bullets, Figure, Heading, Item, Paragraph, Table

AUDIT_DIR = "audit"
# an audit result (audit/*.json) holds per-canary and per-record scores: far below this
MAX_AUDIT_FILE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class AuditFiles:
    planted: dict[str, Any] | None  # count, members, client, format size (no canaries)
    canary: dict[str, Any] | None
    mia: dict[str, dict[str, Any]]  # by client
    inversion: dict[str, dict[str, Any]]  # by client
    figures: dict[str, bytes]
    problems: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.planted or self.canary or self.mia or self.inversion or self.problems)


def _read(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        data = bounded_json.read_file(path, max_bytes=MAX_AUDIT_FILE_BYTES, max_depth=32,
                                      allow_nonfinite=True)
    except (OSError, ValueError) as e:
        problems.append(f"`{AUDIT_DIR}/{path.name}` cannot be read ({e}); run its audit again.")
        return None
    if not isinstance(data, dict):
        problems.append(f"`{AUDIT_DIR}/{path.name}` does not hold a JSON object.")
        return None
    return data


def planted_members(run_dir: str | Path) -> tuple[str, int] | None:
    """(client, number of canaries trained on) when the run planted canaries."""
    path = Path(run_dir) / AUDIT_DIR / "canaries.json"
    if not path.is_file():
        return None
    data = _read(path, [])
    if data is None:
        return None
    try:
        return str(data["client"]), int(data["members"])
    except (KeyError, TypeError, ValueError):
        return None


def load_audits(run_dir: str | Path) -> AuditFiles:
    d = Path(run_dir) / AUDIT_DIR
    problems: list[str] = []
    planted = None
    if (d / "canaries.json").is_file():
        raw = _read(d / "canaries.json", problems)
        if raw is not None:
            fmt = raw.get("format") or {}
            planted = {"client": raw.get("client"), "count": raw.get("count"),
                       "members": raw.get("members"), "space_size": fmt.get("space_size"),
                       "length": fmt.get("length"), "alphabet": len(fmt.get("alphabet") or ())}
    canary = _read(d / "canary_audit.json", problems) if (d / "canary_audit.json").is_file() \
        else None
    mia = {}
    for p in sorted(d.glob("mia-*.json")):
        r = _read(p, problems)
        if r is not None:
            mia[str(r.get("client", p.stem.removeprefix("mia-")))] = r
    inversion = {}
    for p in sorted(d.glob("inversion-*.json")):
        r = _read(p, problems)
        if r is not None:
            inversion[str(r.get("client", p.stem.removeprefix("inversion-")))] = r
    figures = {f"audit:{p.stem}": p.read_bytes() for p in sorted(d.glob("*.png"))} \
        if d.is_dir() else {}
    return AuditFiles(planted, canary, mia, inversion, figures, tuple(problems))


def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return "–"
    if v == "inf" or (isinstance(v, float) and math.isinf(v)):
        return "∞"
    return f"{float(v):.{nd}f}"


def _attack_table(attacks: dict[str, Any]) -> Table:
    rows = []
    for name, a in attacks.items():
        t1, t01 = a["tpr_at_fpr"]
        rows.append((name, _f(a["auc"]), _f(t1["tpr"]) + ("" if t1["resolved"] else " †"),
                     _f(t01["tpr"]) + ("" if t01["resolved"] else " †")))
    n0 = next(iter(attacks.values()))["n_nonmembers"] if attacks else 0
    return Table(("attack", "AUC", "TPR at FPR 1%", "TPR at FPR 0.1%"), tuple(rows),
                 numeric=(False, True, True, True),
                 caption=f"† not resolved by {n0} non-members: the TPR at zero false positives.")


def _fig(files: AuditFiles, stem: str, caption: str, alt: str) -> list[Block]:
    key = f"audit:{stem}"
    return [Figure(key, caption, alt)] if key in files.figures else []


def _adapters(r: dict[str, Any]) -> str:
    """Which adapter the figures are of, where the run routes (two adapters answer)."""
    tags = list(r.get("adapters") or ())
    if len(tags) < 2:
        return ""
    others = ", ".join(f"`{t}`" for t in tags if t != r["adapter"])
    return (f" The client answers with {len(tags)} adapters (routing: `trained-1` near its own "
            f"data, the end-of-round one elsewhere); all were attacked, and the figures are of "
            f"the stronger attack's, `{r['adapter']}` (also attacked: {others}; every "
            "adapter's figures are in the audit's JSON).")


def _canary(files: AuditFiles) -> list[Block]:
    out: list[Block] = []
    p = files.planted
    if p is not None:
        out.append(Paragraph(
            f"**Canaries.** At set-up the run planted {p['count']} canaries in the private "
            f"data of `{p['client']}` (random secrets from a space of {p['space_size']:,}); each "
            f"was added to its training data with probability ½, {p['members']} of them were. "
            "They count in that client's DP-SGD dataset size. Which canaries were trained on "
            "is the auditor's secret, in `audit/canaries.json`: the protocol never sends it, "
            "and in a deployment the auditor keeps it away from the server. This report shows "
            "no canary."))
    c = files.canary
    if c is None:
        if p is not None:
            out.append(Paragraph("Not audited yet: `privsem audit canaries RUN_DIR` measures "
                                 "them."))
        return out
    o, acc = c["one_run"], c["accounted"]
    eps = acc["epsilon"]
    out.append(Heading(3, f"Canary audit: `{c['client']}` after round {c['round']}"))
    out.append(Paragraph(
        f"Membership inference on the {c['canaries']} canaries ({c['members']} trained on) "
        f"with the client's model (`{c['model']}`); *reference* compares with the base model "
        "before fine-tuning." + _adapters(c)))
    out.append(_attack_table(c["attacks"]))
    verdict = ("**BUG SIGNAL (T43): the empirical bound exceeds the accounted ε; the accounting "
               "or DP-SGD is wrong.**" if c["contradiction"] else
               "The bound stays below the accounted ε, as it must." if eps != "inf" else
               "DP-SGD was off, so the ledger makes no record-level claim to test.")
    out.append(Paragraph(
        f"**Empirical ε lower bound** (one-run audit, Steinke, Nasr and Jagielski 2023): "
        f"{_f(o['epsilon_lower_bound'])} with confidence {o['confidence']:g} (best of "
        f"{len(o['attacks'])} attacks, each at {o['per_attack_confidence']:.4f}; "
        f"{o['best']['v']} of {o['best']['r']} guesses right). **Accounted record-level ε** "
        f"of `{c['client']}` from the ledger: {_f(eps)} at δ = {acc['delta']:g}. {verdict}",
        callout=True))
    items = []
    e = c.get("exposure")
    if e:
        items.append(Item(
            f"Exposure (Secret Sharer, {e['samples']} sampled secrets per canary, at most "
            f"{e['cap']:.2f} bits): members {_f(e['mean_members'], 2)}, non-members "
            f"{_f(e['mean_nonmembers'], 2)}, chance {e['chance']:.2f} bits."))
    v = c["verbatim"]
    pl, pf, oc = v["pseudo_labels"], v["persisted_files"], v["own_candidates"]
    items.append(Item(
        f"Verbatim (T34): pseudo-labels of every client "
        f"{'clean' if pl['clean'] else '**LEAK: ' + str(len(pl['hits'])) + ' hit(s)**'} "
        f"({pl['texts_checked']} texts); other persisted files "
        f"{'clean' if pf['clean'] else '**LEAK: ' + str(len(pf['hits'])) + ' hit(s)**'} "
        f"({len(pf['files_checked'])} files); the client's own candidate answers (client-local) "
        + ("hold no canary" if oc["clean"] else f"reproduce canaries {len(oc['hits'])} time(s)")
        + f" ({oc['texts_checked']} texts)."))
    out.append(Bullets(tuple(items)))
    out += _fig(files, "canary_roc", "ROC of the canary attacks, log-log; the diagonal is "
                "chance.", "canary ROC, log-log")
    out += _fig(files, "canary_scores", "Reference scores and exposure of members and "
                "non-members.", "canary scores and exposure")
    return out


def _mia(files: AuditFiles) -> list[Block]:
    out: list[Block] = []
    for client, r in files.mia.items():
        out.append(Heading(3, f"Membership inference: `{client}` after round {r['round']}"))
        out.append(Paragraph(
            f"{r['members']} training examples against {r['nonmembers']} non-members "
            f"({r['nonmember_source']}); accounted record-level ε "
            f"{_f(r['accounted']['epsilon'])}. Mean loss: members "
            f"{r['mean_loss']['members']:.3f}, non-members {r['mean_loss']['nonmembers']:.3f}."
            + _adapters(r)))
        out.append(_attack_table(r["attacks"]))
        out += _fig(files, f"mia-{client}-roc", f"ROC of the attacks on `{client}`'s training "
                    "examples, log-log.", f"membership inference ROC for {client}")
    return out


def _inversion(files: AuditFiles) -> list[Block]:
    out: list[Block] = []
    for client, r in files.inversion.items():
        out.append(Heading(3, f"Embedding inversion: `{client}`'s uploads"))
        out.append(Paragraph(r["who_could_attack"]))
        rows = []
        for x in r["rounds"]:
            nn, inv = x["nearest_neighbour"], x["inverter"]
            rows.append((str(x["round"]), f"{x['noise_std']:.4g}", f"{x['residual_std']:.4g}",
                         f"{nn['top1_accuracy']:.3f} / {nn['chance_top1']:.3f}",
                         f"{nn['any_own_answer']:.3f}",
                         f"{nn['mean_token_f1']:.3f} / {nn['chance_token_f1']:.3f}",
                         "–" if inv is None else
                         f"{inv['mean_token_f1']:.3f} / {inv['chance_token_f1']:.3f}",
                         "at chance" if x["at_chance"] else "**above chance**"))
        out.append(Table(("round", "noise std", "measured", "NN top-1 / chance",
                          "NN any own answer", "NN token-F1 / chance",
                          "inverter token-F1 / chance", f"T44 (margin {r['margin']:g})"),
                         tuple(rows), numeric=(True, True, True, True, True, True, True, False),
                         caption="Nearest-neighbour retrieval from a pool holding every "
                                 "client's answers; a bag-of-words inverter trained without "
                                 "this client's answers. *measured*: std of the upload minus "
                                 "the clean matrix."))
        out += _fig(files, f"inversion-{client}", "Inversion against the noise level: fresh "
                    "noise on the clean matrix; the red line is the noise actually used.",
                    f"inversion curve for {client}")
    return out


def blocks(files: AuditFiles) -> list[Block]:
    """The audit section; empty when the run has no canaries and no audit results."""
    if files.empty:
        return []
    out: list[Block] = [Heading(2, "Audits", "audits"),
                        Paragraph("Measured after the run by the scripts in `audits/` (`privsem "
                                  "audit canaries|mia|inversion RUN_DIR`), from files under "
                                  "`audit/`. An audit can show a leak, or that the accounting is "
                                  "wrong; it cannot prove privacy.")]
    out += _canary(files) + _mia(files) + _inversion(files)
    if files.problems:
        out.append(Bullets(tuple(Item(t) for t in files.problems)))
    return out
