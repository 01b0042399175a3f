"""A federation client: private data, its own model, its own ledger entries. Transport-free.

Each handler takes a frame (bytes) and returns the frame to send, if any. The client trusts its
own configuration for every privacy parameter: a round spec whose session id, prompt set or
parameters disagree with what the client expects aborts the round on this client (T32).

Per round (DESIGN.md §1): ledger check and charge → training (``mixed`` schedule: private data
under DP-SGD together with the previous round's pseudo-labels; ``sequential``: DP-SGD, then the
labels) → generate k candidates per public prompt → per-prompt confidence → embed, validate, joint
clip, noise → ledger charge → upload. Then, on the consensus: choose pseudo-labels (local) or
nominate (shared), keep the labels the client accepts, and after the last round's labels (mixed
schedule) one more training phase, so that every round's labels are trained on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from dp_accounting import dp_event as ev

from privsem.aggregation.base import AggregationBackend, ClientAggregator, ClientContext
from privsem.aggregation.masked.crypto import Identity
from privsem.confidence import (
    accepts,
    gain_confidence,
    knows,
    likelihood_confidence,
    proximity_confidence,
    self_agreement_confidence,
    upload_dim,
    validate_confidence,
    weighted_rows,
)
from privsem.config import ClientConfig, RunConfig, resolved
from privsem.consensus import select_nearest
from privsem.data import EvalItem, Example, PublicPrompt, load_eval, load_examples
from privsem.errors import (
    BudgetExceeded,
    EmbeddingRejected,
    LedgerCorrupted,
    ProtocolAbort,
    StateCorrupted,
)
from privsem.models.embedder import Embedder
from privsem.models.generation import generate
from privsem.models.loading import load_model
from privsem.models.prompting import resolve_format
from privsem.models.scores import rouge_l
from privsem.models.training import (
    PublicMix,
    TrainStats,
    add_lora,
    encode_examples,
    mean_reference_loss,
    train_dp_sgd,
    train_mixed,
    train_plain,
)
from privsem.privacy.embedding import joint_clip, validate_embeddings
from privsem.privacy.ledger import Ledger, LedgerEntry
from privsem.privacy.plan import ClientPlan, PrivacyPlan
from privsem.protocol.messages import (
    ConsensusBroadcast,
    Nomination,
    PseudoLabels,
    RoundSpec,
    Stage,
    StageMachine,
    decode,
    encode,
)
from privsem.protocol.session import check_run_nonce, expected_params, session_id
from privsem.protocol.state import ClientStore, params_digest
from privsem.rng import Randomness


@dataclass
class RoundLog:
    """What one client measured in one round (goes to metrics.jsonl)."""

    round: int
    status: list[str] = field(default_factory=list)
    dp_train: TrainStats | None = None
    pseudo_train: TrainStats | None = None
    final_train: TrainStats | None = None  # mixed schedule, last round: the phase on its labels
    clip_factor: float = math.nan
    aggregation: dict[str, Any] = field(default_factory=dict)
    labels: int = 0
    labels_refused: int = 0  # pseudo-labels the client did not accept (it knew better)
    routed: int = 0  # public prompts answered by the phase-1 adapter (consensus.route)
    confidence: list[float] | None = None  # per prompt, as released (before clip and noise)
    seconds: dict[str, float] = field(default_factory=dict)


class Client:
    def __init__(self, cfg: RunConfig, ccfg: ClientConfig, *, prompts: list[PublicPrompt],
                 prompt_hash: str, embedder: Embedder, ledger: Ledger, plan: PrivacyPlan,
                 backend: AggregationBackend, randomness: Randomness,
                 identity: Identity | None = None, registry: Mapping[str, bytes] | None = None,
                 public: Mapping[str, bytes] | None = None,
                 private_data: list[Example] | None = None,
                 store: ClientStore | None = None, run: str) -> None:
        self.run = check_run_nonce(run, f"client {ccfg.id}")
        self.cfg, self.ccfg, self.id = cfg, ccfg, ccfg.id
        self.prompts, self.prompt_hash = prompts, prompt_hash
        self.embedder, self.ledger, self.plan = embedder, ledger, plan
        self.backend, self.rng = backend, randomness
        self.identity, self.registry = identity, dict(registry or {})
        self.public = dict(public or {})  # the back-end's run-level public material
        self._agg: ClientAggregator | None = None
        self.store = store  # durable state for crash and resume (None: in memory only)
        self.stage = StageMachine(f"client {self.id}")
        loaded = load_model(ccfg.model.name, seed=randomness.seed_for("init", self.id) % 2**31)
        self.source, self.architecture = loaded.source, loaded.architecture
        self.tokenizer = loaded.tokenizer
        lora = ccfg.model.lora
        self.model = add_lora(loaded.model, rank=lora.rank, alpha=lora.alpha,
                              targets=lora.targets, dropout=lora.dropout,
                              seed=randomness.seed_for("lora", self.id))
        self.fmt = resolve_format(self.tokenizer, ccfg.model.prompt_format)
        # What parameter averaging would ship each round: the LoRA adapter (for the report).
        self.lora_parameters = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self._private = private_data if private_data is not None else load_examples(ccfg.train)
        self._private_t = encode_examples(self.tokenizer, self.fmt, self._private,
                                          ccfg.model.max_length)
        self.eval_items: list[EvalItem] = load_eval(ccfg.eval) if ccfg.eval else []
        if cfg.evaluation.max_questions is not None:
            self.eval_items = _limit_per_scope(self.eval_items, cfg.evaluation.max_questions)
        self.pseudo_labels: list[Example] = []
        self._spec: RoundSpec | None = None
        self._last_round = 0
        self._cand_texts: list[list[str]] = []
        self._cand_emb: np.ndarray | None = None  # (P, k, d)
        self._cand_nll: np.ndarray | None = None  # (P, k) mean token NLL under the own model
        self._confidence: np.ndarray | None = None  # (P,) in [0, 1]
        self._federation_weight: np.ndarray | None = None  # (P,) the consensus' Σw (noisy)
        self._contributors = 0
        # the adapter after training phase 1 (private data only): what the client's own data
        # taught it, the reference of the ``gain`` confidence once labels are mixed in
        self._private_adapter: dict[str, torch.Tensor] | None = None
        self._private_prompt_emb: np.ndarray | None = None  # (N, d), ``proximity`` only
        self.log = RoundLog(0)

    # ------------------------------------------------------------------ round handlers
    def on_round_spec(self, frame: bytes) -> bytes | None:
        """Steps 1–6. Returns the aggregation back-end's first message, or None if the client
        does not contribute."""
        spec = decode(frame, RoundSpec)
        self._check_spec(spec)
        self.stage.advance(Stage.SPEC)
        self._last_round = spec.round
        self._spec, self.log, self._agg = spec, RoundLog(spec.round), None
        self._confidence = self._federation_weight = None
        plan = self.plan.clients[self.id]
        mixed = self.cfg.training.schedule == "mixed"
        self._timed("train_private", lambda: self._train_private(
            spec.round, plan, labels=self.pseudo_labels if mixed else None))
        if not mixed:
            self._timed("train_pseudo", self._train_on_pseudo_labels)
        self._timed("generate", self._generate_candidates)
        self._timed("confidence", self._compute_confidence)
        upload = self._timed("embed_release", lambda: self._release(spec))
        self.stage.advance(Stage.UPLOAD)
        return upload

    def on_aggregation(self, frame: bytes) -> bytes | None:
        """Step 6, later stages: answers the aggregation back-end's request (masked: roster,
        shares, survivor list, unmasking). Raises ProtocolAbort when an invariant fails."""
        self.stage.expect(Stage.UPLOAD)
        if self._agg is None:
            raise ProtocolAbort(f"client {self.id}: aggregation request without an upload")
        t0 = time.perf_counter()
        try:
            return self._agg.respond(frame)
        finally:
            self.log.seconds["aggregate"] = self.log.seconds.get("aggregate", 0.0) + (
                time.perf_counter() - t0)

    def on_consensus(self, frame: bytes) -> bytes | None:
        """Steps 8–9: pseudo-labels (local) or a nomination (shared)."""
        msg = decode(frame, ConsensusBroadcast)
        spec = self._require_spec(msg.session_id, msg.round)
        self.stage.advance(Stage.CONSENSUS)
        P = len(spec.prompt_ids)
        if msg.consensus.shape != (P, self.embedder.dim) or msg.agreement.shape != (P,) or (
                msg.weight.shape != (P,)):
            raise ProtocolAbort(f"client {self.id}: consensus has shape {msg.consensus.shape} "
                                f"(agreement {msg.agreement.shape}, weight {msg.weight.shape}); "
                                f"expected ({P}, {self.embedder.dim})")
        for name, arr in (("consensus", msg.consensus), ("agreement", msg.agreement),
                          ("weight", msg.weight)):
            if not np.all(np.isfinite(arr)):
                raise ProtocolAbort(f"client {self.id}: the consensus broadcast's {name} holds "
                                    f"{int(np.sum(~np.isfinite(arr)))} non-finite values; "
                                    "refusing it (no label is chosen from it)")
        self._record_noise_present(spec, msg)
        if self._cand_emb is None:
            raise ProtocolAbort(f"client {self.id}: consensus before candidates were generated")
        c = self.cfg.consensus
        choice = select_nearest(self._cand_emb, msg.consensus.astype(np.float64), msg.agreement,
                                threshold=c.agreement_threshold)
        # prompts on which the federation's mean confidence is too low get no label
        choice = [None if c.min_weight > 0 and msg.weight[j] < c.min_weight else ch
                  for j, ch in enumerate(choice)]
        if c.selection == "shared" and c.nominate == "likeliest":
            likeliest = np.argmin(self.own_nll(), axis=1)  # (P,)
            choice = [None if ch is None else int(likeliest[j]) for j, ch in enumerate(choice)]
        texts = [self._cand_texts[j][ch] if ch is not None else None
                 for j, ch in enumerate(choice)]
        # Σw per prompt: the broadcast mean times the number of contributors
        self._federation_weight = msg.weight.astype(np.float64) * len(msg.contributors)
        self._contributors = len(msg.contributors)
        if c.selection == "local":
            self._set_labels(texts)
            self.stage.advance(Stage.DONE)
            self._after_labels(spec)
            return None
        # Shared mode: texts leave the client. They are post-processing of the DP-SGD model
        # (record level); the ledger records the release before it happens.
        plan = self.plan.clients[self.id]
        event = ev.NoOpDpEvent() if plan.noise_multiplier > 0 else ev.NonPrivateDpEvent()
        self.ledger.charge(client=self.id, round=spec.round, unit="record",
                           mechanism="text_nomination", event=event,
                           delta=self.cfg.privacy.record.delta, budget=plan.record_budget,
                           detail={"texts": sum(t is not None for t in texts),
                                   "basis": "post-processing of the DP-SGD model"
                                   if plan.noise_multiplier > 0 else "server trusted with texts"})
        self.stage.advance(Stage.NOMINATION)
        return encode(Nomination(session_id=spec.session_id, round=spec.round, client=self.id,
                                 texts=tuple(texts)))

    def on_pseudo_labels(self, frame: bytes) -> None:
        msg = decode(frame, PseudoLabels)
        spec = self._require_spec(msg.session_id, msg.round)
        if len(msg.texts) != len(spec.prompt_ids):
            raise ProtocolAbort(f"client {self.id}: {len(msg.texts)} labels for "
                                f"{len(spec.prompt_ids)} prompts")
        self.stage.advance(Stage.LABELS)
        self._set_labels(list(msg.texts))
        self.stage.advance(Stage.DONE)
        self._after_labels(spec)

    def _after_labels(self, spec: RoundSpec) -> None:
        """Mixed schedule, after the last planned round's labels: the final training phase
        (private data with these labels), so the last round's labels are trained on too."""
        if self.cfg.training.schedule != "mixed" or spec.round != self.cfg.rounds:
            return
        plan = self.plan.clients[self.id]
        self._timed("train_final", lambda: self._train_private(
            spec.round, plan, labels=self.pseudo_labels, final=True))

    def abort_round(self) -> None:
        if self.stage.stage not in (Stage.DONE, Stage.ABORTED, Stage.IDLE):
            self.stage.advance(Stage.ABORTED)

    def train_locally(self, rnd: int) -> RoundLog:
        """A round of local training only, for the baselines (local-only, FedAvg, centralised):
        step 2 of a round (ledger charge, then DP-SGD on private data) and nothing else."""
        if rnd <= self._last_round:
            raise ProtocolAbort(f"client {self.id}: round {rnd} is not after round "
                                f"{self._last_round}")
        self._last_round, self.log = rnd, RoundLog(rnd)
        plan = self.plan.clients[self.id]
        self._timed("train_private", lambda: self._train_private(rnd, plan))
        return self.log

    # ------------------------------------------------------------------ steps
    def _check_spec(self, spec: RoundSpec) -> None:
        try:
            want = expected_params(self.cfg, self.plan, cohort_size=len(spec.cohort),
                                   dim=self.embedder.dim, public=self.public)
        except ValueError as e:
            raise ProtocolAbort(f"client {self.id}: cannot take part in a round of "
                                f"{len(spec.cohort)} clients ({e})") from None
        if spec.run != self.run:
            raise ProtocolAbort(f"client {self.id}: round {spec.round} is announced for another "
                                f"run (nonce {spec.run[:12]}…, this run's {self.run[:12]}…): a "
                                "frame of another run or of an earlier incarnation of this one; "
                                "refused")
        if self.id not in spec.cohort:
            raise ProtocolAbort(f"client {self.id}: not in the round's cohort")
        if spec.round <= self._last_round:
            raise ProtocolAbort(f"client {self.id}: round {spec.round} is not after round "
                                f"{self._last_round} (replayed or out of order)")
        if spec.prompt_set_hash != self.prompt_hash or list(spec.prompt_ids) != [
                p.id for p in self.prompts]:
            raise ProtocolAbort(f"client {self.id}: round {spec.round} announces a different "
                                "prompt set than the client holds")
        if spec.params != want:
            raise ProtocolAbort(f"client {self.id}: round parameters {spec.params} differ from "
                                f"the client's own {want}")
        width = upload_dim(self.embedder.dim, self.cfg.consensus.confidence)
        if spec.dim != width:
            raise ProtocolAbort(f"client {self.id}: the round's upload width {spec.dim} is not "
                                f"the client's {width} (encoder dim {self.embedder.dim}, "
                                f"confidence {self.cfg.consensus.confidence!r})")
        if spec.session_id != session_id(spec.round, spec.cohort, spec.prompt_set_hash,
                                          spec.params, run=spec.run):
            raise ProtocolAbort(f"client {self.id}: session id does not bind the round's "
                                "contents")

    def _require_spec(self, sid: str, rnd: int) -> RoundSpec:
        if self._spec is None or sid != self._spec.session_id or rnd != self._spec.round:
            raise ProtocolAbort(f"client {self.id}: message for another session or round")
        return self._spec

    def _train_private(self, rnd: int, plan: ClientPlan, *, labels: list[Example] | None = None,
                       final: bool = False) -> None:
        """Step 1–2: charge the ledger first, then DP-SGD (or, without record-level DP, plain
        training) on private data, with ``labels`` mixed in where given (mixed schedule).
        Refuses before any forward pass. ``final``: the mixed schedule's phase after the last
        round's labels, charged as mechanism ``dp_sgd_final`` of that round.

        After a crash (T28): a checkpointed result of this phase is loaded, not retrained; a
        charge without a checkpoint covers the retraining, since nothing the interrupted
        training produced ever left the client."""
        mechanism = "dp_sgd_final" if final else "dp_sgd"
        phase = rnd + 1 if final else rnd
        steps = plan.steps(phase) if self.cfg.training.schedule == "mixed" else (
            plan.steps_per_round)
        checkpoint = f"trained-{rnd}" + ("-final" if final else "")
        if len(self._private_t) != plan.examples:  # q = B/N must be the N trained on (T19)
            raise ProtocolAbort(f"client {self.id}: holds {len(self._private_t)} private "
                                f"examples, but its privacy plan was made for {plan.examples}; "
                                "make the plan from the data the client trains on")
        if self.store and self.store.has_adapter(checkpoint):
            self.store.load_adapter(self.model, checkpoint)
            what = ("label-only training" if steps == 0 else
                    "DP-SGD" if plan.noise_multiplier > 0 else "private training")
            self.log.status.append(f"resumed: {'final-phase ' if final else ''}{what} result of "
                                   "this round loaded from its checkpoint (no new training, no "
                                   "new charge)")
            return
        if steps == 0:  # ``first_phase_share: 1``: a later phase touches labels only
            self._train_labels_only(rnd, labels or [], final=final, checkpoint=checkpoint)
            return
        earlier = self._charged(rnd, mechanism) if self.store else None
        if earlier is not None:
            self.log.status.append(f"resumed: retraining under ledger entry {earlier.seq} (the "
                                   "interrupted training released nothing)")
        else:
            try:
                entry = self.ledger.charge(
                    client=self.id, round=rnd, unit="record", mechanism=mechanism,
                    event=plan.round_event(phase) if self.cfg.training.schedule == "mixed"
                    else plan.round_event(), delta=self.cfg.privacy.record.delta,
                    budget=plan.record_budget,
                    detail={"noise_multiplier": plan.noise_multiplier,
                            "sample_rate": plan.sample_rate, "steps": steps, "phase": phase,
                            "max_grad_norm": self.cfg.privacy.record.max_grad_norm,
                            "schedule": self.cfg.training.schedule,
                            "pseudo_labels_mixed_in": len(labels or [])})
            except BudgetExceeded as e:
                self.log.status.append(f"refused private training: {e}")
                return
            if self.store:
                self.store.note(rnd, **{f"{mechanism}_entry": entry.seq})
        t = self.cfg.training
        mix = None
        if labels is not None:
            data = encode_examples(self.tokenizer, self.fmt, labels, self.ccfg.model.max_length
                                   ) if labels else None
            per_step = round(t.pseudo_label_ratio * t.batch_size)
            epochs = resolved(t.pseudo_label_epochs, "training.pseudo_label_epochs")
            passes = math.ceil(epochs * len(labels) / per_step) if (
                per_step and labels) else 0
            mix = PublicMix(data, per_step, t.learning_rate, steps=passes)
        tag = ("final",) if final else ()
        if plan.noise_multiplier > 0:
            stats = train_dp_sgd(
                self.model, self._private_t, steps=steps,
                sample_rate=plan.sample_rate, noise_multiplier=plan.noise_multiplier,
                max_grad_norm=self.cfg.privacy.record.max_grad_norm,
                learning_rate=t.learning_rate,
                generator=self.rng.torch_generator("dp_sgd", self.id, rnd, *tag),
                secure_mode=self.rng.secure, public=mix)
        elif (phase == 1 and not labels and t.schedule == "mixed"
              and not any(plan.phase_steps[1:])):
            # the plan puts the whole budget before the first labels (``first_phase_share: 1``),
            # without record-level DP: phase 1 is exactly the local-only training (every
            # planned round's passes, each with a fresh optimizer and that round's generator),
            # so the adapter ``route`` answers the client's own topics with is the one it would
            # have trained alone
            stats = self._train_as_alone()
        elif mix is not None:
            stats = train_mixed(
                self.model, self._private_t, mix, steps=steps,
                batch_size=t.batch_size, learning_rate=t.learning_rate,
                generator=self.rng.torch_generator("plain", self.id, rnd, *tag))
        else:
            stats = self._train_alone_round(rnd)
        if final:
            self.log.final_train = stats
        else:
            self.log.dp_train = stats
        if phase == 1:
            self._private_adapter = self._adapter_state()
        if self.store:  # before anything derived from the new weights leaves the client
            self.store.save_adapter(self.model, checkpoint)
        self.log.status.append(f"trained on private data{' and ' + str(len(labels)) + ' pseudo-labels' if labels else ''}"
                               + (" (final phase)" if final else ""))

    def _train_as_alone(self) -> TrainStats:
        """The local-only baseline's private training for every planned round, in one phase."""
        runs = [self._train_alone_round(r) for r in range(1, self.cfg.rounds + 1)]
        steps = sum(r.steps for r in runs)
        return TrainStats(steps=steps, examples_seen=sum(r.examples_seen for r in runs),
                          empty_batches=0,
                          mean_loss=sum(r.mean_loss * r.steps for r in runs) / max(1, steps))

    def _train_alone_round(self, rnd: int) -> TrainStats:
        """One round of the local-only baseline's private training (no record-level DP)."""
        t = self.cfg.training
        return train_plain(self.model, self._private_t, epochs=max(1, round(t.epochs_per_round)),
                           batch_size=t.batch_size, learning_rate=t.learning_rate,
                           generator=self.rng.torch_generator("plain", self.id, rnd))

    def _train_labels_only(self, rnd: int, labels: list[Example], *, final: bool,
                           checkpoint: str) -> None:
        """A mixed-schedule phase without private steps: ``pseudo_label_epochs`` passes over
        the labels alone. It reads no private example, so the ledger charges nothing (the
        labels are post-processing of the round's releases)."""
        stats = self._label_passes(labels, "labels-only", self.id, rnd,
                                   *(("final",) if final else ()))
        if final:
            self.log.final_train = stats
        else:
            self.log.pseudo_train = stats
        if self.store:
            self.store.save_adapter(self.model, checkpoint)
        self.log.status.append(f"trained on {len(labels)} pseudo-labels only (no private step "
                               "in this phase, no charge)" + (" (final phase)" if final else ""))

    def _train_on_pseudo_labels(self) -> None:
        stats = self._label_passes(self.pseudo_labels, "pseudo", self.id, self.log.round)
        if stats is not None:
            self.log.pseudo_train = stats

    def _label_passes(self, labels: list[Example], *tag: Any) -> TrainStats | None:
        """``pseudo_label_epochs`` passes over ``labels`` alone (None when there is nothing to
        train), with a generator named by ``tag``."""
        t = self.cfg.training
        epochs = resolved(t.pseudo_label_epochs, "training.pseudo_label_epochs")
        if not labels or epochs == 0:
            return None
        data = encode_examples(self.tokenizer, self.fmt, labels, self.ccfg.model.max_length)
        return train_plain(
            self.model, data, epochs=epochs, batch_size=t.pseudo_label_batch_size,
            learning_rate=resolved(t.pseudo_label_learning_rate,
                                   "training.pseudo_label_learning_rate"),
            generator=self.rng.torch_generator(*tag))

    def _generate_candidates(self) -> None:
        g = self.cfg.generation
        convs = [(("user", p.text),) for p in self.prompts]
        seed = self.rng.seed_for("generate", self.id, self.log.round)
        greedy = g.greedy_first and g.candidates >= 2

        def answer(idx: list[int]) -> list[list[str]]:
            sub = [convs[i] for i in idx]
            out = generate(
                self.model, self.tokenizer, self.fmt, sub, k=g.candidates - int(greedy),
                max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
                batch_size=g.batch_size, seed=seed)
            if greedy:
                first = generate(self.model, self.tokenizer, self.fmt, sub, k=1,
                                 max_new_tokens=g.max_new_tokens, temperature=1.0, top_p=1.0,
                                 batch_size=g.batch_size, seed=seed, sample=False)
                out = [f + s for f, s in zip(first, out, strict=True)]
            return out

        private = self._route_private([p.text for p in self.prompts])
        self.log.routed = int(private.sum())
        self._cand_texts = self._routed(private, answer)
        if self.store:  # client-local, like its pseudo-labels; read by the inversion audit
            self.store.save_candidates(self.log.round, self._cand_texts)
        flat = [t if t.strip() else "(empty answer)" for ts in self._cand_texts for t in ts]
        emb = self.embedder.encode(flat)  # (P·k, d)
        self._cand_emb = emb.reshape(len(self.prompts), g.candidates, -1).astype(np.float64)
        self._cand_nll = None

    # ------------------------------------------------------------------ routing
    def _private_prompt_embeddings(self) -> np.ndarray:
        """(N, d) unit embeddings of the private prompts' last user turns: computed once, kept
        on the client, never sent."""
        if self._private_prompt_emb is None:
            self._private_prompt_emb = self.embedder.encode(
                [_last_user_turn(ex) for ex in self._private])
        return self._private_prompt_emb

    def _route_private(self, texts: list[str]) -> np.ndarray:
        """(n,) bool: which prompts ``consensus.route`` answers with the adapter of phase 1
        (private data only). All False without routing or before phase 1 has trained."""
        c = self.cfg.consensus
        if not c.routes or not texts:
            return np.zeros(len(texts), dtype=bool)
        if self.cfg.privacy.record.enabled:  # the configuration refuses it; fail closed
            raise ProtocolAbort(f"client {self.id}: routing reads private prompts and is "
                                "refused with record-level DP")
        if self._private_reference() is None:
            return np.zeros(len(texts), dtype=bool)
        w = proximity_confidence(self.embedder.encode(texts), self._private_prompt_embeddings(),
                                 low=c.proximity_low, high=c.proximity_high)
        return w >= c.route_threshold

    def _routed(self, private: np.ndarray, fn: Callable[[list[int]], list[Any]]) -> list[Any]:
        """``fn(indices)`` for the items routed to the current adapter and, under the adapter
        of phase 1, for those routed there; results back in item order. The current adapter is
        restored afterwards, bit for bit."""
        n = len(private)
        out: list[Any] = [None] * n
        for use_private in (False, True):
            idx = [i for i in range(n) if bool(private[i]) == use_private]
            if not idx:
                continue
            if use_private:
                ref = self._private_reference()
                if ref is None:
                    raise ProtocolAbort(f"client {self.id}: routed to the phase-1 adapter, "
                                        "which this client does not hold")
                with self._swapped(ref):
                    res = fn(idx)
            else:
                res = fn(idx)
            for i, r in zip(idx, res, strict=True):
                out[i] = r
        return out

    @contextmanager
    def _swapped(self, state: dict[str, torch.Tensor]) -> Iterator[None]:
        current = self._adapter_state()
        self._load_state(state)
        try:
            yield
        finally:
            self._load_state(current)

    def _adapter_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters()
                if p.requires_grad}

    def _private_reference(self) -> dict[str, torch.Tensor] | None:
        """The adapter after phase 1 (mixed schedule), from memory or its checkpoint."""
        if self.cfg.training.schedule != "mixed":
            return None
        if self._private_adapter is None and self.store and self.store.has_adapter("trained-1"):
            current = self._adapter_state()
            self.store.load_adapter(self.model, "trained-1")
            self._private_adapter = self._adapter_state()
            self._load_state(current)
        return self._private_adapter

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                if p.requires_grad:
                    p.copy_(state[n])

    def _nll_private(self, texts: list[list[str]]) -> np.ndarray:
        """:meth:`_nll` under the adapter of phase 1 (private data only), where the schedule
        has one; under the current model otherwise."""
        ref = self._private_reference()
        if ref is None:
            return self.own_nll() if texts is self._cand_texts else self._nll(texts)
        current = self._adapter_state()
        try:
            self._load_state(ref)
            return self._nll(texts)
        finally:
            self._load_state(current)

    def _nll(self, texts: list[list[str]], *, base: bool = False,
             prompts: list[int] | None = None) -> np.ndarray:
        """(n, m) mean token NLL of the texts (m per prompt) as answers to the public prompts
        (all, or those at the indices ``prompts``), under this client's model (``base``: with
        its LoRA adapter switched off)."""
        m = len(texts[0]) if texts else 0
        which = [self.prompts[j] for j in prompts] if prompts is not None else self.prompts
        exs = [Example(messages=(("user", p.text),), response=t)
               for p, ts in zip(which, texts, strict=True) for t in ts]
        data = encode_examples(self.tokenizer, self.fmt, exs, self.ccfg.model.max_length)
        if base:
            with self.model.disable_adapter():
                nll = mean_reference_loss(self.model, data)
        else:
            nll = mean_reference_loss(self.model, data)
        return np.asarray(nll, dtype=np.float64).reshape(len(which), m)

    def own_nll(self) -> np.ndarray:
        """(P, k) mean token NLL of the client's own candidates under its own model."""
        if self._cand_nll is None:
            self._cand_nll = self._nll(self._cand_texts)
        return self._cand_nll

    def _compute_confidence(self) -> None:
        """Per-prompt confidence w ∈ [0, 1] from the client's own model and candidates
        (privsem.confidence); validated before it can enter the release."""
        c = self.cfg.consensus
        P = len(self.prompts)
        if c.confidence == "none":
            w = np.ones(P)
        elif c.confidence == "gain":
            # what the client's private data taught it (phase 1's adapter, before any label
            # was mixed in), against the public base model, on its current candidates
            w = gain_confidence(self._nll_private(self._cand_texts),
                                self._nll(self._cand_texts, base=True))
        elif c.confidence == "likelihood":
            w = likelihood_confidence(self._nll_private(self._cand_texts))
        elif c.confidence == "proximity":
            if self.cfg.privacy.record.enabled:  # the configuration refuses it; fail closed
                raise ProtocolAbort(f"client {self.id}: the proximity confidence reads private "
                                    "data and is refused with record-level DP")
            w = proximity_confidence(self.embedder.encode([p.text for p in self.prompts]),
                                     self._private_prompt_embeddings(), low=c.proximity_low,
                                     high=c.proximity_high)
        else:  # self_agreement
            w = self_agreement_confidence(self._cand_texts)
        w = np.power(w, c.confidence_power)
        self._confidence = validate_confidence(w, prompts=P)
        self.log.confidence = [round(float(x), 4) for x in self._confidence]
        if self.store and c.confidence != "none":
            self.store.save_confidence(self.log.round, [float(x) for x in self._confidence])

    def answer_matrix(self) -> np.ndarray:
        """(P, d): per prompt, the normalised mean of the client's candidate embeddings."""
        if self._cand_emb is None:
            raise ProtocolAbort(f"client {self.id}: no candidates generated")
        m = self._cand_emb.mean(axis=1)
        return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)

    def _release(self, spec: RoundSpec) -> bytes | None:
        """Steps 5–6: validate, clip, charge the ledger, then let the back-end noise and send."""
        try:
            matrix = validate_embeddings(self.answer_matrix(), prompts=len(spec.prompt_ids),
                                         dim=self.embedder.dim)
            if self.cfg.consensus.confidence != "none":
                w = validate_confidence(self._confidence, prompts=len(spec.prompt_ids))
                matrix = weighted_rows(matrix, w)  # (P, d + 1): rows w·e, column w
            if matrix.shape[1] != spec.dim:
                raise EmbeddingRejected(f"upload width {matrix.shape[1]} is not the round's "
                                        f"{spec.dim}")
        except EmbeddingRejected as e:
            self.log.status.append(f"upload withheld: {e}")
            return None
        clipped, factor = joint_clip(matrix, self.plan.clip)
        self.log.clip_factor = factor
        agg = self.backend.client(ClientContext(spec=spec, client_id=self.id,
                                                randomness=self.rng, identity=self.identity,
                                                registry=self.registry, public=self.public))
        digest = params_digest(spec.round, self.backend.name, spec.params, spec.cohort)
        cached = self.store.load_release(spec.round, digest) if self.store else None
        if cached is not None:  # T28: resend what may already have left; no fresh noise
            noised, stats = cached
            agg.stats = dict(stats)
            self.log.status.append("resumed: resent the cached release of this round (no new "
                                   "noise, no new charge)")
            first = agg.send(noised)
            self._agg = agg
            self.log.aggregation = dict(agg.stats)
            self.log.status.append("uploaded")
            return first
        earlier = self._charged(spec.round, agg.mechanism, digest) if self.store else None
        if earlier is not None:
            # Charged, but the crash came before the release was cached, so it never left.
            self.log.status.append(f"resumed: releasing under ledger entry {earlier.seq} "
                                   "(nothing was sent before)")
        else:
            event, detail = agg.release_event()
            try:
                entry = self.ledger.charge(
                    client=self.id, round=spec.round, unit="client", mechanism=agg.mechanism,
                    event=event, delta=self.cfg.privacy.client.delta,
                    budget=self.plan.client_budget,
                    detail={**detail, "clip_factor": factor, "backend": self.backend.name,
                            "shape": list(matrix.shape), "params_digest": digest})
            except BudgetExceeded as e:
                self.log.status.append(f"upload refused: {e}")
                return None
            if self.store:
                self.store.note(spec.round, release_entry=entry.seq, release_digest=digest)
        noised = agg.add_noise(clipped)  # the noise is drawn here, after the charge
        if self.store:  # cached before it leaves, so that a retry resends it
            self.store.save_release(spec.round, digest, noised, agg.stats)
        first = agg.send(noised)
        self._agg = agg
        self.log.aggregation = dict(agg.stats)
        self.log.status.append("uploaded")
        return first

    def _record_noise_present(self, spec: RoundSpec, msg: ConsensusBroadcast) -> None:
        """T26: after the release, a zero-cost ledger note of the noise the sum actually
        carried (the round's charge assumed the minimum the protocol enforces)."""
        if self._agg is None:
            return
        _, detail = self._agg.release_event()
        shares = detail.get("noise_shares", 1)
        n = len(msg.contributors)
        self.ledger.charge(
            client=self.id, round=spec.round, unit="client", mechanism="noise_present",
            event=ev.NoOpDpEvent(), delta=self.cfg.privacy.client.delta,
            budget=self.plan.client_budget,
            detail={"contributors": n, "counted": self.id in msg.contributors,
                    "placement": detail.get("placement", "local"),
                    "noise_shares_accounted": shares,
                    "noise_variance_present_over_accounted": n / shares
                    if detail.get("placement") == "distributed" else float(n),
                    "consensus_noise_std": msg.noise_std_of_consensus})

    # ------------------------------------------------------------------ durable state
    def _charged(self, rnd: int, mechanism: str, digest: str | None = None) -> LedgerEntry | None:
        """This client's charge for ``mechanism`` in round ``rnd`` already in the ledger (a
        crash interrupted the round after it), matching ``digest`` where given."""
        for e in reversed(self.ledger.entries):
            if e.client == self.id and e.round == rnd and e.mechanism == mechanism and (
                    digest is None or e.detail.get("params_digest") == digest):
                return e
        return None

    def checkpoint(self, rnd: int) -> None:
        """End of round ``rnd``: the adapter and the pseudo-labels the next round starts from."""
        if self.store is None:
            return
        self.store.save_adapter(self.model, f"end-{rnd}")
        by_prompt = {p.text: p.id for p in self.prompts}
        self.store.save_labels(rnd, [{"prompt_id": by_prompt[ex.messages[0][1]],
                                      "response": ex.response} for ex in self.pseudo_labels])
        self.store.note(rnd, completed=True)

    def restore(self, rnd: int) -> None:
        """Resumes after round ``rnd`` (0: nothing trained yet) from :meth:`checkpoint`."""
        if self.store is None:
            raise ProtocolAbort(f"client {self.id}: cannot resume without a state folder")
        # The journals name every ledger entry this client charged: a ledger rolled back
        # together with its head still lacks them (T29).
        entries = self.ledger.entries
        for r, j in self.store.journals().items():
            for key in ("dp_sgd_entry", "dp_sgd_final_entry", "release_entry"):
                if key not in j:
                    continue
                seq = int(j[key])
                if seq >= len(entries) or entries[seq].client != self.id or entries[
                        seq].round != r:
                    raise LedgerCorrupted(
                        f"client {self.id}: its state records ledger entry {seq} for round {r}, "
                        f"which the ledger ({len(entries)} entries) does not hold: the ledger was "
                        "rolled back or replaced; the client must not participate")
        if rnd >= 1:
            self.store.load_adapter(self.model, f"end-{rnd}")
            texts = {p.id: p.text for p in self.prompts}
            labels = self.store.load_labels(rnd)
            unknown = [x.get("prompt_id") for x in labels if x.get("prompt_id") not in texts]
            if unknown:
                raise StateCorrupted(f"client {self.id}: saved pseudo-labels name prompts "
                                     f"{unknown[:3]} that are not in the prompt set")
            self.pseudo_labels = [Example(messages=(("user", texts[x["prompt_id"]]),),
                                          response=str(x["response"])) for x in labels]
        self._last_round = rnd

    def _set_labels(self, texts: list[str | None]) -> None:
        """Keeps the labels the client accepts (privsem.confidence.accepts): on a prompt where
        it holds at least ``accept_share`` of the federation's confidence Σw (by default
        1/contributors: at least the mean; it is among those who know), a label its own model
        finds much less likely than its own candidates is refused (``accept_margin: null``:
        every label there), so an expert is never taught its own topic by clients that do not
        know it."""
        c = self.cfg.consensus
        keep = [bool(t) for t in texts]
        if c.accept_labels and c.confidence != "none" and self._confidence is not None and any(
                keep):
            total_w = (self._federation_weight if self._federation_weight is not None
                       else np.zeros(len(texts)))
            share = c.accept_share if c.accept_share is not None else 1 / max(
                1, self._contributors)
            expert = knows(self._confidence, total_w, min_confidence=c.accept_confidence,
                           share=share) & np.array(keep)
            confident = [int(j) for j in np.flatnonzero(expert)]
            if confident:
                own_nll = label_nll = None
                margin = resolved(c.accept_margin, "consensus.accept_margin")
                if margin is not None:
                    label_nll = np.full(len(texts), -np.inf)
                    sub = self._nll([[str(texts[j])] for j in confident], prompts=confident)
                    label_nll[confident] = sub[:, 0]
                    own_nll = self.own_nll().mean(axis=1)
                ok = accepts(own_nll, label_nll, expert, margin=margin)
                refused = [j for j in confident if not ok[j]]
                own = (self._own_answers() if resolved(c.own_answer, "consensus.own_answer")
                       and refused else None)
                for j in refused:
                    if own is not None and own[j].strip():
                        texts[j] = own[j]  # rehearse its own answer where it knows
                    else:
                        keep[j] = False
                self.log.labels_refused = len(refused)
        self.pseudo_labels = [Example(messages=(("user", p.text),), response=str(t))
                              for p, t, k in zip(self.prompts, texts, keep, strict=True) if k]
        self.log.labels = len(self.pseudo_labels)

    def _own_answers(self) -> list[str]:
        """Per prompt, the client's own answer: its greedy candidate (``greedy_first``) or the
        candidate its own model finds likeliest."""
        g = self.cfg.generation
        if g.greedy_first and g.candidates >= 2:
            return [ts[0] for ts in self._cand_texts]
        best = np.argmin(self.own_nll(), axis=1)
        return [ts[int(b)] for ts, b in zip(self._cand_texts, best, strict=True)]

    def _timed(self, name: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self.log.seconds[name] = time.perf_counter() - t0

    # ------------------------------------------------------------------ evaluation
    def evaluate_questions(self, *, max_new_tokens: int, seed: int,
                           route: bool = True) -> list[dict[str, Any]]:
        """One row per held-out question: its scope (``own``: the client's topics, ``other``:
        other clients'), the greedy answer's embedding similarity and ROUGE-L against the
        reference, the reference's mean token NLL, whether the answer contains the key (None
        where the question has no key), and which adapter answered (``consensus.route``; the
        router sees the question, never its scope). ``route=False``: the current adapter answers
        everything (the baselines, which have no federation adapter)."""
        if not self.eval_items:
            return []
        convs = [it.example.messages for it in self.eval_items]
        private = self._route_private([_last_user_turn(it.example) for it in self.eval_items]
                                      ) if route else np.zeros(len(convs), dtype=bool)
        data = encode_examples(self.tokenizer, self.fmt, [it.example for it in self.eval_items],
                               self.ccfg.model.max_length)

        def answer(idx: list[int]) -> list[tuple[str, float]]:
            texts = [a[0] for a in generate(
                self.model, self.tokenizer, self.fmt, [convs[i] for i in idx], k=1,
                max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0, batch_size=16,
                seed=seed, sample=False)]
            sub = torch.utils.data.TensorDataset(*(t[idx] for t in data.tensors))
            nll = mean_reference_loss(self.model, sub)
            return list(zip(texts, (float(x) for x in nll), strict=True))

        answered = self._routed(private, answer)
        answers = [a for a, _ in answered]
        refs = [it.example.response for it in self.eval_items]
        ea = self.embedder.encode([a if a.strip() else "(empty answer)" for a in answers])
        er = self.embedder.encode(refs)
        sims = np.sum(ea * er, axis=1)
        rouge = rouge_l(answers, refs)
        return [{"scope": it.scope, "similarity": float(sims[i]), "rouge_l": float(rouge[i]),
                 "nll": answered[i][1],
                 "key_recall": None if not it.key else float(it.key.lower() in answers[i].lower()),
                 "answer": answers[i], "adapter": "private" if private[i] else "current"}
                for i, it in enumerate(self.eval_items)]

    def evaluate(self, *, max_new_tokens: int, seed: int) -> dict[str, float]:
        """Mean scores on held-out questions of the client's own topics and of other clients'."""
        return question_means(self.evaluate_questions(max_new_tokens=max_new_tokens, seed=seed))


def question_means(rows: list[dict[str, Any]]) -> dict[str, float]:
    """``{scope}_{metric}`` means of :meth:`Client.evaluate_questions` rows."""
    out: dict[str, float] = {}
    for scope in ("own", "other"):
        mine = [r for r in rows if r["scope"] == scope]
        if not mine:
            continue
        for m in ("similarity", "rouge_l", "nll"):
            out[f"{scope}_{m}"] = float(np.mean([r[m] for r in mine]))
        keyed = [r["key_recall"] for r in mine if r["key_recall"] is not None]
        if keyed:
            out[f"{scope}_key_recall"] = float(np.mean(keyed))
    return out


def _last_user_turn(ex: Example) -> str:
    """The prompt of a private example: its last user turn (all turns if it has none)."""
    users = [text for role, text in ex.messages if role == "user"]
    return users[-1] if users else " ".join(text for _, text in ex.messages)


def _limit_per_scope(items: list[EvalItem], n: int) -> list[EvalItem]:
    out, count = [], {"own": 0, "other": 0}
    for it in items:
        if count[it.scope] < n:
            out.append(it)
            count[it.scope] += 1
    return out
