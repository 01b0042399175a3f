"""Threat models as the code reads them: which ones a configuration defends, and why.

The catalogue is ``threat_models/catalogue.yaml`` (one entry per document in
``threat_models/``). Each entry lists named requirements; :data:`REQUIREMENTS` defines each as a
check of the configuration with the fix to print when it fails. :func:`assess` evaluates every
threat model; a configuration may *claim* threat models (``threat_models: [...]``), and
:func:`refuse_false_claims` (called by ``privsem run`` before any data is touched, and by
``privsem check``) raises :class:`~privsem.errors.ConfigError` naming the first claim that does
not hold and how to fix it.

Statuses: ``defended``; ``simulation`` (every requirement holds but the noise is seeded, which
is reproducible and therefore no protection against anyone who knows the seed); ``not
defended``. Only ``defended`` satisfies a claim.

Rules for changing it: a requirement is a pure function of the configuration, named in the
catalogue; never weaken one without changing the promise in its document.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from privsem.config import RunConfig
from privsem.errors import ConfigError

CATALOGUE = Path(__file__).resolve().parent.parent / "threat_models" / "catalogue.yaml"
SIMULATION_ONLY = "deployment_randomness"


@dataclass(frozen=True)
class Requirement:
    holds: Callable[[RunConfig], bool]
    because: str  # why it matters, when it holds
    fix: str  # what to change, when it does not


REQUIREMENTS: dict[str, Requirement] = {
    "client_dp": Requirement(
        lambda c: c.privacy.client.enabled,
        "every upload is clipped and noised for client-level DP",
        "set privacy.client.enabled: true (uploads otherwise carry no noise)"),
    "record_dp": Requirement(
        lambda c: c.privacy.record.enabled,
        "every client trains with DP-SGD (record-level DP)",
        "set privacy.record.enabled: true (a model without DP-SGD can memorise its data)"),
    "local_noise": Requirement(
        lambda c: c.privacy.client.placement == "local",
        "each client adds the full noise itself, so it holds whatever others do",
        "set privacy.client.placement: local (distributed noise relies on honest survivors)"),
    "masked": Requirement(
        lambda c: c.aggregation.backend == "masked",
        "uploads are pairwise-masked with signed keys and Shamir recovery",
        "set aggregation.backend: masked"),
    "consistency_check": Requirement(
        lambda c: c.aggregation.backend == "masked" and c.aggregation.masked.consistency_check,
        "the signed consistency round stops inconsistent survivor views (dropout faking)",
        "set aggregation.backend: masked and aggregation.masked.consistency_check: true"),
    "ckks": Requirement(
        lambda c: c.aggregation.backend == "ckks",
        "uploads are encrypted to a separate key holder; the aggregator holds no secret key",
        "set aggregation.backend: ckks"),
    "robust_consensus": Requirement(
        lambda c: c.consensus.operator != "mean",
        "the consensus is a robust operator",
        "set consensus.operator: trimmed_mean, geometric_median or medoid (needs "
        "aggregation.backend: plaintext, which shows the server each noisy upload)"),
    "texts_private": Requirement(
        lambda c: c.consensus.selection == "local" or c.privacy.record.enabled,
        "no text leaves a client (local selection) or every shared text comes from a DP-SGD "
        "model",
        "set consensus.selection: local, or privacy.record.enabled: true"),
    SIMULATION_ONLY: Requirement(
        lambda c: c.privacy.randomness == "os",
        "noise is drawn from the operating system's entropy",
        "set privacy.randomness: os (seeded noise is reproducible by anyone with the seed)"),
}


@dataclass(frozen=True)
class ThreatModel:
    id: str
    title: str
    document: str
    adversary: str
    promise: str
    requires: tuple[str, ...]
    tests: tuple[str, ...]
    pending: tuple[str, ...] = ()


def load_catalogue(path: Path = CATALOGUE) -> dict[str, ThreatModel]:
    """The threat models of ``path``, validated: every requirement known, every document
    present, ids unique."""
    if not path.is_file():
        raise ConfigError("threat_models", str(path), "the catalogue ships in the repository's "
                          "threat_models/ folder; install privsem from a checkout (pip install "
                          "-e .)")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ConfigError("threat_models", str(path), "the catalogue must be a YAML list")
    out: dict[str, ThreatModel] = {}
    fields = {"id", "title", "document", "adversary", "promise", "requires", "tests"}
    for i, entry in enumerate(data):
        where = f"{path.name}[{i}]"
        if not isinstance(entry, dict) or not fields <= set(entry) or not set(entry) <= (
                fields | {"pending"}):
            raise ConfigError(where, entry, f"give exactly the fields {sorted(fields)} (and "
                              "optionally pending)")
        tm = ThreatModel(id=str(entry["id"]), title=str(entry["title"]),
                         document=str(entry["document"]), adversary=str(entry["adversary"]),
                         promise=str(entry["promise"]),
                         requires=tuple(map(str, entry["requires"])),
                         tests=tuple(map(str, entry["tests"])),
                         pending=tuple(map(str, entry.get("pending") or ())))
        unknown = [r for r in tm.requires if r not in REQUIREMENTS]
        if unknown:
            raise ConfigError(f"{where}.requires", unknown,
                              f"use requirements defined in privsem/threats.py: "
                              f"{', '.join(sorted(REQUIREMENTS))}")
        if not (path.parent / tm.document).is_file():
            raise ConfigError(f"{where}.document", tm.document, "name a file in threat_models/")
        if tm.id in out:
            raise ConfigError(f"{where}.id", tm.id, "give every threat model a distinct id")
        out[tm.id] = tm
    return out


@dataclass(frozen=True)
class Assessment:
    model: ThreatModel
    status: str  # "defended", "simulation" or "not defended"
    held: tuple[tuple[str, str], ...]  # (requirement, why it matters)
    missing: tuple[tuple[str, str], ...]  # (requirement, fix)


def assess(cfg: RunConfig, catalogue: dict[str, ThreatModel] | None = None
           ) -> list[Assessment]:
    """Every threat model of the catalogue against ``cfg``."""
    out = []
    for tm in (catalogue or load_catalogue()).values():
        held: list[tuple[str, str]] = []
        missing: list[tuple[str, str]] = []
        for name in tm.requires:
            req = REQUIREMENTS[name]
            if req.holds(cfg):
                held.append((name, req.because))
            else:
                missing.append((name, req.fix))
        if not missing:
            status = "defended"
        elif [m for m, _ in missing] == [SIMULATION_ONLY]:
            status = "simulation"
        else:
            status = "not defended"
        out.append(Assessment(tm, status, tuple(held), tuple(missing)))
    return out


def check_names(names: tuple[str, ...], catalogue: dict[str, ThreatModel] | None = None
                ) -> None:
    known = catalogue or load_catalogue()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError("threat_models", unknown, f"name threat models of "
                          f"threat_models/catalogue.yaml: {', '.join(known)}")


def refuse_false_claims(cfg: RunConfig, extra: tuple[str, ...] = ()) -> list[Assessment]:
    """Raises ConfigError for the first threat model that ``cfg.threat_models`` (or ``extra``)
    claims and that does not hold, naming the fix; returns the assessment otherwise."""
    catalogue = load_catalogue()
    claims = tuple(dict.fromkeys((*cfg.threat_models, *extra)))
    check_names(claims, catalogue)
    result = assess(cfg, catalogue)
    for a in result:
        if a.model.id in claims and a.status != "defended":
            fixes = "; ".join(fix for _, fix in a.missing)
            raise ConfigError("threat_models", a.model.id,
                              f"this configuration does not defend it: {fixes}")
    return result


def describe(cfg: RunConfig, result: list[Assessment]) -> str:
    """The text ``privsem check`` prints."""
    head = (f"configuration {cfg.name!r}: back-end {cfg.aggregation.backend}, client-level DP "
            f"{'on' if cfg.privacy.client.enabled else 'off'} "
            f"({cfg.privacy.client.placement} noise), record-level DP "
            f"{'on' if cfg.privacy.record.enabled else 'off'}, consensus "
            f"{cfg.consensus.operator}, selection {cfg.consensus.selection}, "
            f"{len(cfg.clients)} clients, randomness {cfg.privacy.randomness}")
    lines = [head]
    mark = {"defended": "DEFENDED", "simulation": "SIMULATION ONLY",
            "not defended": "NOT DEFENDED"}
    for a in result:
        claimed = " (claimed)" if a.model.id in cfg.threat_models else ""
        lines.append("")
        lines.append(f"[{mark[a.status]}] {a.model.id}{claimed}: {a.model.title}")
        lines.append(f"  document: threat_models/{a.model.document}")
        if a.status != "not defended":
            lines.append(f"  promise: {a.model.promise}")
        for name, why in a.held:
            lines.append(f"  + {name}: {why}")
        for name, fix in a.missing:
            lines.append(f"  - {name}: {fix}")
        tested = ", ".join(a.model.tests)
        lines.append(f"  tests: {tested}" + (f"; not yet tested: {', '.join(a.model.pending)}"
                                             if a.model.pending else ""))
    return "\n".join(lines)


def to_json(cfg: RunConfig, result: list[Assessment]) -> dict[str, Any]:
    return {"config": cfg.name, "claims": list(cfg.threat_models),
            "threat_models": [{"id": a.model.id, "status": a.status,
                               "held": [n for n, _ in a.held],
                               "missing": {n: f for n, f in a.missing},
                               "tests": list(a.model.tests),
                               "pending": list(a.model.pending)} for a in result]}
