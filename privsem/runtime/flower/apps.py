"""privsem's Flower app: a ``ClientApp`` that relays to the node's party host, and the server
side of the round as a :class:`~privsem.runtime.parties.Transport` over Flower's ``Grid``.

Every privsem frame travels inside a Flower ``Message`` of type ``query``: its ``RecordDict``
holds one ``ConfigRecord`` named ``privsem`` with one ``bytes`` value, the wire-encoded
:class:`~privsem.protocol.messages.Delivery` (server → node) or
:class:`~privsem.protocol.messages.DeliveryAnswer` (node → server). Nothing else of the
message's content is read, and the frames are decoded and checked once, at the boundary
(:func:`read_delivery`, :func:`read_answer`). No pickle on either side.

A node names the party it hosts in its node config (``privsem-party``, with ``privsem-host``
the path of its party host's socket); in simulation the ClientApp maps Flower's
``partition-id`` onto the run's list of parties. The server learns which node hosts which
party by asking each node once (:func:`discover`); the answer is bound to nothing stronger than
the node's Flower identity (authenticated by SuperNode authentication in a deployment) and the
parties' own signatures in the masked protocol.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from privsem.aggregation.base import Answer, Gone
from privsem.errors import MessageError, ProtocolAbort
from privsem.protocol.messages import Delivery, DeliveryAnswer, decode, encode
from privsem.runtime.flower.relay import relay

RECORD = "privsem"  # the ConfigRecord that carries the frame
FIELD = "frame"
MESSAGE_TYPE = "query"
HELLO = "hello"  # the discovery kind, answered by the ClientApp itself
STATUSES = ("reply", "none", "gone")


# ------------------------------------------------------------------------------ codec

def content_of(frame: bytes) -> RecordDict:
    return RecordDict({RECORD: ConfigRecord({FIELD: frame})})


def frame_of(msg: Message, what: str) -> bytes:
    """The privsem frame inside ``msg``; MessageError when it holds anything else."""
    if msg.has_error():
        raise MessageError(f"{what}: Flower error {msg.error.code}: {msg.error.reason}")
    if not msg.has_content():
        raise MessageError(f"{what}: message has no content")
    content = msg.content
    if set(content.keys()) != {RECORD}:
        raise MessageError(f"{what}: expected exactly the record {RECORD!r}, got "
                           f"{sorted(content.keys())}")
    record = content[RECORD]
    if not isinstance(record, ConfigRecord) or set(record.keys()) != {FIELD}:
        raise MessageError(f"{what}: record {RECORD!r} must be a ConfigRecord holding only "
                           f"{FIELD!r}")
    frame = record[FIELD]
    if not isinstance(frame, bytes):
        raise MessageError(f"{what}: {FIELD!r} holds {type(frame).__name__}, not bytes")
    return frame


def read_delivery(msg: Message) -> Delivery:
    return decode(frame_of(msg, "delivery"), Delivery)  # type: ignore[no-any-return]


def read_answer(msg: Message, *, run: str, party: str) -> Answer:
    """The answer of ``party`` inside a reply; a node error, or a malformed or foreign reply,
    is a Gone."""
    if msg.has_error():
        return Gone(f"its node failed ({msg.error.reason})")
    try:
        a = decode(frame_of(msg, f"answer of {party}"), DeliveryAnswer)
    except MessageError as e:
        return Gone(f"malformed answer: {e}")
    if a.run != run or a.party != party:
        return Gone(f"answer names run {a.run!r} and party {a.party!r}, expected {run!r} and "
                    f"{party!r}")
    if a.status not in STATUSES:
        return Gone(f"answer has status {a.status!r}")
    if a.status == "gone":
        return Gone(a.reason)
    if a.status == "none":
        return None
    return a.frame


def wire_size(msg: Message) -> int:
    """Bytes of ``msg`` as Flower serialises it for transfer: the message and every object in
    its tree (records, arrays), deflated."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())


# ------------------------------------------------------------------------------ ClientApp

def make_client_app(*, parties: Sequence[str] = (), host: str | None = None,
                    relay_timeout: float = 3600.0) -> ClientApp:
    """The ClientApp. A node's ``privsem-party`` and ``privsem-host`` (node config) name its
    party and party host; without them (simulation) the party is ``parties[partition-id]`` and
    the host ``host``."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        party, path = _node_party(context, parties, host)
        d = read_delivery(msg)
        if d.kind == HELLO:
            reply = DeliveryAnswer(run=d.run, party=party, status="reply", reason="",
                                   frame=party.encode())
            return Message(content_of(encode(reply)), reply_to=msg)
        if d.party != party:
            raise ProtocolAbort(f"delivery for party {d.party!r} reached the node of {party!r}")
        # A host that gives no answer (crashed, hung) raises here: Flower replies with an
        # error, which the server reads as the party going silent.
        answer = relay(path, encode(d), timeout=relay_timeout)
        return Message(content_of(answer), reply_to=msg)

    return app


def _node_party(context: Context, parties: Sequence[str], host: str | None) -> tuple[str, str]:
    cfg = context.node_config
    party: Any = cfg.get("privsem-party")
    path: Any = cfg.get("privsem-host", host)
    if party is None:
        pid = cfg.get("partition-id")
        if not isinstance(pid, int) or not 0 <= pid < len(parties):
            raise ProtocolAbort(f"node config names no privsem-party and partition-id {pid!r} "
                                f"is not one of the run's {len(parties)} parties")
        party = parties[pid]
    if not isinstance(party, str) or not isinstance(path, str):
        raise ProtocolAbort("node config must give privsem-party and privsem-host as strings")
    return party, path


# ------------------------------------------------------------------------------ server side

class FlowerTransport:
    """Delivers frames to the parties' nodes through Flower's Grid.

    A batch of requests goes out at once and waits at most ``timeout`` seconds (``spec_timeout``
    for the spec, whose answer comes after training and generation); a party whose reply has
    not arrived by then is Gone (T41), as is one whose node answered with an error. Notices
    (``abort``, ``note``) wait at most ``notice_timeout``. ``wire`` accumulates the
    bytes of the Flower messages per party (see :func:`wire_size`) until :meth:`measured`."""

    def __init__(self, grid: Grid, nodes: Mapping[str, int], *, run: str, timeout: float,
                 spec_timeout: float | None = None, notice_timeout: float = 5.0,
                 group: Callable[[], str] = lambda: "") -> None:
        spec_timeout = timeout if spec_timeout is None else spec_timeout
        for name, t in (("timeout", timeout), ("spec_timeout", spec_timeout),
                        ("notice_timeout", notice_timeout)):
            if not t > 0:  # also refuses NaN; None never reaches Flower's wait-forever
                raise ValueError(f"{name} {t!r}: use a number of seconds > 0; a server never "
                                 "waits forever for a client")
        self.grid, self.nodes, self.run = grid, dict(nodes), run
        self.timeout, self.spec_timeout = timeout, spec_timeout
        self.notice_timeout, self.group = notice_timeout, group
        self.wire: dict[str, dict[str, int]] = {}

    def ask(self, kind: str, stage: str, frames: Mapping[str, bytes]) -> dict[str, Answer]:
        answers: dict[str, Answer] = {}
        sent: dict[int, str] = {}
        messages = []
        for party, frame in frames.items():
            if party not in self.nodes:
                answers[party] = Gone(f"no node hosts {party}")
                continue
            d = Delivery(run=self.run, party=party, kind=kind, stage=stage, frame=frame)
            m = Message(content_of(encode(d)), dst_node_id=self.nodes[party],
                        message_type=MESSAGE_TYPE, group_id=self.group())
            self._count(party, "down", wire_size(m))
            sent[self.nodes[party]] = party
            messages.append(m)
        wait = (self.notice_timeout if kind in ("abort", "note") else
                self.spec_timeout if kind == "spec" else self.timeout)
        t0 = time.monotonic()
        for reply in self.grid.send_and_receive(messages, timeout=wait) if messages else ():
            who = sent.get(reply.metadata.src_node_id)
            if who is None or who in answers:
                continue  # not ours, or a second reply: the first one counts
            self._count(who, "up", wire_size(reply))
            answers[who] = read_answer(reply, run=self.run, party=who)
        # Flower stops waiting at the limit, or earlier when it has dropped the node (a
        # SuperNode whose heartbeat stopped): either way the party gave no answer
        waited = time.monotonic() - t0
        why = "timeout" if waited >= wait - 0.5 else "its node went offline"
        for party in frames:
            answers.setdefault(party, Gone(f"no answer in stage {stage} after {waited:.0f} s "
                                           f"of {wait:g} s ({why})"))
        return answers

    def _count(self, party: str, direction: str, n: int) -> None:
        w = self.wire.setdefault(party, {"up": 0, "down": 0})
        w[direction] += n

    def measured(self) -> dict[str, dict[str, int]]:
        out, self.wire = self.wire, {}
        return out


def wait_for_nodes(grid: Grid, count: int, *, timeout: float) -> list[int]:
    """Node ids once at least ``count`` nodes are connected; ProtocolAbort after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            raise ProtocolAbort(f"only {len(nodes)} of {count} nodes connected within "
                                f"{timeout:g} s")
        time.sleep(0.2)


def discover(grid: Grid, node_ids: Iterable[int], parties: Sequence[str], *, run: str,
             timeout: float) -> dict[str, int]:
    """Asks every node which party it hosts; returns party -> node id. Refuses a party claimed
    by two nodes, a claim of a party the run does not have, and a party no node hosts."""
    messages = [Message(content_of(encode(Delivery(run=run, party="", kind=HELLO, stage=HELLO,
                                                   frame=b""))),
                        dst_node_id=n, message_type=MESSAGE_TYPE, group_id=HELLO)
                for n in node_ids]
    found: dict[str, int] = {}
    problems = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        try:
            a = decode(frame_of(reply, f"hello from node {node}"), DeliveryAnswer)
        except MessageError as e:
            problems.append(str(e))
            continue
        if a.run != run or a.status != "reply" or a.frame.decode(errors="replace") != a.party:
            problems.append(f"node {node} answered hello for run {a.run!r} with {a.status!r}")
        elif a.party not in parties:
            problems.append(f"node {node} hosts {a.party!r}, which is not a party of this run")
        elif a.party in found:
            problems.append(f"nodes {found[a.party]} and {node} both claim {a.party!r}")
        else:
            found[a.party] = node
    missing = [p for p in parties if p not in found]
    if missing:
        problems.append(f"no node hosts {', '.join(missing)}")
    if problems:
        raise ProtocolAbort("discovery: " + "; ".join(problems))
    return found


def make_server_app(main: Callable[[Grid, Context], Any]) -> ServerApp:
    app = ServerApp()
    app.main()(main)
    return app
