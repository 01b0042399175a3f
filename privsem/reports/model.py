"""A run folder read back into typed data: the one model both report.md and report.html render.

Rules for changing it:
- Everything comes from the run folder's files (``config.yaml``, ``metrics.jsonl``,
  ``ledger.jsonl``), so a report shows what was written, not what was intended. The privacy plan
  of the run, when the runner hands it over, adds only the clients' dataset sizes.
- ε spent is recomputed from the ledger's ``dp_accounting`` events with
  :func:`privsem.privacy.analysis.epsilon`, never taken from the metrics. A ledger that fails its
  hash chain raises :class:`~privsem.errors.LedgerCorrupted`; a ledger that accounts less than
  the metrics recorded at the time raises it too. Nothing is rendered from partial numbers.
- A missing or malformed file raises :class:`~privsem.errors.DataError` naming the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privsem.config import RunConfig, load_config
from privsem.data.jsonl import json_objects
from privsem.errors import DataError, LedgerCorrupted, PrivsemError
from privsem.privacy.analysis import epsilon
from privsem.privacy.ledger import UNITS, Ledger, LedgerEntry

if TYPE_CHECKING:
    from privsem.privacy.plan import PrivacyPlan

SCORES = ("similarity", "key_recall", "nll")
_REL_TOL = 1e-6  # ε from the ledger vs the metrics' copy: same events, same accountant


@dataclass(frozen=True)
class StageBytes:
    up: int
    down: int


@dataclass(frozen=True)
class ClientRound:
    """One line of ``metrics.jsonl``: one client after one round (round 0: before training)."""

    round: int
    client: str
    model: str
    bytes_up: int
    bytes_down: int
    bytes_by_stage: dict[str, StageBytes]
    seconds: float
    eval_seconds: float
    scores: dict[str, float | None]  # "own_similarity", "other_nll", ...
    train_loss: float | None
    mean_agreement: float | None
    agreement: tuple[float, ...] | None  # per prompt; None in run folders written before it
    consensus_noise_std: float | None
    epsilon_record: float  # as the metrics recorded it (the report shows the ledger's)
    epsilon_client: float
    counted: bool
    dropped: tuple[str, ...]
    round_aborted: str | None
    status: tuple[str, ...]
    lora_parameters: int | None
    aggregation: dict[str, object] = field(default_factory=dict)  # the client's back-end stats
    aggregate_detail: dict[str, object] = field(default_factory=dict)  # the server side's


@dataclass(frozen=True)
class RoundOutcome:
    """What the aggregation of one round released, as the metrics of its clients record it."""

    round: int
    counted: tuple[str, ...]
    dropped: tuple[str, ...]
    aborted: str | None
    agreement: tuple[float, ...] | None
    mean_agreement: float | None
    noise_std: float | None


@dataclass(frozen=True)
class UnitSpend:
    """ε of one unit (``record`` or ``client``) per client after each round, from the ledger."""

    unit: str
    enabled: bool
    target: float
    budget: float  # inf: the unit makes no claim
    delta: float
    by_client: dict[str, tuple[float, ...]]  # client -> ε after rounds 0..last_round

    def final(self, client: str) -> float:
        return self.by_client[client][-1]

    def left(self, client: str) -> float:
        return self.budget - self.final(client)

    def worst(self) -> float:
        return max((v[-1] for v in self.by_client.values()), default=0.0)


@dataclass(frozen=True)
class CkksFigures:
    """The ckks back-end's cohort figure: contributors the key holder requires."""

    min_contributors: int


@dataclass(frozen=True)
class Masking:
    """The masked back-end's cohort figures: neighbours per client, share threshold, minimum
    survivors (from the configuration and the cohort size, as every party derives them)."""

    degree: int
    threshold: int
    min_survivors: int


@dataclass(frozen=True)
class RunData:
    run_dir: Path
    cfg: RunConfig
    rows: tuple[ClientRound, ...]
    ledger: tuple[LedgerEntry, ...]
    ledger_head: str  # hash of the last entry ("" when empty)
    last_round: int  # the last round with metrics or ledger entries
    spend: dict[str, UnitSpend]  # by unit
    outcomes: tuple[RoundOutcome, ...]  # rounds >= 1 with metrics
    prompt_ids: tuple[str, ...]
    examples: dict[str, int] | None  # clients' dataset sizes, when known
    masking: Masking | None
    seconds: float | None  # wall time, when the runner measured it
    notes: tuple[str, ...]  # discrepancies the reader must know about
    ckks: CkksFigures | None = None

    @property
    def clients(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.cfg.clients)

    @property
    def metric_rounds(self) -> tuple[int, ...]:
        return tuple(sorted({r.round for r in self.rows}))

    def release_details(self, mechanism: str) -> list[dict[str, Any]]:
        return [e.detail for e in self.ledger if e.mechanism == mechanism]

    def client_release(self) -> tuple[str, dict[str, Any]] | None:
        """Mechanism and detail of the last client-level release charged (as applied)."""
        rel = [e for e in self.ledger if e.unit == "client" and e.mechanism != "noise_present"]
        return (rel[-1].mechanism, rel[-1].detail) if rel else None

    def dpsgd(self) -> dict[str, dict[str, Any]]:
        """Per client, the detail of its last DP-SGD charge (σ, q, steps, clip as applied)."""
        return {e.client: e.detail for e in self.ledger if e.mechanism == "dp_sgd"}


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise DataError(str(path), None, f"missing; a run folder written by `privsem run` holds "
                        f"{path.name} (run the federation again, or point at the right folder)")
    return list(json_objects(path))


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _row(path: Path, n: int, d: dict[str, Any]) -> ClientRound:
    try:
        stages = {str(k): StageBytes(int(v["up"]), int(v["down"]))
                  for k, v in (d.get("bytes_by_stage") or {}).items()}
        agreement = d.get("agreement")
        return ClientRound(
            round=int(d["round"]), client=str(d["client"]), model=str(d["model"]),
            bytes_up=int(d["bytes_up"]), bytes_down=int(d["bytes_down"]),
            bytes_by_stage=stages, seconds=float(d["seconds"]),
            eval_seconds=float(d.get("eval_seconds") or 0.0),
            scores={f"{w}_{s}": _num(d.get(f"{w}_{s}")) for w in ("own", "other") for s in SCORES},
            train_loss=_num(d.get("train_loss")), mean_agreement=_num(d.get("mean_agreement")),
            agreement=tuple(float(a) for a in agreement) if agreement is not None else None,
            consensus_noise_std=_num(d.get("consensus_noise_std")),
            epsilon_record=float(d["epsilon_record"]), epsilon_client=float(d["epsilon_client"]),
            counted=bool(d.get("counted")), dropped=tuple(d.get("dropped") or ()),
            round_aborted=d.get("round_aborted"), status=tuple(d.get("status") or ()),
            lora_parameters=d.get("lora_parameters"),
            aggregation=dict(d.get("aggregation") or {}),
            aggregate_detail=dict(d.get("aggregate_detail") or {}))
    except KeyError as e:
        raise DataError(str(path), n, f"missing field {e.args[0]!r}; the file was not written by "
                        "this version of privsem or is damaged") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise DataError(str(path), n, f"a field has the wrong type ({e})") from None


def _outcomes(rows: tuple[ClientRound, ...]) -> tuple[RoundOutcome, ...]:
    out = []
    for rnd in sorted({r.round for r in rows if r.round > 0}):
        rs = [r for r in rows if r.round == rnd]
        first = rs[0]
        out.append(RoundOutcome(
            round=rnd, counted=tuple(r.client for r in rs if r.counted),
            dropped=tuple(sorted({c for r in rs for c in r.dropped})),
            aborted=next((r.round_aborted for r in rs if r.round_aborted), None),
            agreement=first.agreement, mean_agreement=first.mean_agreement,
            noise_std=first.consensus_noise_std))
    return tuple(out)


def _spend(cfg: RunConfig, entries: tuple[LedgerEntry, ...], last: int) -> dict[str, UnitSpend]:
    spend = {}
    for unit in UNITS:
        dp = cfg.privacy.record if unit == "record" else cfg.privacy.client
        budget = dp.budget_epsilon if dp.enabled else math.inf
        by_client = {}
        for c in cfg.clients:
            mine = [e for e in entries if e.client == c.id and e.unit == unit]
            by_client[c.id] = tuple(
                epsilon([e.dp_event() for e in mine if e.round <= r], delta=dp.delta,
                        accountant=cfg.privacy.accountant) for r in range(last + 1))
        spend[unit] = UnitSpend(unit, dp.enabled, dp.epsilon, budget, dp.delta, by_client)
    return spend


def _check_against_metrics(spend: dict[str, UnitSpend], rows: tuple[ClientRound, ...],
                           ledger_path: Path) -> list[str]:
    """The ledger must account at least what the metrics recorded; raises if it accounts less."""
    notes = []
    for r in rows:
        for unit, recorded in (("record", r.epsilon_record), ("client", r.epsilon_client)):
            series = spend[unit].by_client.get(r.client)
            if series is None or r.round >= len(series):
                continue
            ledger_eps = series[r.round]
            if math.isclose(ledger_eps, recorded, rel_tol=_REL_TOL, abs_tol=1e-9):
                continue
            if ledger_eps < recorded:
                raise LedgerCorrupted(
                    f"{ledger_path}: accounts {unit}-level ε={ledger_eps:.6g} for client "
                    f"{r.client} after round {r.round}, but metrics.jsonl recorded "
                    f"{recorded:.6g} at the time; the ledger has lost entries (restore it from "
                    "a backup; a report from it would under-state what was spent)")
            notes.append(f"`{r.client}` round {r.round}: the ledger accounts {unit}-level "
                         f"ε={ledger_eps:.4f}, more than the {recorded:.4f} the metrics "
                         "recorded; the report shows the ledger's figure.")
    return notes


def _ckks(cfg: RunConfig) -> CkksFigures | None:
    if cfg.aggregation.backend != "ckks":
        return None
    from privsem.aggregation.ckks import min_contributors
    return CkksFigures(min_contributors(cfg.aggregation.ckks.min_contributors,
                                        len(cfg.clients)))


def _masking(cfg: RunConfig, prompts: int) -> Masking | None:
    if cfg.aggregation.backend != "masked":
        return None
    from privsem.aggregation.masked import derive_params

    m = cfg.aggregation.masked
    try:
        p = derive_params(cohort_size=len(cfg.clients), length=max(prompts, 1) * 384, clip=1.0,
                          noise_multiplier=0.0, modulus_bits=m.modulus_bits,
                          placement=cfg.privacy.client.placement, graph=m.graph,
                          threshold=m.threshold, min_survivors=m.min_survivors,
                          consistency_check=m.consistency_check)
    except ValueError:
        return None
    return Masking(p.degree, p.threshold, p.min_survivors)


def _prompt_ids(cfg: RunConfig, rows: tuple[ClientRound, ...]) -> tuple[str, ...]:
    """The public prompts' ids from the configured file; numbers when it cannot be read."""
    from privsem.data import load_prompts

    try:
        return tuple(p.id for p in load_prompts(cfg.prompts, cfg.max_prompts))
    except (PrivsemError, OSError):
        n = max((len(r.agreement) for r in rows if r.agreement is not None), default=0)
        return tuple(f"prompt {j + 1}" for j in range(n))


def _examples(cfg: RunConfig, plan: PrivacyPlan | None, run_dir: Path
              ) -> dict[str, int] | None:
    if plan is not None:
        return {c: p.examples for c, p in plan.clients.items()}
    from privsem.data import load_examples
    from privsem.reports.audit import planted_members

    try:
        sizes = {c.id: len(load_examples(c.train)) for c in cfg.clients}
    except (PrivsemError, OSError):
        return None
    planted = planted_members(run_dir)  # canaries trained on count in the client's N
    if planted is not None and planted[0] in sizes:
        sizes[planted[0]] += planted[1]
    return sizes


def _ledger(path: Path, cfg: Any, rows: tuple[ClientRound, ...]) -> tuple[Any, ...]:
    if path.is_file():
        try:  # verifies the hash chain and the head file
            return tuple(Ledger(path, accountant=cfg.privacy.accountant).entries)
        except LedgerCorrupted as e:
            raise LedgerCorrupted(f"{e}. No report was written: its ε would not be "
                                  "trustworthy") from None
    if any(r.epsilon_record > 0 or r.epsilon_client > 0 or r.counted for r in rows):
        raise DataError(str(path), None, "missing, although metrics.jsonl records "
                        "releases; the ledger is the only account of what was spent "
                        "(restore it from a backup)")
    return ()


def _is_deployment(folder: Path) -> bool:
    """A Flower deployment's folder: the server's ``run/`` and a ``nodes/<id>/`` per client
    (privsem.runtime.flower.deploy), gathered in one place by whoever writes the report."""
    return (folder / "run" / "metrics.jsonl").is_file() and (folder / "nodes").is_dir()


def _deployment(folder: Path, cfg: Any) -> tuple[tuple[ClientRound, ...], tuple[Any, ...], str]:
    """The rows and ledger of a deployment: each row joins what the server saw of a client
    in a round (``run/metrics.jsonl``) with what the client measured (``nodes/<id>/
    metrics.jsonl``); the ledger is every node's own, each chain verified on its own."""
    merged: dict[tuple[int, str], dict[str, Any]] = {}
    for path in [folder / "run" / "metrics.jsonl",
                 *(folder / "nodes" / c.id / "metrics.jsonl" for c in cfg.clients)]:
        for _, d in _read_jsonl(path) if path.is_file() else ():
            merged.setdefault((int(d["round"]), str(d["client"])), {}).update(d)
    model = {c.id: c.model.name for c in cfg.clients}
    rows = []
    for (rnd, cid), d in sorted(merged.items()):
        if "seconds" not in d:  # the server saw the client, but its node wrote no row (lost)
            d.update(model=model.get(cid, "?"), seconds=0.0, epsilon_record=0.0,
                     epsilon_client=0.0, status=[
                         "its node reported nothing for this round (it was lost)",
                         *([f"the server: {d['left_round']}"] if d.get("left_round") else [])])
        d.setdefault("bytes_up", 0)  # a node's row from a round the server never began
        d.setdefault("bytes_down", 0)
        rows.append(_row(folder / "nodes" / cid / "metrics.jsonl", 0, d))
    entries: list[Any] = []
    heads = []
    for c in cfg.clients:
        path = folder / "nodes" / c.id / "ledger.jsonl"
        if not path.is_file():
            continue
        try:
            mine = Ledger(path, accountant=cfg.privacy.accountant).entries
        except LedgerCorrupted as e:
            raise LedgerCorrupted(f"{e}. No report was written: its ε would not be "
                                  "trustworthy") from None
        if {e.client for e in mine} - {c.id}:
            raise LedgerCorrupted(f"{path}: holds entries of other clients; a node's ledger "
                                  "is its own")
        entries.extend(mine)
        if mine:
            heads.append(f"{c.id}:{mine[-1].hash[:12]}")
    return tuple(rows), tuple(entries), " ".join(heads)


def load_run(run_dir: str | Path, *, plan: PrivacyPlan | None = None,
             seconds: float | None = None) -> RunData:
    """Reads and checks a run folder. Raises DataError (missing or malformed file) or
    LedgerCorrupted (ledger fails its hash chain or under-counts the metrics)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(str(run_dir), None, "no such run folder; give the folder that "
                        "`privsem run --out RUN_DIR` wrote")
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise DataError(str(cfg_path), None, "missing; a run folder written by `privsem run` "
                        "holds the resolved configuration there")
    cfg = load_config(str(cfg_path))
    metrics_path = run_dir / "metrics.jsonl"
    ledger_path = run_dir / "ledger.jsonl"
    if _is_deployment(run_dir):
        rows, entries, head = _deployment(run_dir, cfg)
    else:
        rows = tuple(_row(metrics_path, n, d) for n, d in _read_jsonl(metrics_path))
        entries = _ledger(ledger_path, cfg, rows)
        head = entries[-1].hash if entries else ""
    known = {c.id for c in cfg.clients}
    strangers = sorted({e.client for e in entries} - known)
    if strangers:
        raise LedgerCorrupted(f"{ledger_path}: entries for clients {strangers} that config.yaml "
                              "does not list; the ledger belongs to another run")
    last = max([0, *(r.round for r in rows), *(e.round for e in entries)])
    spend = _spend(cfg, entries, last)
    notes = _check_against_metrics(spend, rows, ledger_path)
    unfinished = sorted({e.round for e in entries} - {r.round for r in rows})
    if unfinished:
        notes.append("Round " + ", ".join(map(str, unfinished)) + " has ledger entries but no "
                     "metrics: the run stopped inside it. The ledger charges before each release, "
                     "so it may count releases that never left the client; it never counts "
                     "fewer.")
    prompt_ids = _prompt_ids(cfg, rows)
    return RunData(run_dir=run_dir, cfg=cfg, rows=rows, ledger=entries,
                   ledger_head=head, last_round=last,
                   spend=spend, outcomes=_outcomes(rows), prompt_ids=prompt_ids,
                   examples=_examples(cfg, plan, run_dir), masking=_masking(cfg, len(prompt_ids)),
                   ckks=_ckks(cfg),
                   seconds=seconds, notes=tuple(notes))
