"""The aggregation contract every back-end satisfies (DESIGN.md §3).

A back-end turns each client's clipped (prompts × dim) matrix into messages on the client
(:class:`ClientAggregator`) and the messages of the survivors into their noisy sum on the server
(:class:`ServerAggregator`). The noise is the back-end's to add (Gaussian in floating point for
``plaintext``, discrete Gaussian in the integer domain for ``masked``), so the back-end also
names the DP event of the release (:meth:`ClientAggregator.release_event`), which the client
charges to its ledger before anything leaves it.

A round of aggregation is a sequence of exchanges: the client's first message comes from
:meth:`ClientAggregator.start`; then, until :meth:`ServerAggregator.next_requests` returns an
empty mapping, the server sends each live client a request and the client answers it
(:meth:`ClientAggregator.respond`). A client that does not answer has dropped out. All
back-ends give the same per-prompt sum within their stated tolerance, the same dropout
behaviour (a client that never uploads is absent from the sum) and leave their inputs
unchanged. ``reveals_individual`` says whether the server sees each client's matrix (only
``plaintext`` does), which gates the consensus operators that need them.

Some back-ends need a party besides the clients and the server, and material every party must
hold before the first round (``ckks``: a key holder and its public context). Once per run,
:meth:`AggregationBackend.start_run` creates them as :class:`RunParties`: the public material is
handed to every party out of band (like the registry of identity keys) and its digest bound
into the round parameters; each helper party answers requests in the exchange like a client.

Rules for changing it: a new back-end lives in its own folder, subclasses these classes and
registers itself with :func:`register`; the round loop never branches on a back-end's name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from dp_accounting import dp_event as ev

from privsem.protocol.messages import RoundSpec
from privsem.rng import Randomness

if TYPE_CHECKING:
    from privsem.aggregation.masked.crypto import Identity


@dataclass(frozen=True)
class AggregateResult:
    total: np.ndarray  # (prompts, dim) float64: the noisy sum over contributors
    contributors: tuple[str, ...]
    noise_variance: float  # per-entry variance of the noise in ``total``
    individual: Mapping[str, np.ndarray] | None  # only where the back-end reveals them
    rejected: Mapping[str, str]  # client -> reason its messages were excluded
    dropped: tuple[str, ...] = ()  # cohort members that took part in a stage but are not counted
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientContext:
    """What a client's aggregator may use: its round, its randomness and its identity."""

    spec: RoundSpec
    client_id: str
    randomness: Randomness
    identity: Identity | None = None
    registry: Mapping[str, bytes] = field(default_factory=dict)  # id -> Ed25519 public key
    public: Mapping[str, bytes] = field(default_factory=dict)  # RunParties.public


@dataclass(frozen=True)
class NoisePlan:
    """The planned client-level mechanism: multiplier z on the joint clip C."""

    noise_multiplier: float
    clip: float
    placement: str = "local"


class Helper(Protocol):
    """A party of the exchange that is neither a client nor the server (the CKKS key holder)."""

    def respond(self, request: bytes) -> bytes | None: ...


@dataclass(frozen=True)
class RunParties:
    """What a back-end sets up once per run: ``public`` material every party receives before
    the first round (name -> bytes; its digest is bound into the round parameters) and
    ``helpers``, the parties besides clients and server, by id."""

    public: Mapping[str, bytes] = field(default_factory=dict)
    helpers: Mapping[str, Helper] = field(default_factory=dict)


class ClientAggregator(ABC):
    mechanism: str  # ledger name of the release
    stats: dict[str, Any]  # what the client measured (clip fraction, noise std)

    @abstractmethod
    def release_event(self) -> tuple[ev.DpEvent, dict[str, Any]]:
        """The DP event of this client's release, and facts for the ledger entry."""

    @abstractmethod
    def add_noise(self, clipped: np.ndarray) -> np.ndarray:
        """Draws the noise once and returns the noised release in the back-end's own domain
        (``clipped`` is not modified). The client persists it before :meth:`send`, so that a
        retried round resends it instead of drawing fresh noise (T28)."""

    @abstractmethod
    def send(self, noised: np.ndarray) -> bytes:
        """The first message carrying ``noised`` (from :meth:`add_noise`, now or before a
        crash); validates it like any input."""

    def start(self, clipped: np.ndarray) -> bytes:
        """Adds the noise to ``clipped`` (not modified) and returns the first message."""
        return self.send(self.add_noise(clipped))

    @abstractmethod
    def respond(self, request: bytes) -> bytes | None:
        """Answers a request of a later stage; raises ProtocolAbort when an invariant fails."""


class ServerAggregator(ABC):
    stage: str  # the stage whose messages are being collected

    @abstractmethod
    def receive(self, client: str, payload: bytes) -> None:
        """Takes one client's message; a malformed one is excluded, never summed."""

    @abstractmethod
    def next_requests(self) -> dict[str, bytes]:
        """Closes the current stage; returns the next stage's requests ({} when complete).

        Raises ProtocolAbort when too few clients remain (no aggregate is released)."""

    @abstractmethod
    def finish(self) -> AggregateResult:
        """The noisy sum of the counted contributors."""


class AggregationBackend(ABC):
    name: str
    reveals_individual: bool
    has_helpers: bool = False  # whether start_run creates parties besides clients and server

    def start_run(self, noise: NoisePlan, *, cohort: tuple[str, ...], prompts: int, dim: int,
                  settings: Any, randomness: Randomness) -> RunParties:
        """Once per run, before any round: the back-end's helper parties and public material
        (none by default). Raises ValueError when the back-end cannot serve this run."""
        return RunParties()

    @abstractmethod
    def round_params(self, noise: NoisePlan, *, cohort_size: int, length: int,
                     settings: Any, public: Mapping[str, bytes] | None = None
                     ) -> dict[str, Any]:
        """Parameters every party must agree on (bound into the session id); ``public`` is
        the run's :attr:`RunParties.public`."""

    @abstractmethod
    def planned_event(self, noise_multiplier: float, count: int) -> ev.DpEvent:
        """The event of ``count`` releases at multiplier ``z``, for calibration (an upper bound
        of what :meth:`ClientAggregator.release_event` charges)."""

    @abstractmethod
    def client(self, ctx: ClientContext) -> ClientAggregator: ...

    @abstractmethod
    def server(self, spec: RoundSpec, registry: Mapping[str, bytes],
               public: Mapping[str, bytes] | None = None) -> ServerAggregator: ...


def envelope_problem(spec: RoundSpec, client: str, msg: Any) -> str | None:
    """Why ``msg``, received from ``client``, does not belong to this round (None: it does):
    another session or round (a replay), a sender outside the cohort, or a message that names
    another sender. Every back-end's server checks this before anything else."""
    if getattr(msg, "session_id", None) != spec.session_id or getattr(
            msg, "round", None) != spec.round:
        return "message belongs to another session or round (replay)"
    if client not in spec.cohort:
        return "sender is not a member of this round's cohort"
    if getattr(msg, "client", None) != client:
        return f"message names {getattr(msg, 'client', None)!r} as its sender"
    return None


class UploadInbox:
    """The server's side of a one-message upload stage (``plaintext``, ``ckks``): a retransmit
    of the same bytes counts once, a conflicting second upload excludes the client (T10),
    anything after :meth:`close` is refused, and each frame is decoded as ``kind`` with its
    envelope checked. The back-end validates the contents of what :meth:`take` returns and
    stores it in :attr:`accepted`; :meth:`reject` also withdraws an accepted upload."""

    def __init__(self, spec: RoundSpec, kind: type) -> None:
        self.spec, self.kind = spec, kind
        self.accepted: dict[str, Any] = {}
        self.rejected: dict[str, str] = {}
        self.closed = False
        self._raw: dict[str, bytes] = {}

    def reject(self, client: str, reason: str) -> None:
        self.rejected[client] = reason
        self.accepted.pop(client, None)

    def take(self, client: str, payload: bytes) -> Any | None:
        """The decoded message of a client's first upload with a valid envelope; None (and the
        reason recorded where there is one) otherwise."""
        from privsem.errors import MessageError
        from privsem.protocol.messages import decode

        if self.closed:
            self.rejected.setdefault(client, "upload after the stage closed")
            return None
        if client in self._raw:
            if self._raw[client] != payload:
                self.reject(client, "conflicting second upload in one round")
            return None  # a retransmit of the same payload is counted once
        self._raw[client] = payload
        try:
            msg = decode(payload, self.kind)
        except MessageError as e:
            self.reject(client, str(e))
            return None
        problem = envelope_problem(self.spec, client, msg)
        if problem:
            self.reject(client, problem)
            return None
        return msg

    def close(self) -> None:
        self.closed = True

    def members(self) -> tuple[str, ...]:
        """Cohort members with an accepted upload, in cohort order."""
        return tuple(c for c in self.spec.cohort if c in self.accepted)


class Collector(Protocol):
    """The collecting side of an exchange: a ServerAggregator, or a server wrapping one."""

    @property
    def stage(self) -> str: ...

    def receive(self, client: str, payload: bytes) -> None: ...

    def next_requests(self) -> dict[str, bytes]: ...


@dataclass(frozen=True)
class Gone:
    """A party that gave no answer: it aborted (an invariant failed), went silent or timed out.
    ``reason`` says which, in words that go to the client's status."""

    reason: str


Answer = bytes | None | Gone  # a reply frame, nothing to send, or no answer at all
# Asks every party named in ``requests`` (party -> frame) in the stage named first; returns an
# answer per party. How the frames travel (a method call, Flower messages) is the runtime's.
Ask = Callable[[str, Mapping[str, bytes]], Mapping[str, Answer]]


def exchange(server: Collector, ask: Ask, first: Mapping[str, bytes], *,
             traffic: Callable[[str, str, str, int], None] | None = None,
             absent: Mapping[str, str] | None = None) -> dict[str, str]:
    """Moves messages between one server and its parties until the aggregate is ready.

    ``first`` holds the clients' first messages. Each later stage's requests go out in one batch
    through ``ask`` (a runtime may deliver them in parallel); a party without an answer is left
    out of every later stage, as is every party in ``absent`` (party -> reason: silent from the
    start). ``traffic(party, stage, "up"|"down", n)`` counts bytes. Returns ``{party: reason}``
    for the parties that gave no answer.
    Raises ProtocolAbort when the server aborts the round.
    """
    gone: dict[str, str] = dict(absent or {})
    stage = server.stage
    for c, frame in first.items():
        if c in gone:
            continue
        if traffic:
            traffic(c, stage, "up", len(frame))
        server.receive(c, frame)
    while requests := server.next_requests():
        stage = server.stage
        batch = {c: req for c, req in requests.items() if c not in gone}
        if traffic:
            for c, req in batch.items():
                traffic(c, stage, "down", len(req))
        answers = ask(stage, batch)
        for c in batch:
            a = answers.get(c, Gone(f"gave no answer in stage {stage}"))
            if isinstance(a, Gone):
                gone[c] = a.reason
            elif a is not None:
                if traffic:
                    traffic(c, stage, "up", len(a))
                server.receive(c, a)
    return gone


def run_exchanges(server: Collector,
                  respond: Mapping[str, Callable[[bytes], bytes | None]],
                  first: Mapping[str, bytes], *,
                  drop: Callable[[str, str], bool] = lambda client, stage: False,
                  traffic: Callable[[str, str, str, int], None] | None = None) -> dict[str, str]:
    """:func:`exchange` with every party in this process: ``respond[c]`` answers a request to
    party ``c``. ``drop(client, stage)`` simulates a client that goes silent before sending its
    message of ``stage``. A party whose invariant fails (ProtocolAbort) aborts and goes silent;
    returns ``{party: reason}`` for those and for the simulated dropouts.
    Raises ProtocolAbort when the server aborts the round.
    """
    from privsem.errors import ProtocolAbort

    silent: dict[str, str] = {}
    stage = server.stage
    for c in first:
        if drop(c, stage):
            silent[c] = f"went silent before stage {stage} (simulated dropout)"

    def ask(stage: str, requests: Mapping[str, bytes]) -> dict[str, Answer]:
        answers: dict[str, Answer] = {}
        for c, req in requests.items():
            if drop(c, stage):
                answers[c] = Gone(f"went silent in stage {stage} (simulated dropout)")
                continue
            try:
                answers[c] = respond[c](req)
            except ProtocolAbort as e:
                answers[c] = Gone(str(e))
        return answers

    # A party silent before the first stage never reaches the server, and gets no request.
    return exchange(server, ask, first, traffic=traffic, absent=silent)


_REGISTRY: dict[str, Callable[[], AggregationBackend]] = {}


def register(name: str) -> Callable[[type[AggregationBackend]], type[AggregationBackend]]:
    def deco(cls: type[AggregationBackend]) -> type[AggregationBackend]:
        _REGISTRY[name] = cls
        return cls
    return deco


def get_backend(name: str) -> AggregationBackend:
    if name not in _REGISTRY:
        raise ValueError(f"aggregation backend {name!r} is unknown; use one of "
                         f"{', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()
