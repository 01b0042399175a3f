"""What a runtime delivers to a party, and how the party answers: one dispatch for every runtime.

A runtime moves frames; it never calls a client's handlers itself. It asks a :class:`Transport`
to deliver one kind of frame to several parties at once and gets an answer per party: a reply
frame, ``None`` (handled, nothing to send) or :class:`~privsem.aggregation.base.Gone` (the party
aborted, went silent or timed out). On the party's side an :class:`Endpoint` turns each
delivery into a call of the transport-free client (or helper party) and catches the client's
aborts, so an in-process call and a Flower message end in the same code.

Kinds (each a frame of privsem's wire format unless said otherwise):

- ``spec``: the round spec; answer: the back-end's first message, or None.
- ``aggregate``: a back-end request of a later stage; answer: the reply, or None.
- ``consensus``: the consensus broadcast; answer: a nomination (shared selection), or None.
- ``labels``: the chosen pseudo-labels (shared selection); answer: None.
- ``abort``: UTF-8 text, why the round is over for this party; answer: None.
- ``note``: UTF-8 text for the party's status (a helper party went silent); answer: None.

Rules for changing it: a new kind is added here, to :data:`KINDS`, and handled by every
endpoint; runtimes never branch on a party's type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from privsem.aggregation.base import Answer, Gone, Helper
from privsem.errors import ProtocolAbort
from privsem.protocol.messages import Stage

if TYPE_CHECKING:  # a relay imports this module without loading models
    from privsem.protocol.client import Client

KINDS = ("spec", "aggregate", "consensus", "labels", "abort", "note")
# A client mid-round when a new spec arrives missed the end of its last round (it went silent
# or its abort notice was lost); it closes that round as aborted before the new one.
_MID_ROUND = (Stage.SPEC, Stage.UPLOAD, Stage.CONSENSUS, Stage.NOMINATION, Stage.LABELS)


class Endpoint(Protocol):
    def handle(self, kind: str, frame: bytes) -> Answer: ...


class ClientEndpoint:
    """Delivers frames to a :class:`~privsem.protocol.client.Client`. A failed invariant aborts
    the client's round (with the reason in its status) and answers :class:`Gone`."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def handle(self, kind: str, frame: bytes) -> Answer:
        c = self.client
        try:
            if kind == "spec":
                if c.stage.stage in _MID_ROUND:
                    c.abort_round()
                    c.log.status.append("aborted: the next round began before this one ended")
                return c.on_round_spec(frame)
            if kind == "aggregate":
                return c.on_aggregation(frame)
            if kind == "consensus":
                if c.stage.stage is Stage.ABORTED:
                    return Gone("aborted earlier in this round")
                return c.on_consensus(frame)
            if kind == "labels":
                c.on_pseudo_labels(frame)
                return None
            if kind == "abort":
                if c.stage.stage is not Stage.ABORTED and c.stage.stage in _MID_ROUND:
                    c.abort_round()
                    c.log.status.append(_text(frame))
                return None
            if kind == "note":
                c.log.status.append(_text(frame))
                return None
        except ProtocolAbort as e:
            c.abort_round()
            c.log.status.append(f"aborted: {e}")
            return Gone(str(e))
        raise ProtocolAbort(f"client {c.id}: unknown delivery kind {kind!r}; "
                            f"known kinds are {', '.join(KINDS)}")


class HelperEndpoint:
    """Delivers back-end requests to a helper party (the CKKS key holder)."""

    def __init__(self, party: str, helper: Helper) -> None:
        self.party, self.helper = party, helper

    def handle(self, kind: str, frame: bytes) -> Answer:
        if kind in ("abort", "note"):
            return None
        if kind != "aggregate":
            return Gone(f"{self.party} takes part only in aggregation, not in {kind!r}")
        try:
            return self.helper.respond(frame)
        except ProtocolAbort as e:
            return Gone(str(e))


def _text(frame: bytes) -> str:
    return frame.decode("utf-8", errors="replace")


class Transport(Protocol):
    """Delivers ``frames`` (party -> frame) of one kind; ``stage`` names the protocol stage
    (the back-end's stage for ``aggregate``, else the kind). Returns an answer per party."""

    def ask(self, kind: str, stage: str, frames: Mapping[str, bytes]) -> dict[str, Answer]: ...

    def measured(self) -> dict[str, dict[str, int]]:
        """Bytes the transport itself put on the wire per party (``up``, ``down``) since the
        last call, envelopes included; {} where nothing travels."""
        ...


class InProcess:
    """Every party in this process: a delivery is a method call. ``drop(party, stage)``
    simulates a party that goes silent before answering in ``stage``; ``first_stage()`` names
    the back-end stage a client's spec answer belongs to (a client dropped there computed its
    upload but never sent it)."""

    def __init__(self, endpoints: Mapping[str, Endpoint], *,
                 drop: Callable[[str, str], bool], first_stage: Callable[[], str],
                 progress: Callable[[str], None]) -> None:
        self.endpoints, self.drop = endpoints, drop
        self.first_stage, self.progress = first_stage, progress

    def ask(self, kind: str, stage: str, frames: Mapping[str, bytes]) -> dict[str, Answer]:
        answers: dict[str, Answer] = {}
        for party, frame in frames.items():
            if kind == "spec":
                self.progress(f"{party} trains, generates, releases")
            elif kind in ("aggregate", "consensus") and self.drop(party, stage):
                answers[party] = Gone(f"went silent in stage {stage} (simulated dropout)")
                continue
            answers[party] = self.endpoints[party].handle(kind, frame)
            if kind == "spec" and answers[party] is not None and self.drop(
                    party, upload := self.first_stage()):
                answers[party] = Gone(f"went silent before stage {upload} (simulated dropout)")
        return answers

    def measured(self) -> dict[str, dict[str, int]]:
        return {}
