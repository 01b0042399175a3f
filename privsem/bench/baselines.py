"""The methods the benchmark compares, run in one framework on the same clients, data and seeds.

Every method builds its clients with the in-process runtime's ``setup`` (same models, LoRA
initialisation, private data, privacy plan and ledger) and trains with the same DP-SGD code at the
same record-level target; only what happens between the rounds differs:

- ``zero_shot``: the base models, untrained (the floor). Evaluated once, before training.
- ``local``: each client runs its DP-SGD rounds alone; nothing is exchanged.
- ``fedavg``: FedAvg over LoRA adapters (FedIT/OpenFedLLM). After each round's DP-SGD every client
  uploads its adapter (safetensors, float32), the server checks and averages it parameter by
  parameter with equal weights (A and B separately, as FedIT does: the average of the products
  B·A is not the product of the averages), and every client continues from the average. Only
  for clients of one architecture. The adapters are post-processing of DP-SGD, so the record-level
  guarantee holds; nothing protects a client's contribution as a whole.
- ``centralised``: one model per architecture trained with DP-SGD on the pooled data of all
  clients (the upper bound: what sharing the raw data would give), evaluated on each client's
  questions. Its traffic is the raw training data, sent once.
- ``semantic``: privsem's round (``run_round``): DP-SGD, pseudo-label fine-tuning, candidates on
  the public prompts, the clipped embedding matrix under the configured aggregation back-end,
  consensus and pseudo-labels.

Each round is timed around the whole federation's work (wall clock and this process's CPU
time, all threads); evaluation is timed apart and not included.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from privsem.config import ClientConfig, RunConfig
from privsem.data import load_eval, load_examples
from privsem.errors import ProtocolAbort
from privsem.privacy.plan import make_plan
from privsem.protocol.client import Client, _limit_per_scope, question_means
from privsem.protocol.state import ClientStore
from privsem.rng import derive_seed, make_randomness
from privsem.runtime.inprocess import Federation, run_round, setup

METHODS: dict[str, str] = {
    "zero_shot": "base models, no fine-tuning (the floor)",
    "local": "local-only DP-SGD fine-tuning, nothing exchanged",
    "fedavg": "FedAvg over LoRA adapters (FedIT): DP-SGD locally, the server averages adapters",
    "centralised": "DP-SGD on the pooled data of all clients (the upper bound)",
    "semantic": "privsem semantic consensus",
}

Progress = Callable[[str], None]


@dataclass
class MethodRun:
    """What one method measured: per client scores after its last round, and per round the
    traffic and time."""

    method: str
    scores: dict[str, dict[str, float]]  # client -> own_/other_ scores (means)
    rounds: list[dict[str, Any]] = field(default_factory=list)  # per round: wall_s, cpu_s, ...
    epsilon: dict[str, dict[str, float | None]] = field(default_factory=dict)  # client -> unit
    note: str = ""
    questions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # client -> rows


def _quiet(_: str) -> None:
    pass


def _evaluate(cfg: RunConfig, client: Client, cid: str, rnd: int, *,
              route: bool = False) -> list[dict[str, Any]]:
    """Per-question rows (privsem.protocol.client.Client.evaluate_questions). ``route``: only
    semantic consensus answers through ``consensus.route``; a baseline holds one adapter."""
    ev = cfg.evaluation
    return client.evaluate_questions(max_new_tokens=ev.max_new_tokens,
                                     seed=derive_seed(cfg.seed, "eval", cid, rnd), route=route)


def _scored(method: str, rows: dict[str, list[dict[str, Any]]], **kw: Any) -> MethodRun:
    return MethodRun(method, {c: question_means(r) for c, r in rows.items()}, questions=rows,
                     **kw)


def _epsilons(fed: Federation, cid: str) -> dict[str, float | None]:
    p = fed.cfg.privacy
    out: dict[str, float | None] = {}
    for unit, target in (("record", p.record), ("client", p.client)):
        out[unit] = fed.ledger.spent(cid, unit, delta=target.delta) if target.enabled else None
    return out


class _Clock:
    """Wall clock and process CPU time (all threads) of a block."""

    def __enter__(self) -> Self:
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.w
        self.cpu = time.process_time() - self.c


def run_zero_shot(cfg: RunConfig, out: Path, progress: Progress = _quiet) -> MethodRun:
    fed = setup(cfg, out, progress)
    scores = {}
    for cid, client in fed.clients.items():
        progress(f"zero-shot: evaluating {cid}")
        scores[cid] = _evaluate(cfg, client, cid, 0)
    return _scored("zero_shot", scores, epsilon={c: _epsilons(fed, c) for c in fed.clients})


def run_local(cfg: RunConfig, out: Path, progress: Progress = _quiet) -> MethodRun:
    return _run_local_rounds("local", cfg, out, progress, exchange=None)


def run_fedavg(cfg: RunConfig, out: Path, progress: Progress = _quiet) -> MethodRun:
    archs = {c.model.name for c in cfg.clients}
    if len(archs) != 1:
        raise ValueError(f"fedavg: the clients run {sorted(archs)}; parameter averaging needs one "
                         "architecture (that is the limitation semantic consensus removes)")
    return _run_local_rounds("fedavg", cfg, out, progress, exchange=fedavg_exchange)


def _run_local_rounds(method: str, cfg: RunConfig, out: Path, progress: Progress,
                      exchange: Callable[[dict[str, Client]], dict[str, dict[str, int]]] | None
                      ) -> MethodRun:
    fed = setup(cfg, out, progress)
    rounds = []
    for rnd in range(1, cfg.rounds + 1):
        with _Clock() as clk:
            client_s = {}
            for cid, client in fed.clients.items():
                progress(f"{method} round {rnd}: {cid} trains")
                log = client.train_locally(rnd)
                client_s[cid] = sum(log.seconds.values())
            traffic = exchange(fed.clients) if exchange else {
                cid: {"up": 0, "down": 0} for cid in fed.clients}
        rounds.append({"round": rnd, "wall_s": clk.wall, "cpu_s": clk.cpu,
                       "client_s": client_s, "traffic": traffic})
    scores = {}
    for cid, client in fed.clients.items():
        progress(f"{method}: evaluating {cid}")
        scores[cid] = _evaluate(cfg, client, cid, cfg.rounds)
    return _scored(method, scores, rounds=rounds,
                   epsilon={c: _epsilons(fed, c) for c in fed.clients})


# ---------------------------------------------------------------------------------------------
# FedAvg over LoRA


def adapter_blob(client: Client) -> bytes:
    """The client's LoRA adapter as it would travel: its trainable tensors, float32,
    safetensors (no pickle)."""
    return save_tensors({n: p.detach().to("cpu", torch.float32).contiguous()
                         for n, p in client.model.named_parameters() if p.requires_grad})


def average_adapters(blobs: dict[str, bytes], reference: dict[str, torch.Size]) -> bytes:
    """The server's step: parses each upload (safetensors only), refuses any whose tensors do
    not match the architecture's adapter (names and shapes) or are not finite, and returns the
    equal-weight mean of every tensor."""
    if not blobs:
        raise ValueError("average_adapters: no uploads to average")
    total: dict[str, torch.Tensor] = {}
    for cid, blob in blobs.items():
        try:
            tensors = load_tensors(blob)
        except (SafetensorError, ValueError, OSError) as e:
            raise ProtocolAbort(f"fedavg: {cid}'s upload is not a safetensors file ({e})"
                                ) from None
        if {n: t.shape for n, t in tensors.items()} != reference:
            raise ProtocolAbort(f"fedavg: {cid}'s adapter does not match the architecture's "
                                "LoRA tensors (names or shapes differ)")
        for n, t in tensors.items():
            if not torch.isfinite(t).all():
                raise ProtocolAbort(f"fedavg: {cid}'s tensor {n} is not finite")
            total[n] = total[n] + t.double() if n in total else t.double()
    return save_tensors({n: (t / len(blobs)).float().contiguous() for n, t in total.items()})


def fedavg_exchange(clients: dict[str, Client]) -> dict[str, dict[str, int]]:
    """One FedAvg exchange: uploads, server average, broadcast; returns bytes per client."""
    blobs = {cid: adapter_blob(c) for cid, c in clients.items()}
    first = next(iter(clients.values()))
    reference = {n: p.shape for n, p in first.model.named_parameters() if p.requires_grad}
    avg = average_adapters(blobs, reference)
    tensors = load_tensors(avg)
    for c in clients.values():
        with torch.no_grad():
            for n, p in c.model.named_parameters():
                if p.requires_grad:
                    p.copy_(tensors[n].to(p.dtype))
    return {cid: {"up": len(blobs[cid]), "down": len(avg)} for cid in clients}


# ---------------------------------------------------------------------------------------------
# Centralised: the pooled data


def run_centralised(cfg: RunConfig, out: Path, progress: Progress = _quiet) -> MethodRun:
    """One DP-SGD model per architecture on all clients' pooled data, at the same record-level
    target and rounds; each client is scored by the pooled model of its own architecture."""
    fed = setup(cfg, out, progress)  # the same encoder, ledger and prompts as the others
    private = {c.id: load_examples(c.train) for c in cfg.clients}
    pooled = [ex for c in cfg.clients for ex in private[c.id]]
    raw_bytes = {c.id: Path(c.train).stat().st_size for c in cfg.clients}
    by_model: dict[str, ClientConfig] = {}
    for c in cfg.clients:
        by_model.setdefault(c.model.name, c)
    ids = {name: f"pooled-{k}" for k, name in enumerate(by_model)}
    plan = make_plan(cfg, {pid: len(pooled) for pid in ids.values()}, len(fed.server.prompts))
    models = {}
    for name, ccfg in by_model.items():
        pid = ids[name]
        progress(f"centralised: loading {pid} ({name})")
        models[name] = Client(
            cfg, replace(ccfg, id=pid, eval=None), prompts=fed.server.prompts,
            prompt_hash=fed.server.prompt_hash, embedder=next(iter(fed.clients.values())).embedder,
            ledger=fed.ledger, plan=plan, backend=fed.server.backend,
            randomness=make_randomness(cfg.privacy.randomness, cfg.seed, "client", pid),
            private_data=pooled, store=ClientStore(out / "state" / pid),
            run=fed.server.run)
    rounds = []
    for rnd in range(1, cfg.rounds + 1):
        with _Clock() as clk:
            client_s = {}
            for name, m in models.items():
                progress(f"centralised round {rnd}: {m.id} trains on {len(pooled)} examples")
                client_s[m.id] = sum(m.train_locally(rnd).seconds.values())
        traffic = {cid: {"up": raw_bytes[cid] if rnd == 1 else 0, "down": 0}
                   for cid in raw_bytes}
        rounds.append({"round": rnd, "wall_s": clk.wall, "cpu_s": clk.cpu,
                       "client_s": client_s, "traffic": traffic})
    scores = {}
    for c in cfg.clients:
        m = models[c.model.name]
        items = load_eval(c.eval) if c.eval else []
        if cfg.evaluation.max_questions is not None:
            items = _limit_per_scope(items, cfg.evaluation.max_questions)
        m.eval_items = items
        progress(f"centralised: evaluating {c.id} with {m.id}")
        scores[c.id] = _evaluate(cfg, m, c.id, cfg.rounds)
    eps = {c.id: _epsilons(fed, ids[c.model.name]) for c in cfg.clients}
    return _scored("centralised", scores, rounds=rounds, epsilon=eps,
                   note=f"{len(by_model)} pooled model(s) on {len(pooled)} examples")


# ---------------------------------------------------------------------------------------------
# Semantic consensus


def run_semantic(cfg: RunConfig, out: Path, progress: Progress = _quiet) -> MethodRun:
    fed = setup(cfg, out, progress)
    rounds = []
    for rnd in range(1, cfg.rounds + 1):
        with _Clock() as clk:
            traffic = run_round(fed, rnd, progress)
        result = fed.server.result
        rounds.append({
            "round": rnd, "wall_s": clk.wall, "cpu_s": clk.cpu,
            "client_s": {cid: sum(c.log.seconds.values()) for cid, c in fed.clients.items()},
            "phase_s": {cid: dict(c.log.seconds) for cid, c in fed.clients.items()},
            "traffic": {cid: {"up": t["up"], "down": t["down"]} for cid, t in traffic.items()
                        if cid in fed.clients},
            "contributors": len(result.contributors) if result else 0,
            "aborted": fed.server.abort_reason,
            "labels": {cid: c.log.labels for cid, c in fed.clients.items()},
            "labels_refused": {cid: c.log.labels_refused for cid, c in fed.clients.items()},
            "prompts_routed": {cid: c.log.routed for cid, c in fed.clients.items()},
            "confidence": {cid: c.log.confidence for cid, c in fed.clients.items()},
            "selection": _selection_diagnostics(fed),
            "mean_agreement": float(np.mean(fed.server.consensus.agreement))
            if fed.server.consensus is not None else None,
        })
    scores = {}
    for cid, client in fed.clients.items():
        progress(f"semantic: evaluating {cid}")
        scores[cid] = _evaluate(cfg, client, cid, cfg.rounds, route=True)
    return _scored("semantic", scores, rounds=rounds,
                   epsilon={c: _epsilons(fed, c) for c in fed.clients})


def _selection_diagnostics(fed: Federation) -> dict[str, Any]:
    """Per prompt, whose candidate the round's pseudo-label is (the bench knows every client's
    candidates; the protocol does not): the client ids whose candidates contain the label
    text, or [] where no label was given. With the weighted consensus, the mean confidence."""
    out: dict[str, Any] = {"prompts": [p.id for p in fed.server.prompts], "label_from": []}
    labels = {cid: {ex.messages[0][1]: ex.response for ex in c.pseudo_labels}
              for cid, c in fed.clients.items()}
    for j, p in enumerate(fed.server.prompts):
        texts = {lab.get(p.text) for lab in labels.values()} - {None}
        owners = sorted(cid for cid, c in fed.clients.items()
                        if c._cand_texts and any(t in c._cand_texts[j] for t in texts))
        out["label_from"].append(owners)
    cons = fed.server.consensus
    out["consensus_weight"] = [float(w) for w in cons.weight] if cons is not None and (
        cons.weight is not None) else None
    return out


RUNNERS: dict[str, Callable[[RunConfig, Path, Progress], MethodRun]] = {
    "zero_shot": run_zero_shot, "local": run_local, "fedavg": run_fedavg,
    "centralised": run_centralised, "semantic": run_semantic}


def run_method(method: str, cfg: RunConfig, out: Path, progress: Progress = _quiet
               ) -> MethodRun:
    if method not in RUNNERS:
        raise ValueError(f"method {method!r} is not known; use one of {', '.join(RUNNERS)}")
    return RUNNERS[method](cfg, out, progress)


def perplexity(mean_nll: float | None) -> float | None:
    """exp of the mean per-example reference NLL (nats per token)."""
    return None if mean_nll is None or not math.isfinite(mean_nll) else math.exp(mean_nll)

