"""The server: announces rounds, sums uploads through the back-end, forms the consensus, and in
shared mode picks the nominated text nearest each consensus point. Transport-free."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from privsem.aggregation.base import AggregateResult, AggregationBackend, ServerAggregator
from privsem.confidence import upload_dim
from privsem.config import RunConfig
from privsem.consensus import (
    Consensus,
    mean_consensus,
    robust_consensus,
    select_nearest,
    weighted_consensus,
)
from privsem.data import PublicPrompt
from privsem.errors import MessageError, ProtocolAbort
from privsem.models.embedder import Embedder
from privsem.privacy.plan import PrivacyPlan
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


class Server:
    def __init__(self, cfg: RunConfig, *, prompts: list[PublicPrompt], prompt_hash: str,
                 dim: int, plan: PrivacyPlan, backend: AggregationBackend,
                 registry: Mapping[str, bytes] | None = None,
                 public: Mapping[str, bytes] | None = None,
                 embedder: Embedder | None = None, run: str) -> None:
        self.run = check_run_nonce(run, "server")
        self.cfg, self.prompts, self.prompt_hash = cfg, prompts, prompt_hash
        self.dim, self.plan, self.backend, self.embedder = dim, plan, backend, embedder
        self.registry = dict(registry or {})
        self.public = dict(public or {})  # the back-end's run-level public material
        self.abort_reason: str | None = None
        self.stage = StageMachine("server")
        self.spec: RoundSpec | None = None
        self._agg: ServerAggregator | None = None
        self.result: AggregateResult | None = None
        self.consensus: Consensus | None = None

    @property
    def upload_dim(self) -> int:
        """Width of each client's upload: the encoder's dimension, plus the confidence column."""
        return upload_dim(self.dim, self.cfg.consensus.confidence)

    def open_round(self, rnd: int, cohort: tuple[str, ...]) -> bytes:
        params = expected_params(self.cfg, self.plan, cohort_size=len(cohort), dim=self.dim,
                                 public=self.public)
        self.spec = RoundSpec(round=rnd, run=self.run,
                              session_id=session_id(rnd, cohort, self.prompt_hash, params,
                                                    run=self.run),
                              cohort=cohort, prompt_ids=tuple(p.id for p in self.prompts),
                              prompt_set_hash=self.prompt_hash,
                              dim=self.upload_dim, params=params)
        self.stage.advance(Stage.SPEC)
        self._agg = self.backend.server(self.spec, self.registry, self.public)
        self.result, self.consensus, self.abort_reason = None, None, None
        return encode(self.spec)

    # The aggregation exchange (see privsem.aggregation.base.run_exchanges).
    @property
    def collector(self) -> _Collector:
        """This server seen as the collecting side of :func:`run_exchanges`."""
        return _Collector(self)

    @property
    def aggregation_stage(self) -> str:
        return self._agg.stage if self._agg is not None else "closed"

    def receive_upload(self, client: str, frame: bytes) -> None:
        self.stage.expect(Stage.SPEC)
        if self._agg is None:
            raise ProtocolAbort("server: upload before the round was opened")
        self._agg.receive(client, frame)

    def next_requests(self) -> dict[str, bytes]:
        """The back-end's next requests; {} when the aggregate is ready or the round aborted."""
        self.stage.expect(Stage.SPEC)
        if self._agg is None or self.abort_reason is not None:
            return {}
        try:
            return self._agg.next_requests()
        except ProtocolAbort as e:
            self.abort_reason = str(e)
            return {}

    def close_uploads(self) -> bytes | None:
        """Step 7: the consensus broadcast, or None (round aborted) when nobody contributed
        or the back-end aborted."""
        if self._agg is None or self.spec is None:
            raise ProtocolAbort("server: no open round")
        if self.abort_reason is not None:
            self.stage.advance(Stage.ABORTED)
            return None
        try:
            self.result = self._agg.finish()
        except ProtocolAbort as e:
            self.abort_reason = str(e)
            self.stage.advance(Stage.ABORTED)
            return None
        if not self.result.contributors:
            self.stage.advance(Stage.ABORTED)
            return None
        self.stage.advance(Stage.UPLOAD)
        op = self.cfg.consensus.operator
        weighted = self.cfg.consensus.confidence != "none"
        n = len(self.result.contributors)
        if op == "mean" and weighted:
            self.consensus = weighted_consensus(self.result.total, n,
                                                noise_variance=self.result.noise_variance)
        elif op == "mean":
            self.consensus = mean_consensus(self.result.total, n,
                                            noise_variance=self.result.noise_variance)
        else:
            if self.result.individual is None:
                raise ProtocolAbort(f"server: operator {op!r} needs individual vectors, which "
                                    f"the {self.backend.name} back-end does not reveal")
            stack = np.stack([self.result.individual[c] for c in self.result.contributors])
            self.consensus = robust_consensus(stack, op,
                                              trim_fraction=self.cfg.consensus.trim_fraction,
                                              weighted=weighted)
        self.stage.advance(Stage.CONSENSUS)
        return encode(ConsensusBroadcast(
            session_id=self.spec.session_id, round=self.spec.round,
            contributors=self.result.contributors,
            noise_std_of_consensus=self.consensus.noise_std,
            consensus=self.consensus.points.astype(np.float32),
            agreement=self.consensus.agreement.astype(np.float32),
            weight=self.consensus.mean_weight().astype(np.float32)))

    def choose_labels(self, nominations: dict[str, bytes]) -> bytes:
        """Shared mode: per prompt, the nominated text nearest the consensus point."""
        if self.spec is None or self.consensus is None or self.embedder is None:
            raise ProtocolAbort("server: shared selection needs a consensus and an encoder")
        self.stage.advance(Stage.NOMINATION)
        P = len(self.prompts)
        texts: list[list[str]] = [[] for _ in range(P)]
        for client, frame in nominations.items():
            try:
                nom = decode(frame, Nomination)
            except MessageError:
                continue  # a malformed nomination is excluded
            if (nom.session_id != self.spec.session_id or nom.client != client
                    or client not in self.spec.cohort or len(nom.texts) != P):
                continue
            for j, t in enumerate(nom.texts):
                if isinstance(t, str) and t.strip():
                    texts[j].append(t)
        chosen: list[str | None] = []
        weight = self.consensus.mean_weight()
        for j in range(P):
            if not texts[j] or 0 < self.cfg.consensus.min_weight > weight[j]:
                chosen.append(None)
                continue
            emb = self.embedder.encode(texts[j]).astype(np.float64)[None]  # (1, m, d)
            idx = select_nearest(emb, self.consensus.points[j:j + 1],
                                 self.consensus.agreement[j:j + 1],
                                 threshold=self.cfg.consensus.agreement_threshold)[0]
            chosen.append(texts[j][idx] if idx is not None else None)
        self.stage.advance(Stage.LABELS)
        return encode(PseudoLabels(session_id=self.spec.session_id, round=self.spec.round,
                                   texts=tuple(chosen)))

    def end_round(self) -> None:
        if self.stage.stage in (Stage.CONSENSUS, Stage.LABELS):
            self.stage.advance(Stage.DONE)


class _Collector:
    def __init__(self, server: Server) -> None:
        self._s = server

    @property
    def stage(self) -> str:
        return self._s.aggregation_stage

    def receive(self, client: str, payload: bytes) -> None:
        self._s.receive_upload(client, payload)

    def next_requests(self) -> dict[str, bytes]:
        return self._s.next_requests()
