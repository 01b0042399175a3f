"""Fuzz of the decoding boundary (issue 19): a seeded mutation corpus over every message type and
every entry point that takes a frame from another party.

What a mutation may end in: the decoder raises :class:`MessageError` (or returns a message of the
type it claims); a server-side entry point excludes the sender and never raises; a client-side
entry point returns or raises a :class:`PrivsemError` (an abort with a reason). Any other
exception, a call slower than :data:`SLOW_S`, or a decode that allocates more than
:data:`PEAK_BYTES` fails the test. Removing the decoder's depth or integer bound makes
``test_decoder_refuses_every_mutation_with_a_typed_error`` fail (a ``RecursionError`` or a
``ValueError`` escapes), which ``test_the_bounds_are_what_stops_them`` checks directly.
"""

from __future__ import annotations

import dataclasses
import json
import random
import struct
import time
import tracemalloc
import typing
import zlib
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from privsem.errors import MessageError, PrivsemError
from privsem.protocol import wire
from privsem.protocol.messages import MAGIC, MESSAGE_TYPES, decode, encode

SLOW_S = 2.0
PEAK_BYTES = 48 * 1024 * 1024
_RAW = "\x00RAW\x00"  # placeholder replaced by raw (non-JSON-encodable) header text

# Raw header texts an attacker can write that json.dumps never would.
HOSTILE_RAW = [
    "[" * 100_000 + "]" * 100_000,  # nests 100,000 deep (RecursionError without the bound)
    "9" * 5_000,  # past Python's integer-string limit (ValueError without the bound)
    "-" + "1" * 30,
    "NaN", "Infinity", "-Infinity", "1e999",
    '"\\ud800"',  # a lone surrogate
    '"' + "x" * (wire.MAX_STRING_CHARS + 1) + '"',
    "[" + ",".join(["0"] * (wire.MAX_ITEMS + 1)) + "]",
    '{"a":' * 20 + "1" + "}" * 20,
]
HOSTILE_VALUES: list[Any] = [None, True, False, -1, 0, 2 ** 70, 1.5, "", "x" * 300, [], {},
                             [1, 2], {"a": [1]}, [None], ["a", None, 3]]


def sample(cls: Any) -> Any:
    """A valid instance of a message type, built from its annotations."""
    hints = typing.get_type_hints(cls)
    kw = {f.name: _value(hints[f.name], f.name) for f in dataclasses.fields(cls)}
    return cls(**kw)


def _value(tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, __import__("types").UnionType):
        return _value(next(a for a in typing.get_args(tp) if a is not type(None)), name)
    if origin is tuple:
        item = typing.get_args(tp)[0]
        return tuple(_value(item, name) for _ in range(3))
    if origin is dict or tp is dict:
        return {"clip": 1.0, "aggregation": {"noise_multiplier": 0.5, "clip": 2.0}}
    if tp is bool:
        return True
    if tp is int:
        return 1
    if tp is float:
        return 0.25
    if tp is str:
        return f"{name}-value"
    if tp is bytes:
        return b"\x01\x02" * 8
    if tp is np.ndarray:
        return np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    raise TypeError(f"no sample for {tp!r}")


def split(frame: bytes) -> tuple[dict[str, Any], bytes]:
    (hlen,) = struct.unpack("<I", frame[4:8])
    return json.loads(frame[8:8 + hlen]), frame[8 + hlen:]


def join(header: Any, body: bytes, raw: str | None = None) -> bytes:
    text = json.dumps(header, separators=(",", ":"))
    if raw is not None:
        text = text.replace(json.dumps(_RAW), raw, 1)
    hb = text.encode("utf-8", "surrogatepass")
    return MAGIC + struct.pack("<I", len(hb)) + hb + body


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path] if path else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*path, i))
    return out


def _set(node: Any, path: tuple[Any, ...], value: Any) -> None:
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def mutate(frame: bytes, rng: random.Random) -> bytes:
    """One seeded mutation of a valid frame."""
    kind = rng.randrange(9)
    if kind == 0:  # flip bytes
        b = bytearray(frame)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == 1:  # truncate
        return frame[:rng.randrange(len(frame))]
    if kind == 2:  # insert bytes
        at = rng.randrange(len(frame) + 1)
        return frame[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))) + \
            frame[at:]
    header, body = split(frame)
    paths = _paths(header)
    if kind in (3, 4):  # hostile raw text in place of a value
        _set(header, rng.choice(paths), _RAW)
        return join(header, body, rng.choice(HOSTILE_RAW))
    if kind == 5:  # a value of another type
        _set(header, rng.choice(paths), rng.choice(HOSTILE_VALUES))
        return join(header, body)
    if kind == 6:  # a field removed, or one added
        section = header[rng.choice(["fields", "arrays", "blobs"])]
        if section and rng.random() < 0.5:
            section.pop(rng.choice(sorted(section)))
        else:
            section["extra"] = 1
        return join(header, body)
    if kind == 7 and header["arrays"]:  # non-finite array entries, shapes that lie
        name = rng.choice(sorted(header["arrays"]))
        meta = header["arrays"][name]
        if rng.random() < 0.5 and meta["dtype"] in ("<f4", "<f8"):
            arr = bytearray(body)
            bad = np.array([rng.choice([np.nan, np.inf, -np.inf])], dtype=meta["dtype"])
            at = meta["offset"] + meta["nbytes"] // 2 // bad.itemsize * bad.itemsize
            if meta["nbytes"]:
                arr[at:at + bad.itemsize] = bad.tobytes()
            return join(header, bytes(arr))
        meta["shape"] = rng.choice([[2 ** 31, 2 ** 31], [-1], [0], [2 ** 62], [1] * 9])
        return join(header, body)
    # a header that is not a message at all
    return join(rng.choice([[1, 2], "frame", 7, {"version": wire.VERSION}, None]), body)


def corpus(frame: bytes, n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [mutate(frame, rng) for _ in range(n)]


def _timed(call: Any) -> Any:
    t0 = time.perf_counter()
    try:
        return call()
    finally:
        took = time.perf_counter() - t0
        if took > SLOW_S:
            pytest.fail(f"a mutated frame took {took:.1f}s (more than {SLOW_S}s)")


# --------------------------------------------------------------------------- the decoder
@pytest.mark.parametrize("mtype", sorted(MESSAGE_TYPES))
def test_decoder_refuses_every_mutation_with_a_typed_error(mtype):
    cls = MESSAGE_TYPES[mtype]
    frame = encode(sample(cls))
    assert type(decode(frame, cls)) is cls  # the sample itself is valid
    refused = 0
    tracemalloc.start()
    try:
        for k, bad in enumerate(corpus(frame, 160, seed=zlib.crc32(mtype.encode()))):
            tracemalloc.reset_peak()
            try:
                msg = _timed(lambda: decode(bad))  # noqa: B023
            except MessageError:
                refused += 1
            except Exception as e:  # noqa: BLE001 - what the test is about
                pytest.fail(f"{mtype} mutation {k}: {type(e).__name__} escaped the decoder: "
                            f"{str(e)[:200]}")
            else:
                assert type(msg) in MESSAGE_TYPES.values()
            peak = tracemalloc.get_traced_memory()[1]
            assert peak < PEAK_BYTES, f"{mtype} mutation {k}: decoding allocated {peak} bytes"
    finally:
        tracemalloc.stop()
    assert refused >= 100  # the corpus is hostile: most mutations must be refused


def test_the_bounds_are_what_stops_them(monkeypatch):
    """Without the depth bound, a deeply nested header escapes as RecursionError; without the
    integer bound, a long integer escapes as ValueError: the fuzz test would catch both."""
    header, body = split(encode(sample(MESSAGE_TYPES["round_spec"])))
    deep = join({**header, "fields": {**header["fields"], "round": _RAW}}, body,
                "[" * 100_000 + "]" * 100_000)
    long = join({**header, "fields": {**header["fields"], "round": _RAW}}, body, "9" * 5_000)
    for frame in (deep, long):
        with pytest.raises(MessageError):
            decode(frame)
    monkeypatch.setattr(wire, "MAX_DEPTH", 10 ** 9)
    with pytest.raises(RecursionError):
        decode(deep)
    monkeypatch.setattr(wire, "MAX_INT_DIGITS", 10 ** 9)
    with pytest.raises(ValueError, match="digits"):
        decode(long)


def test_non_finite_arrays_are_refused_in_every_message():
    for cls in MESSAGE_TYPES.values():
        msg = sample(cls)
        arrays = [f.name for f in dataclasses.fields(cls)
                  if isinstance(getattr(msg, f.name), np.ndarray)]
        for name in arrays:
            arr = getattr(msg, name).copy()
            arr.flat[1] = np.nan
            with pytest.raises(MessageError, match="non-finite"):
                decode(encode(replace(msg, **{name: arr})))


# --------------------------------------------------------------------------- aggregation parties
def _aggregation_fuzz(backend: str, seed: int, per_stage: int,
                      victim_id: str = "c000") -> tuple[int, int]:
    """Runs rounds of ``backend`` in which one client's message of one stage (server side) or
    the request to it (client side) is a mutation; every outcome but an untyped exception is
    allowed. Returns (rounds run, rounds in which the victim was excluded or aborted)."""
    from aggregation_harness import grid_inputs, make_round

    from privsem.errors import ProtocolAbort

    probe = make_round(backend, n=5, seed=seed)
    probe.start(grid_inputs(probe))
    stages = 0
    counting = probe.responders()

    def count(c: str, fn: Any) -> Any:
        def inner(req: bytes) -> bytes | None:
            nonlocal stages
            if c == victim_id:
                stages += 1
            return fn(req)
        return inner

    from privsem.aggregation import run_exchanges
    run_exchanges(probe.server, {c: count(c, f) for c, f in counting.items()}, probe.first)
    rng = random.Random(seed)
    rounds = hit = 0
    for stage in range(stages + 1):  # 0: the first upload; k: the answer to the k-th request
        for side in ("server", "client"):
            if stage == 0 and (side == "client" or victim_id not in probe.first):
                continue
            for _ in range(per_stage):
                r = make_round(backend, n=5, seed=seed)
                r.start(grid_inputs(r))
                seen = 0
                if stage == 0:
                    r.first[victim_id] = mutate(r.first[victim_id], rng)
                responders = r.responders()

                def victim(req: bytes, fn: Any = responders[victim_id], st: int = stage,
                           sd: str = side) -> bytes | None:
                    nonlocal seen
                    seen += 1
                    if seen == st and sd == "client":
                        return _timed(lambda: fn(mutate(req, rng)))
                    out = fn(req)
                    if seen == st and sd == "server" and out is not None:
                        return mutate(out, rng)
                    return out

                responders[victim_id] = victim
                try:
                    gone = _timed(lambda rr=r, rs=responders: run_exchanges(rr.server, rs,
                                                                            rr.first))
                    if victim_id in r.server.finish().contributors or (
                            victim_id not in r.spec.cohort and victim_id not in gone):
                        gone.pop(victim_id, None)  # the mutation left the message intact
                    else:
                        gone.setdefault(victim_id, "excluded")
                except ProtocolAbort:
                    gone = {victim_id: "the round aborted"}
                except Exception as e:  # noqa: BLE001 - what the test is about
                    pytest.fail(f"{backend} stage {stage} ({side}): {type(e).__name__} escaped: "
                                f"{str(e)[:200]}")
                rounds += 1
                hit += victim_id in gone
    return rounds, hit


@pytest.mark.parametrize("backend", ["plaintext", "masked"])
def test_aggregation_entry_points_exclude_or_abort_never_crash(backend):
    rounds, hit = _aggregation_fuzz(backend, seed=7, per_stage=12)
    assert rounds >= 12 and hit >= rounds // 2


@pytest.mark.slow
def test_ckks_entry_points_exclude_or_abort_never_crash():
    from aggregation_harness import make_round

    rounds, hit = _aggregation_fuzz("ckks", seed=11, per_stage=4)
    assert rounds >= 4 and hit >= rounds // 2
    holders = list(make_round("ckks", n=5).helpers)
    assert holders  # the key holder answers the server's decryption request
    rounds, hit = _aggregation_fuzz("ckks", seed=12, per_stage=4, victim_id=holders[0])
    assert rounds >= 8 and hit >= rounds // 4


# --------------------------------------------------------------------------- protocol parties
def _typed_or_nothing(name: str, call: Any, frames: list[bytes], reset: Any) -> None:
    """Feeds each frame to ``call``: it may return or raise a PrivsemError, nothing else;
    ``reset()`` after each puts the party back in the stage the frames are meant for."""
    for bad in frames:
        try:
            _timed(lambda: call(bad))  # noqa: B023
        except PrivsemError:
            pass
        except Exception as e:  # noqa: BLE001 - what the test is about
            pytest.fail(f"{name}: {type(e).__name__} escaped: {str(e)[:200]}")
        reset()


def test_protocol_entry_points_refuse_mutations_with_a_reason(tmp_path):
    """Client.on_round_spec, on_consensus and on_pseudo_labels and the server's
    choose_labels, on mutations of real frames of a smoke run."""
    from privsem.config import load_config
    from privsem.protocol.messages import ConsensusBroadcast, Nomination, PseudoLabels, Stage
    from privsem.runtime.inprocess import setup

    cfg = load_config(preset="smoke", overrides=["rounds=2", "evaluation.enabled=false",
                                                 "consensus.selection=shared"])
    fed = setup(cfg, tmp_path, lambda s: None)
    alice = fed.clients["alice"]
    spec_frame = fed.server.open_round(1, tuple(fed.clients))
    spec = decode(spec_frame)
    rng_seed = 3
    for bad in corpus(spec_frame, 120, rng_seed):
        try:
            if decode(bad) == spec:
                continue  # the mutation did not change the message
        except MessageError:
            pass
        try:
            _timed(lambda: alice.on_round_spec(bad))  # noqa: B023
        except PrivsemError:
            continue
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"on_round_spec: {type(e).__name__} escaped: {str(e)[:200]}")
        pytest.fail("on_round_spec accepted a changed round announcement")
    assert not fed.ledger.entries  # nothing charged by any of them
    alice.on_round_spec(spec_frame)
    P, d = len(spec.prompt_ids), alice.embedder.dim
    cb = ConsensusBroadcast(session_id=spec.session_id, round=1, contributors=spec.cohort,
                            noise_std_of_consensus=0.0,
                            consensus=np.full((P, d), 1 / np.sqrt(d), np.float32),
                            agreement=np.ones(P, np.float32), weight=np.full(P, 0.5, np.float32))
    stage = alice.stage.stage  # a mutation that was still valid moves it on: put it back
    _typed_or_nothing("on_consensus", alice.on_consensus, corpus(encode(cb), 120, rng_seed + 1),
                      lambda: setattr(alice.stage, "stage", stage))
    alice.on_consensus(encode(cb))
    assert alice.stage.stage is Stage.NOMINATION
    labels = PseudoLabels(session_id=spec.session_id, round=1,
                          texts=tuple(f"label {j}" for j in range(P)))
    _typed_or_nothing("on_pseudo_labels", alice.on_pseudo_labels,
                      corpus(encode(labels), 120, rng_seed + 2),
                      lambda: setattr(alice.stage, "stage", Stage.NOMINATION))
    # the server's side of shared selection: a mutated nomination is excluded, never raised
    from privsem.consensus import Consensus

    server = fed.server
    server.consensus = Consensus(cb.consensus.astype(np.float64), np.ones(P), 0.0,
                                 np.full(P, 0.5))
    assert server.spec is not None and server.embedder is not None
    nom = encode(Nomination(session_id=spec.session_id, round=1, client="alice",
                            texts=tuple(f"answer {j}" for j in range(P))))
    for bad in corpus(nom, 60, rng_seed + 3):
        server.stage.stage = Stage.CONSENSUS
        try:
            _timed(lambda: server.choose_labels({"alice": bad}))  # noqa: B023
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"choose_labels: {type(e).__name__} escaped: {str(e)[:200]}")
