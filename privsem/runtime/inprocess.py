"""The in-process runtime: every party in one process, deterministic under a seed.

The round loop reads on one screen (DESIGN.md §1); each step is a named function. Runtimes only
move bytes between the transport-free client and server; every byte counted in the metrics is
a byte of a serialised message.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from privsem import bounded_json
from privsem.aggregation import exchange, get_backend
from privsem.aggregation.base import AggregationBackend, Gone, Helper
from privsem.aggregation.masked.crypto import Identity
from privsem.audits.planting import plant_for_run
from privsem.confidence import upload_dim
from privsem.config import ClientConfig, RunConfig, dump_yaml
from privsem.data import Example, PublicPrompt, load_eval, load_examples, load_prompts
from privsem.data import prompt_set_hash as prompt_hash_of
from privsem.errors import ConfigError, RunFolderInUse, StateCorrupted
from privsem.models.embedder import Embedder
from privsem.privacy.ledger import Ledger
from privsem.privacy.plan import PrivacyPlan, make_plan
from privsem.protocol.client import Client, RoundLog
from privsem.protocol.server import Server
from privsem.protocol.session import expected_params, new_run_nonce
from privsem.protocol.state import ClientStore, read_json, write_json, write_text_atomic
from privsem.rng import derive_seed, make_randomness
from privsem.runtime.parties import ClientEndpoint, Endpoint, HelperEndpoint, InProcess, Transport


@dataclass
class Federation:
    cfg: RunConfig
    out: Path
    server: Server
    clients: dict[str, Client]
    ledger: Ledger
    plan: PrivacyPlan
    helpers: dict[str, Helper]  # the back-end's parties besides clients and server

    @property
    def endpoints(self) -> dict[str, Endpoint]:
        """Every party a round delivers frames to, by id."""
        out: dict[str, Endpoint] = {cid: ClientEndpoint(c) for cid, c in self.clients.items()}
        out.update({hid: HelperEndpoint(hid, h) for hid, h in self.helpers.items()})
        return out


Progress = Callable[[str], None]


class ProgressBars:
    """Two bars: rounds (outer), and the current round's phases per client (inner).

    Called with the name of the phase that starts now; the previous phase counts as done.
    """

    def __init__(self, cfg: RunConfig, *, enabled: bool) -> None:
        self.enabled = enabled
        self.outer = tqdm(total=cfg.rounds + 1, desc="rounds", unit="round", position=0,
                          disable=not enabled, dynamic_ncols=True)
        self.inner: Any = None
        self.phases = 2 * len(cfg.clients) + 1  # train-release per client, aggregate, evaluate

    def start(self, label: str, phases: int) -> None:
        self.finish_round()
        self.outer.set_postfix_str("")
        self.inner = tqdm(total=phases, desc=label, unit="phase", position=1, leave=False,
                          disable=not self.enabled, dynamic_ncols=True)
        self._open = False

    def __call__(self, text: str) -> None:
        if self.inner is None:
            self.outer.set_postfix_str(text)
            return
        if self._open:
            self.inner.update(1)
        self._open = True
        self.inner.set_postfix_str(text)

    def finish_round(self) -> None:
        if self.inner is not None:
            self.inner.close()
            self.inner = None
            self.outer.update(1)

    def close(self) -> None:
        self.finish_round()
        self.outer.close()


@dataclass(frozen=True)
class Common:
    """What every party derives from the configuration alone."""

    prompts: list[PublicPrompt]
    prompt_hash: str
    embedder: Embedder
    backend: AggregationBackend


def common(cfg: RunConfig, progress: Progress) -> Common:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    prompts = load_prompts(cfg.prompts, cfg.max_prompts)
    progress("loading encoder")
    embedder = Embedder(cfg.embedding.model, batch_size=cfg.embedding.batch_size)
    return Common(prompts, prompt_hash_of(prompts), embedder, get_backend(cfg.aggregation.backend))


def make_server(cfg: RunConfig, c: Common, plan: PrivacyPlan, *, registry: Mapping[str, bytes],
                public: Mapping[str, bytes], run: str) -> Server:
    # Fail before any training if the back-end cannot serve this cohort (e.g. modulus too
    # small for the number of clients).
    expected_params(cfg, plan, cohort_size=len(cfg.clients), dim=c.embedder.dim, public=public)
    return Server(cfg, prompts=c.prompts, prompt_hash=c.prompt_hash, dim=c.embedder.dim,
                  plan=plan, backend=c.backend, registry=dict(registry), public=public,
                  embedder=c.embedder, run=run)


def make_client(cfg: RunConfig, ccfg: ClientConfig, c: Common, plan: PrivacyPlan, *,
                ledger: Ledger, store: ClientStore, identity: Identity,
                registry: Mapping[str, bytes], public: Mapping[str, bytes],
                private: list[Example], resumes: int, run: str) -> Client:
    return Client(cfg, ccfg, prompts=c.prompts, prompt_hash=c.prompt_hash, embedder=c.embedder,
                  ledger=ledger, plan=plan, backend=c.backend,
                  # seeded streams restart on resume: a new label per resume keeps them from
                  # repeating the noise of earlier rounds
                  randomness=make_randomness(cfg.privacy.randomness, cfg.seed, "client",
                                             ccfg.id,
                                             *(("resume", resumes) if resumes else ())),
                  identity=identity, registry=registry, public=public, private_data=private,
                  store=store, run=run)


def setup(cfg: RunConfig, out: Path, progress: Progress, *, resumes: int = 0) -> Federation:
    """Every party of the federation in this process, sharing one run folder and ledger."""
    out.mkdir(parents=True, exist_ok=True)
    if resumes == 0:
        (out / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    c = common(cfg, progress)
    private = {cc.id: load_examples(cc.train) for cc in cfg.clients}
    # Audit canaries join their client's private data before the plan is made, so DP-SGD's
    # N, q = B/N and σ are those of the data the client trains on (T19, T43).
    plant_for_run(cfg, out, private, resumes=resumes)
    plan = make_plan(cfg, {cid: len(ex) for cid, ex in private.items()}, len(c.prompts))
    ledger = Ledger(out / "ledger.jsonl", accountant=cfg.privacy.accountant)
    # Each client's long-term signing key; the public halves form the registry every party
    # trusts (a PKI set up out of band; in-process it is simply handed to everyone).
    identities = {cc.id: Identity() for cc in cfg.clients}
    registry = {cid: ident.public for cid, ident in identities.items()}
    resumed = ("resume", resumes) if resumes else ()
    # The back-end's own parties (ckks: the key holder, which makes its keys here) and the
    # public material every party receives before the first round.
    progress(f"setting up {c.backend.name} aggregation")
    parties = c.backend.start_run(plan.noise(), cohort=tuple(cc.id for cc in cfg.clients),
                                  prompts=len(c.prompts),
                                  dim=upload_dim(c.embedder.dim, cfg.consensus.confidence),
                                  settings=cfg.aggregation.settings(),
                                  randomness=make_randomness(cfg.privacy.randomness, cfg.seed,
                                                             "helpers", *resumed))
    # This incarnation's nonce: every round's session id binds it, so no frame of another run
    # (or of this run before a resume) is accepted.
    run = new_run_nonce()
    server = make_server(cfg, c, plan, registry=registry, public=parties.public, run=run)
    clients = {}
    for cc in cfg.clients:
        progress(f"loading {cc.id}: {cc.model.name}")
        clients[cc.id] = make_client(cfg, cc, c, plan, ledger=ledger,
                                     store=ClientStore(out / "state" / cc.id),
                                     identity=identities[cc.id], registry=registry,
                                     public=parties.public, private=private[cc.id],
                                     resumes=resumes, run=run)
    return Federation(cfg, out, server, clients, ledger, plan, dict(parties.helpers))


def setup_server(cfg: RunConfig, *, registry: Mapping[str, bytes], progress: Progress,
                 run: str) -> Server:
    """The server alone, as in a deployment: no client, no private data, no ledger. Its plan
    holds only what every party derives from the configuration (clip, client-level noise)."""
    if _has_helpers(cfg):
        raise ConfigError("aggregation.backend", cfg.aggregation.backend,
                          "a deployment of this back-end needs its helper party (the ckks key "
                          "holder) on a node of its own, which is not built yet; use masked")
    c = common(cfg, progress)
    plan = make_plan(cfg, {}, len(c.prompts))
    return make_server(cfg, c, plan, registry=registry, public={}, run=run)


def setup_node(cfg: RunConfig, client_id: str, folder: Path, *, identity: Identity,
               registry: Mapping[str, bytes], progress: Progress, run: str,
               resumes: int = 0) -> tuple[Client, Ledger]:
    """One client alone, as on its own node in a deployment: its private data, its plan, and
    its own ledger and state under ``folder`` (nothing of it is shared with other parties)."""
    ccfg = next((cc for cc in cfg.clients if cc.id == client_id), None)
    if ccfg is None:
        raise ConfigError("client", client_id, "name one of the configured clients: "
                          + ", ".join(cc.id for cc in cfg.clients))
    if _has_helpers(cfg):
        raise ConfigError("aggregation.backend", cfg.aggregation.backend,
                          "a deployment of this back-end needs its helper party on a node of "
                          "its own, which is not built yet; use masked")
    folder.mkdir(parents=True, exist_ok=True)
    c = common(cfg, progress)
    private = {client_id: load_examples(ccfg.train)}
    if cfg.audit.canaries is not None and cfg.audit.canaries.client == client_id:
        plant_for_run(cfg, folder, private, resumes=resumes)
    plan = make_plan(cfg, {client_id: len(private[client_id])}, len(c.prompts))
    ledger = Ledger(folder / "ledger.jsonl", accountant=cfg.privacy.accountant)
    client = make_client(cfg, ccfg, c, plan, ledger=ledger, store=ClientStore(folder / "state"),
                         identity=identity, registry=registry, public={},
                         private=private[client_id], resumes=resumes, run=run)
    return client, ledger


def _has_helpers(cfg: RunConfig) -> bool:
    """Whether the configured back-end brings parties besides clients and server."""
    return get_backend(cfg.aggregation.backend).has_helpers


Traffic = dict[str, dict[str, Any]]


def run_round(fed: Federation, rnd: int, progress: Progress,
              drop: Callable[[str, str], bool] = lambda client, stage: False,
              transport: Transport | None = None) -> Traffic:
    """One round of ``fed``; frames travel through ``transport`` (default: method calls in
    this process, where ``drop(client, stage)`` simulates a client going silent)."""
    net = transport or InProcess(fed.endpoints, drop=drop,
                                 first_stage=lambda: fed.server.collector.stage,
                                 progress=lambda text: progress(f"round {rnd}: {text}"))
    return serve_round(fed.server, tuple(fed.clients), rnd, net, progress)


def serve_round(server: Server, cohort: tuple[str, ...], rnd: int, net: Transport,
                progress: Progress) -> Traffic:
    """The server's side of one round with ``cohort``, every frame through ``net``; the only
    party state it touches is the server's. Returns bytes up/down per party (total and per
    stage), measured from the serialised messages."""
    traffic: Traffic = {cid: {"up": 0, "down": 0, "stages": {}} for cid in cohort}

    def count(cid: str, stage: str, direction: str, n: int) -> None:
        # helper parties (the key holder) are counted too, under their own id
        traffic.setdefault(cid, {"up": 0, "down": 0, "stages": {}})
        traffic[cid][direction] += n
        st = traffic[cid]["stages"].setdefault(stage, {"up": 0, "down": 0})
        st[direction] += n

    def deliver(kind: str, stage: str, frames: dict[str, bytes]) -> dict[str, bytes]:
        """Sends ``frames``, counts the bytes, tells every party that gave no answer that its
        round is over, and returns the reply frames."""
        for cid, frame in frames.items():
            count(cid, stage, "down", len(frame))
        answers = net.ask(kind, stage, frames)
        gone = {c: a.reason for c, a in answers.items() if isinstance(a, Gone)}
        gone.update({c: "gave no answer" for c in frames if c not in answers})
        tell_gone(gone)
        out.update(gone)
        replies = {c: a for c, a in answers.items() if isinstance(a, bytes)}
        answered = {"consensus": "nomination"}.get(kind, kind)  # what a reply to it is
        for cid, reply in replies.items() if kind != "spec" else ():
            count(cid, answered, "up", len(reply))  # spec answers: counted by the exchange
        return replies

    out: dict[str, str] = {}  # parties out of this round, and why

    def tell_gone(gone: dict[str, str]) -> None:
        clients = {c: f"aborted: {r}".encode() for c, r in gone.items() if c in cohort}
        if clients:
            net.ask("abort", "abort", clients)
        for helper, reason in gone.items():  # a helper party failed: every client hears why
            if helper not in cohort:
                net.ask("note", "note", {c: f"{helper}: {reason}".encode() for c in cohort})

    spec = server.open_round(rnd, cohort)                                     # 1. announce
    first = deliver("spec", "spec", {cid: spec for cid in cohort})            # 2–6. clients
    progress(f"round {rnd}: secure aggregation ({server.backend.name})")
    gone = exchange(server.collector,                                         # 6. aggregate
                    lambda stage, reqs: net.ask("aggregate", stage, reqs), first,
                    traffic=count)
    tell_gone(gone)
    out.update(gone)
    progress(f"round {rnd}: server forms the consensus")
    broadcast = server.close_uploads()                                        # 7. consensus
    if broadcast is None:
        net.ask("abort", "abort", {c: f"round aborted by the server: "
                                      f"{server.abort_reason}".encode() for c in cohort})
        return _with_wire(traffic, net, out)
    live = [c for c in cohort if c not in out]
    nominations = deliver("consensus", "consensus", {c: broadcast for c in live})  # 8–9.
    if server.cfg.consensus.selection == "shared":
        labels = server.choose_labels(nominations)
        deliver("labels", "labels", {c: labels for c in nominations})
    server.end_round()
    return _with_wire(traffic, net, out)


def _with_wire(traffic: Traffic, net: Transport, out: dict[str, str]) -> Traffic:
    """Adds why each party left the round, and what the transport measured on its wire
    (Flower's messages), where it measures."""
    for party, reason in out.items():
        traffic.setdefault(party, {"up": 0, "down": 0, "stages": {}})["gone"] = reason
    for party, counts in net.measured().items():
        traffic.setdefault(party, {"up": 0, "down": 0, "stages": {}})["wire"] = counts
    return traffic


def metrics_row(fed: Federation, client: Client, rnd: int, traffic: dict[str, Any],
                scores: dict[str, float], eval_seconds: float) -> dict[str, Any]:
    """One client's row of metrics.jsonl: what the server saw of it, and what it measured."""
    return {**server_fields(fed.server, fed.cfg, client.id, rnd, traffic),
            **client_fields(client, fed.ledger, rnd, scores, eval_seconds,
                            gone=traffic.get("gone"))}


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def server_fields(server: Server, cfg: RunConfig, cid: str, rnd: int,
                  traffic: dict[str, Any]) -> dict[str, Any]:
    """What the server knows of client ``cid`` in round ``rnd``: bytes, the aggregate, who
    was counted, and why the client left the round if it did."""
    cons = server.consensus if rnd > 0 else None
    result = server.result if rnd > 0 else None
    return _finite({
        "round": rnd, "client": cid,
        "bytes_up": traffic["up"], "bytes_down": traffic["down"],
        "bytes_by_stage": traffic.get("stages", {}),
        # the same round as the transport carried it (Flower messages, envelopes included);
        # None in process, where nothing travels
        "wire_bytes_up": traffic["wire"]["up"] if "wire" in traffic else None,
        "wire_bytes_down": traffic["wire"]["down"] if "wire" in traffic else None,
        "backend": cfg.aggregation.backend,
        "round_seconds": traffic.get("round_seconds"),
        "mean_agreement": float(cons.agreement.mean()) if cons is not None else None,
        "agreement": [float(a) for a in cons.agreement] if cons is not None else None,
        "consensus_weight": [float(w) for w in cons.weight]
        if cons is not None and cons.weight is not None else None,
        "consensus_noise_std": cons.noise_std if cons is not None else None,
        "contributors": len(result.contributors) if result else 0,
        "upload_rejected": result.rejected.get(cid) if result else None,
        "counted": cid in result.contributors if result else False,
        "dropped": list(result.dropped) if result else [],
        "round_aborted": server.abort_reason if rnd > 0 else None,
        # what the server's side of the back-end recorded (ckks: context digest, bytes to and
        # from the key holder); JSON values only
        "aggregate_detail": json.loads(json.dumps(dict(result.detail), default=str))
        if result else {},
        "left_round": traffic.get("gone"),
    })


def client_fields(client: Client, ledger: Ledger, rnd: int, scores: dict[str, float],
                  eval_seconds: float, *, gone: str | None = None) -> dict[str, Any]:
    """What client ``client`` measured in round ``rnd`` (its own log, scores and ledger)."""
    cfg, log = client.cfg, client.log
    if rnd > 0 and log.round != rnd:  # the client never saw this round's spec
        why = gone or "its spec never reached it"
        log = RoundLog(rnd, status=[f"took no part in this round: {why}"])
    rd, cd = cfg.privacy.record.delta, cfg.privacy.client.delta
    row: dict[str, Any] = {
        "round": rnd, "client": client.id, "model": client.ccfg.model.name,
        "architecture": client.architecture, "lora_parameters": client.lora_parameters,
        "seconds": sum(log.seconds.values()) if rnd > 0 else 0.0,
        "phase_seconds": {k: round(v, 3) for k, v in log.seconds.items()} if rnd > 0 else {},
        "eval_seconds": eval_seconds,
        "train_loss": log.dp_train.mean_loss if rnd > 0 and log.dp_train else None,
        "dp_steps": log.dp_train.steps if rnd > 0 and log.dp_train else 0,
        "empty_batches": log.dp_train.empty_batches if rnd > 0 and log.dp_train else 0,
        "pseudo_label_loss": log.pseudo_train.mean_loss if rnd > 0 and log.pseudo_train
        else None,
        "pseudo_labels_next_round": log.labels if rnd > 0 else 0,
        "pseudo_labels_refused": log.labels_refused if rnd > 0 else 0,
        "prompts_routed": log.routed if rnd > 0 else 0,
        "final_train_loss": log.final_train.mean_loss if rnd > 0 and log.final_train
        else None,
        "confidence": log.confidence if rnd > 0 else None,
        "mean_confidence": float(np.mean(log.confidence)) if rnd > 0 and log.confidence
        else None,
        "clip_factor": log.clip_factor if rnd > 0 else None,
        "aggregation": log.aggregation if rnd > 0 else {},
        "epsilon_record": ledger.spent(client.id, "record", delta=rd),
        "epsilon_client": ledger.spent(client.id, "client", delta=cd),
        "status": log.status if rnd > 0 else ["before training"],
    }
    row.update(scores)
    return _finite(row)


def evaluate_all(fed: Federation, rnd: int, traffic: Traffic,
                 progress: Progress) -> list[dict[str, Any]]:
    rows = []
    ev = fed.cfg.evaluation
    for cid, client in fed.clients.items():
        progress(f"round {rnd}: evaluating {cid}")
        t0 = time.perf_counter()
        scores = client.evaluate(max_new_tokens=ev.max_new_tokens,
                                 seed=derive_seed(fed.cfg.seed, "eval", cid, rnd)
                                 ) if ev.enabled else {}
        rows.append(metrics_row(fed, client, rnd, traffic[cid], scores,
                                time.perf_counter() - t0))
    return rows


def preflight_data(cfg: RunConfig) -> None:
    """Reads every data file the run names (prompts, each client's training and evaluation
    files), raising DataError for the first bad one, before anything is created."""
    load_prompts(cfg.prompts)
    for cc in cfg.clients:
        load_examples(cc.train)
        if cc.eval is not None:
            load_eval(cc.eval)


def _progress_file(out: Path) -> Path:
    return out / "state" / "run.json"


def in_use(out: Path) -> bool:
    """Whether ``out`` already holds (part of) a run."""
    return any((out / n).exists() for n in ("ledger.jsonl", "ledger.jsonl.head",
                                            "ledger.jsonl.key", "state", "metrics.jsonl"))


def _metrics_up_to(out: Path, completed: int) -> None:
    """Keeps the metrics of completed rounds; rows of the interrupted round (or a torn last
    line) move to ``metrics.discarded.jsonl`` rather than vanish."""
    path = out / "metrics.jsonl"
    if not path.exists():
        path.write_text("", encoding="utf-8")
        return
    keep: list[str] = []
    drop: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = bounded_json.loads(line, max_depth=32, allow_nonfinite=True)
            ok = row["round"] <= completed
        except (ValueError, KeyError, TypeError):
            ok = False
        (keep if ok else drop).append(line)
    if drop:
        with (out / "metrics.discarded.jsonl").open("a", encoding="utf-8") as fh:
            fh.write("".join(x + "\n" for x in drop))
    write_text_atomic(path, "".join(x + "\n" for x in keep))


@dataclass
class Session:
    """A run folder opened for rounds: the federation, and how far the run has come."""

    fed: Federation
    bars: ProgressBars
    completed: int  # last completed round (-1: not even round 0)
    resumes: int
    started: float

    @property
    def parties(self) -> tuple[str, ...]:
        return tuple(self.fed.endpoints)

    def rounds(self, transport: Transport | None = None) -> None:
        """Runs every round not yet completed, frames travelling through ``transport``
        (default: method calls in this process), and writes metrics and checkpoints."""
        fed, bars, out = self.fed, self.bars, self.fed.out
        metrics = out / "metrics.jsonl"

        def emit(rows: list[dict[str, Any]]) -> None:
            with metrics.open("a", encoding="utf-8") as fh:
                for r in rows:
                    fh.write(json.dumps(r) + "\n")
                fh.flush()
                os.fsync(fh.fileno())

        def done(rnd: int) -> None:
            for client in fed.clients.values():
                client.checkpoint(rnd)
            write_json(_progress_file(out), {"completed": rnd, "resumes": self.resumes})
            self.completed = rnd

        zero: Traffic = {cid: {"up": 0, "down": 0, "stages": {}} for cid in fed.clients}
        if self.completed < 0:
            bars.start("round 0 (before training)", len(fed.clients))
            if fed.cfg.evaluation.enabled and fed.cfg.evaluation.before_training:
                emit(evaluate_all(fed, 0, zero, bars))
            done(0)
        for rnd in range(max(self.completed, 0) + 1, fed.cfg.rounds + 1):
            bars.start(f"round {rnd}/{fed.cfg.rounds}", bars.phases)
            t0 = time.perf_counter()
            traffic = run_round(fed, rnd, bars, transport=transport)
            for counts in traffic.values():  # the round's wall time, evaluation not included
                counts["round_seconds"] = time.perf_counter() - t0
            emit(evaluate_all(fed, rnd, traffic, bars) if fed.cfg.evaluation.enabled else [
                metrics_row(fed, c, rnd, traffic[cid], {}, 0.0)
                for cid, c in fed.clients.items()])
            done(rnd)

    def finish(self) -> Path:
        """Closes the progress bars and writes the report."""
        from privsem.reports.markdown import write_report

        self.bars.close()
        write_report(self.fed.out, self.fed.cfg, self.fed.plan,
                     seconds=time.time() - self.started)
        return self.fed.out


def open_run(cfg: RunConfig, out: str | Path, *, show_progress: bool = True,
             resume: bool = False) -> Session:
    """Checks the claims and the folder, sets the federation up and restores it on resume.

    A folder that already holds a run is never overwritten: with ``resume`` the run goes on
    after its last completed round, each client from its own checkpoint (T28); without, it is
    refused."""
    from privsem.threats import refuse_false_claims

    refuse_false_claims(cfg)  # fail closed, before any file or data is touched
    out = Path(out)
    started = time.time()
    progress_file = _progress_file(out)
    if resume:
        if not progress_file.exists():
            raise RunFolderInUse(f"{out}: nothing to resume (no {progress_file}); start a run "
                                 "with `privsem run --out` a new folder")
        state = read_json(progress_file)
        if not (isinstance(state, dict) and type(state.get("completed")) is int
                and type(state.get("resumes")) is int and -1 <= state["completed"] <= cfg.rounds
                and 0 <= state["resumes"] < 10 ** 6):
            raise StateCorrupted(f"{progress_file}: not a run's progress record ({{'completed': "
                                 f"round, 'resumes': count}}, got {str(state)[:120]}); restore "
                                 "it from a backup, or start a new run folder (the ledger stays "
                                 "as it is)")
        completed, resumes = state["completed"], state["resumes"] + 1
    elif in_use(out):
        raise RunFolderInUse(f"{out}: already holds a run (its ledger and metrics are kept); "
                             f"continue it with `privsem run --resume {out}`, or choose another "
                             "--out")
    else:
        completed, resumes = -1, 0
        preflight_data(cfg)  # a bad data file is refused before the run folder is made
    bars = ProgressBars(cfg, enabled=show_progress)
    fed = setup(cfg, out, bars, resumes=resumes)
    _metrics_up_to(out, completed)
    if resume:
        for client in fed.clients.values():
            client.restore(max(completed, 0))
    write_json(progress_file, {"completed": completed, "resumes": resumes})
    return Session(fed, bars, completed, resumes, started)


def run(cfg: RunConfig, out: str | Path, *, show_progress: bool = True,
        resume: bool = False) -> Path:
    """Runs the federation in this process and writes the run folder. Returns its path.
    See :func:`open_run` for how an existing folder is treated."""
    session = open_run(cfg, out, show_progress=show_progress, resume=resume)
    session.rounds()
    return session.finish()
