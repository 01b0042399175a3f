"""The Flower runtime's pieces without a simulation: the codec at the Flower boundary, the party
host and its relay, the transport's timeouts (T41), node discovery and the run-config
conversion."""

import pickle
import socket
import struct
import time

import pytest
from flwr.app import ConfigRecord, Error, Message, RecordDict

from privsem.aggregation.base import Gone
from privsem.config import FlowerConfig
from privsem.errors import ConfigError, MessageError, ProtocolAbort
from privsem.protocol.messages import Delivery, DeliveryAnswer, decode, encode
from privsem.runtime.flower.apps import (
    FlowerTransport,
    content_of,
    discover,
    frame_of,
    read_answer,
    read_delivery,
)
from privsem.runtime.flower.relay import PartyHost, recv_frame, relay, send_frame
from privsem.runtime.flower.simulation import SilentClients, from_run_config, with_clients

RUN = "run-1"


@pytest.fixture(autouse=True)
def flower_task():
    """Flower stamps every Message with the run and node of the task making it; outside a
    Flower process the test plays one task."""
    from flwr.supercore.task_identity import TaskIdentity

    before = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = before


def _msg(content, node=7):
    return Message(content, dst_node_id=node, message_type="query")


def _delivery(party="alice", kind="aggregate", stage="share", frame=b"req", run=RUN):
    return Delivery(run=run, party=party, kind=kind, stage=stage, frame=frame)


# ------------------------------------------------------------------------------ codec

def test_codec_round_trip_and_refusals():
    d = _delivery()
    assert read_delivery(_msg(content_of(encode(d)))) == d
    with pytest.raises(MessageError, match="exactly the record"):
        frame_of(_msg(RecordDict({"other": ConfigRecord({"frame": b"x"})})), "delivery")
    with pytest.raises(MessageError, match="holding only"):
        frame_of(_msg(RecordDict({"privsem": ConfigRecord({"frame": b"x", "extra": 1})})), "d")
    with pytest.raises(MessageError, match="not bytes"):
        frame_of(_msg(RecordDict({"privsem": ConfigRecord({"frame": "text"})})), "delivery")
    with pytest.raises(MessageError, match="exactly the record"):
        frame_of(_msg(RecordDict()), "delivery")
    err = Message(Error(code=3, reason="boom"), reply_to=_msg(content_of(encode(d))))
    with pytest.raises(MessageError, match="Flower error 3: boom"):
        frame_of(err, "delivery")
    # a pickle where a frame belongs is a malformed frame, never unpickled (T16)
    gadget = pickle.dumps(_delivery())
    with pytest.raises(MessageError):
        read_delivery(_msg(content_of(gadget)))


def _reply(answer):
    return _msg(content_of(encode(answer)))


def test_read_answer_maps_status_and_refuses_foreign_answers():
    ok = DeliveryAnswer(run=RUN, party="alice", status="reply", reason="", frame=b"up")
    assert read_answer(_reply(ok), run=RUN, party="alice") == b"up"
    none = DeliveryAnswer(run=RUN, party="alice", status="none", reason="", frame=b"")
    assert read_answer(_reply(none), run=RUN, party="alice") is None
    gone = DeliveryAnswer(run=RUN, party="alice", status="gone", reason="aborted: x", frame=b"")
    assert read_answer(_reply(gone), run=RUN, party="alice") == Gone("aborted: x")
    a = read_answer(_reply(ok), run=RUN, party="bob")  # an answer in another party's name
    assert isinstance(a, Gone) and "expected 'run-1' and 'bob'" in a.reason
    a = read_answer(_reply(ok), run="run-2", party="alice")  # an answer from another run
    assert isinstance(a, Gone)
    odd = DeliveryAnswer(run=RUN, party="alice", status="maybe", reason="", frame=b"")
    assert read_answer(_reply(odd), run=RUN, party="alice") == Gone("answer has status 'maybe'")
    a = read_answer(_msg(content_of(b"garbage")), run=RUN, party="alice")
    assert isinstance(a, Gone) and a.reason.startswith("malformed answer")


# ------------------------------------------------------------------------------ party host

class Recorder:
    def __init__(self, answer=b"pong"):
        self.answer, self.seen = answer, []

    def handle(self, kind, frame):
        self.seen.append((kind, frame))
        return self.answer


def _ask(host, d):
    return decode(relay(host.path, encode(d), timeout=10), DeliveryAnswer)


def test_party_host_delivers_and_refuses():
    alice = Recorder()
    with PartyHost(RUN, {"alice": alice}) as host:
        a = _ask(host, _delivery())
        assert (a.status, a.frame, a.party) == ("reply", b"pong", "alice")
        assert alice.seen == [("aggregate", b"req")]
        for d, why in ((_delivery(run="run-0"), "serves run 'run-1'"),
                       (_delivery(party="mallory"), "does not host party 'mallory'"),
                       (_delivery(kind="exec"), "unknown delivery kind 'exec'")):
            a = _ask(host, d)
            assert a.status == "gone" and why in a.reason
        assert len(alice.seen) == 1  # none of the refused deliveries reached alice


def _raw(path, data):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(data)
        return recv_frame(s)


def test_party_host_survives_malformed_frames():
    alice = Recorder()
    with PartyHost(RUN, {"alice": alice}) as host:
        # a pickle gadget in place of a delivery, and a frame announcing 4 GiB (T16)
        gadget = pickle.dumps(_delivery())
        a = decode(_raw(host.path, struct.pack("<I", len(gadget)) + gadget), DeliveryAnswer)
        assert a.status == "gone" and "malformed delivery" in a.reason
        a = decode(_raw(host.path, struct.pack("<I", 2**32 - 1)), DeliveryAnswer)
        assert a.status == "gone" and "exceeds" in a.reason
        assert _ask(host, _delivery()).status == "reply"  # and it still serves
        assert alice.seen == [("aggregate", b"req")]


def test_relay_frames_are_bounded():
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(MessageError, match="exceeds"):
            send_frame(a, b"x" * (70 * 1024 * 1024))
        a.sendall(struct.pack("<I", 10) + b"abc")
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(MessageError, match="closed 3 of 10 bytes"):
            recv_frame(b)


def test_party_host_faults_drop_and_hang():
    alice, bob = Recorder(), Recorder()
    faults = {("alice", "input"): "drop", ("bob", "input"): "hang"}
    with PartyHost(RUN, {"alice": alice, "bob": bob}, hang_seconds=3.0,
                   faults=lambda p, k, s: faults.get((p, s))) as host:
        with pytest.raises(ConnectionError, match="without an answer"):
            relay(host.path, encode(_delivery(stage="input")), timeout=10)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            relay(host.path, encode(_delivery(party="bob", stage="input")), timeout=0.5)
        assert time.monotonic() - t0 < 2.5
        # the hang holds no lock: alice is served while bob hangs
        assert _ask(host, _delivery(stage="share")).status == "reply"
        assert alice.seen == [("aggregate", b"req")] and bob.seen == []


# ------------------------------------------------------------------------------ transport

class FakeGrid:
    """Answers through ``reply(delivery, message)``; None means the node never answers."""

    def __init__(self, reply):
        self.reply, self.timeouts, self.sent = reply, [], []

    def send_and_receive(self, messages, *, timeout=None):
        self.timeouts.append(timeout)
        out = []
        for m in messages:
            self.sent.append(m)
            d = read_delivery(m)
            r = self.reply(d, m)
            if r is not None:
                out.append(r)
        return out


def _answer(d, m, status="reply", frame=b"ok", **kw):
    a = DeliveryAnswer(run=kw.get("run", d.run), party=kw.get("party", d.party), status=status,
                       reason="", frame=frame)
    return Message(content_of(encode(a)), reply_to=m)  # from m's destination node


def test_T41_transport_goes_on_at_its_timeout():
    def reply(d, m):
        if d.party == "bob":
            return None  # hung: no reply before the timeout
        if d.party == "carol":
            return Message(Error(code=0, reason="ClientApp raised"), reply_to=m)
        return _answer(d, m)

    grid = FakeGrid(reply)
    t = FlowerTransport(grid, {"alice": 1, "bob": 2, "carol": 3}, run=RUN, timeout=7.5,
                        notice_timeout=1.0)
    got = t.ask("aggregate", "share", {"alice": b"a", "bob": b"b", "carol": b"c", "dave": b"d"})
    assert got["alice"] == b"ok"
    assert got["bob"] == Gone("no answer in stage share after 0 s of 7.5 s (its node went "
                              "offline)")  # the fake grid returns at once
    assert isinstance(got["carol"], Gone) and "its node failed" in got["carol"].reason
    assert got["dave"] == Gone("no node hosts dave")
    t.ask("abort", "abort", {"bob": b"aborted"})
    assert grid.timeouts == [7.5, 1.0]  # never None: the server always proceeds
    wire = t.measured()
    assert wire["alice"]["up"] > 0 and wire["alice"]["down"] > len(b"a")
    assert "up" not in wire.get("bob", {}) or wire["bob"]["up"] == 0
    assert t.measured() == {}
    with pytest.raises(ValueError, match="never waits forever"):
        FlowerTransport(grid, {}, run=RUN, timeout=0)


def test_transport_ignores_replies_of_other_nodes_and_second_replies():
    class Twice(FakeGrid):
        def send_and_receive(self, messages, *, timeout=None):
            out = super().send_and_receive(messages, timeout=timeout)
            d = read_delivery(messages[0])
            stray = _answer(d, _msg(content_of(encode(d)), node=99), frame=b"stray")
            second = _answer(d, messages[0], frame=b"second")
            assert stray.metadata.src_node_id == 99
            return [*out, stray, second]

    t = FlowerTransport(Twice(_answer), {"alice": 1}, run=RUN, timeout=5)
    assert t.ask("spec", "spec", {"alice": b"s"}) == {"alice": b"ok"}


def test_discovery_refuses_duplicate_unknown_and_missing_parties():
    def grid_of(claims):
        def reply(d, m):
            party = claims.get(m.metadata.dst_node_id)
            if party is None:
                return None
            return _answer(d, m, party=party, frame=party.encode())
        return FakeGrid(reply)

    assert discover(grid_of({1: "alice", 2: "bob"}), [1, 2], ["alice", "bob"], run=RUN,
                    timeout=5) == {"alice": 1, "bob": 2}
    with pytest.raises(ProtocolAbort, match="both claim 'alice'"):
        discover(grid_of({1: "alice", 2: "alice"}), [1, 2], ["alice", "bob"], run=RUN,
                 timeout=5)
    with pytest.raises(ProtocolAbort, match="not a party of this run"):
        discover(grid_of({1: "alice", 2: "mallory"}), [1, 2], ["alice"], run=RUN, timeout=5)
    with pytest.raises(ProtocolAbort, match="no node hosts bob"):
        discover(grid_of({1: "alice"}), [1, 2], ["alice", "bob"], run=RUN, timeout=5)


# ------------------------------------------------------------------------------ configuration

def test_run_config_conversion_is_the_one_place():
    cfg = from_run_config({"preset": "smoke", "clients": 5, "privacy.client.epsilon": 4.0,
                           "flower.timeout": 30.0, "rounds": 1})
    assert [c.id for c in cfg.clients] == ["alice-0", "bob-1", "carol-2", "alice-3", "bob-4"]
    assert cfg.clients[3].model.name == cfg.clients[0].model.name
    assert (cfg.privacy.client.epsilon, cfg.flower.timeout, cfg.rounds) == (4.0, 30.0, 1)
    with pytest.raises(ConfigError, match="flower.timeout: 0.0 is not valid"):
        from_run_config({"preset": "smoke", "flower.timeout": 0.0})
    with pytest.raises(ConfigError, match="unknown field"):
        from_run_config({"preset": "smoke", "privacy.client.epsilonn": 4.0})
    with pytest.raises(ConfigError, match="either config or preset"):
        from_run_config({"preset": "smoke", "config": "x.yaml"})
    with pytest.raises(ConfigError, match="integer >= 2"):
        with_clients({"clients": [{"id": "a"}]}, 1)
    with pytest.raises(ConfigError, match="sum below 1"):
        FlowerConfig(dropout=0.6, hang=0.5)


def test_silent_clients_are_seeded_and_stay_silent_for_the_round():
    cfg = from_run_config({"preset": "smoke", "clients": 20, "flower.dropout": 0.1,
                           "flower.hang": 0.05, "flower.dropout_stages": ["share", "input"]})
    a, b = SilentClients(cfg), SilentClients(cfg)
    plan = a.plan(1)
    assert plan == b.plan(1) and plan != a.plan(2)
    assert sorted(how for _, how in plan.values()) == ["drop", "drop", "hang"]
    victim, (stage, how) = next(iter(plan.items()))
    assert a(victim, "spec", "spec") is None  # round 1 begins for the victim
    other = "share" if stage == "input" else "input"
    if stage == "input":
        assert a(victim, "aggregate", other) is None
    assert a(victim, "aggregate", stage) == how
    assert a(victim, "consensus", "consensus") == how  # silent for the rest of the round
    assert a(victim, "abort", "abort") is None  # notices still arrive
    assert a(victim, "spec", "spec") is None  # round 2: another plan


# ------------------------------------------------------------------------------ T41, every stage

class LoopbackGrid:
    """Flower's Grid as far as FlowerTransport uses it, on this machine: each message runs the
    real ClientApp (which relays to the party host) in its own thread, and the replies that are
    ready when ``timeout`` ends come back; a ClientApp that raises answers with a Flower error
    reply, as Flower does."""

    def __init__(self, app, nodes):
        from concurrent.futures import ThreadPoolExecutor

        self.app, self.nodes = app, nodes  # node id -> (party, host path)
        self.pool = ThreadPoolExecutor(max_workers=8)

    def get_node_ids(self):
        return list(self.nodes)

    def _run(self, m):
        from flwr.app import Context

        party, path = self.nodes[m.metadata.dst_node_id]
        ctx = Context(run_id=1, node_id=m.metadata.dst_node_id, state=RecordDict(),
                      node_config={"privsem-party": party, "privsem-host": path},
                      run_config={})
        try:
            return self.app(message=m, context=ctx)
        except Exception as e:  # noqa: BLE001 - Flower turns any ClientApp failure into this
            return Message(Error(code=2, reason=f"{type(e).__name__}: {e}"), reply_to=m)

    def send_and_receive(self, messages, *, timeout=None):
        from concurrent.futures import wait

        futures = [self.pool.submit(self._run, m) for m in messages]
        done, _ = wait(futures, timeout=timeout)
        return [f.result() for f in done]


# the masked advertise message is the answer to the spec, so "spec" covers a hang there
MASKED_STAGES = ("spec", "share", "input", "consistency", "unmask", "consensus")


@pytest.fixture(scope="module")
def smoke_federation(tmp_path_factory):
    from privsem.config import load_config
    from privsem.runtime.inprocess import setup

    # budget for more rounds than the stages below use: each case is one more round
    cfg = load_config(preset="smoke", overrides=["max_prompts=3", "evaluation.enabled=false",
                                                 "rounds=8"])
    return setup(cfg, tmp_path_factory.mktemp("t41"), lambda s: None)


@pytest.mark.parametrize("stage", MASKED_STAGES)
def test_T41_a_client_hung_at_any_stage_the_server_proceeds(smoke_federation, stage):
    from privsem.runtime.flower.apps import make_client_app
    from privsem.runtime.inprocess import run_round

    fed = smoke_federation
    rnd = max(c._last_round for c in fed.clients.values()) + 1
    fault = {("bob", stage)}
    spec_wait = 20.0 if stage == "spec" else 8.0  # the others train meanwhile
    with PartyHost(RUN, fed.endpoints, hang_seconds=spec_wait + 2,
                   faults=lambda p, k, s: "hang" if (p, s) in fault else None) as host:
        nodes = {10 + i: (p, host.path) for i, p in enumerate(fed.endpoints)}
        grid = LoopbackGrid(make_client_app(), nodes)
        net = FlowerTransport(grid, {p: n for n, (p, _) in nodes.items()}, run=RUN, timeout=1.0,
                              spec_timeout=spec_wait, notice_timeout=1.0)
        t0 = time.monotonic()
        traffic = run_round(fed, rnd, lambda s: None, transport=net)
        took = time.monotonic() - t0
    bob = fed.clients["bob"]
    limit = f"of {spec_wait if stage == 'spec' else 1:g} s (timeout)"

    def timed_out(text):
        return f"no answer in stage {stage} after" in text and limit in text

    assert any(timed_out(s) for s in bob.log.status) or (
        stage == "spec" and timed_out(traffic["bob"]["gone"]))
    result = fed.server.result
    assert result is not None, fed.server.abort_reason  # the two others carry the round
    # bob is counted only where his masked input was in before he hung (T3)
    counted = stage in ("consistency", "unmask", "consensus")
    assert ("bob" in result.contributors) == counted
    assert {"alice", "carol"} <= set(result.contributors)
    assert took < spec_wait + 40  # the round never waits for bob beyond its timeouts


def test_deploy_init_writes_a_deployment_folder_for_real_hosts(tmp_path, capsys):
    from cryptography import x509

    from privsem.cli import main
    from privsem.runtime.flower.deploy import deployment_id, read_registry
    from privsem.runtime.flower.pki import read_identity, read_secret

    out = tmp_path / "dep"
    assert main(["deploy", "init", "--out", str(out), "--host", "link.example.org",
                 "--host", "10.1.2.3"]) == 0
    cert = x509.load_pem_x509_certificate((out / "pki" / "superlink.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in san] == ["link.example.org", "10.1.2.3"]
    registry = read_registry(out / "registry.json")
    assert sorted(registry) == ["alice", "bob", "carol"]
    for c, public in registry.items():
        assert read_identity(out / "nodes" / c / "identity.key").public == public
        assert (out / "pki" / f"node-{c}").stat().st_mode & 0o077 == 0
    assert len(deployment_id(out)) == 32
    # a private key that others may read is refused; a folder is never reused
    key = out / "nodes" / "alice" / "identity.key"
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_secret(key)
    assert main(["deploy", "init", "--out", str(out), "--host", "x"]) == 2
    assert main(["deploy", "init", "--out", str(tmp_path / "ckks"), "--host", "x",
                 "--set", "aggregation.backend=ckks"]) == 2
    assert "key holder" in capsys.readouterr().err
