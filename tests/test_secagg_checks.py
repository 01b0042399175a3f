"""Honest-party checks of the masked back-end that the adversary tests did not pin down
(TESTING.md A: T2, T4-T12, T14-T16, T28, T30).

A mutation check disabled every `if ...: raise` guard of privsem/aggregation/masked/ and
privsem/protocol/wire.py one at a time and ran the secure-aggregation suites; the guards whose
removal no test noticed get a test here, each built so that it fails when that guard is removed
(its docstring names the guard). Helpers are those of test_secagg_adversary.py.
"""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from aggregation_harness import grid_inputs, make_round
from test_secagg_adversary import (
    L1,
    _assert_roster_refused,
    _begin,
    _corrupt_share_of,
    _ct,
    _delivery_stage,
    _flip,
    _forked_views,
    _input_frame,
    _join,
    _keys_frame,
    _play,
    _refuses,
    _roster_stage,
    _split,
    _sum,
    _unmask_req,
    _unmask_stage,
    _valid_params,
    _with_ciphertext,
)

from privsem.aggregation import ClientContext
from privsem.aggregation.masked import crypto, shamir
from privsem.aggregation.masked.client import (
    keys_transcript,
    survivors_transcript,
)
from privsem.aggregation.masked.crypto import Identity
from privsem.aggregation.masked.encoding import derive_params
from privsem.aggregation.masked.server import MaskedServer
from privsem.config import MaskedConfig
from privsem.errors import MessageError, ProtocolAbort
from privsem.protocol.messages import (
    MAGIC,
    MASK_TRANSITIONS,
    MAX_MESSAGE_BYTES,
    EmbeddingUpload,
    MaskedInput,
    MaskShares,
    MaskStage,
    SurvivorList,
    SurvivorSignature,
    decode,
    encode,
)
from privsem.rng import SeededRandomness


# --------------------------------------------------------------------------- T5 (client)
def _survivor_list_stage():
    r, inputs = _begin()
    reqs, aborted = _play(r, stop_at="consistency")
    assert not aborted
    return r, inputs, decode(reqs["c000"])


def test_T5_survivor_list_without_the_client_itself_is_refused():
    """Guards a check in client.py (me not in survivors)."""
    r, _, honest = _survivor_list_stage()
    others = tuple(c for c in honest.survivors if c != "c000")
    _refuses(r.clients["c000"], encode(replace(honest, survivors=others)),
             "client c000 is not among the survivors", MaskStage.INPUT)


def test_T5_T11_survivor_list_padded_with_an_id_outside_the_cohort_is_refused():
    """Guards the client's check of exactly this case. A phantom id would let the server reach
    min_survivors (T26) with only two real survivors."""
    r, _, honest = _survivor_list_stage()
    padded = replace(honest, survivors=("c000", "c001", "mallory"))
    _refuses(r.clients["c000"], encode(padded), r"survivors \['mallory'\] are not in the cohort",
             MaskStage.INPUT)


def test_T5_unmask_request_with_a_dropped_id_outside_the_cohort_is_refused():
    """Guards the client's check of exactly this case."""
    r, _, req = _unmask_stage()
    bad = replace(req, dropped=(*req.dropped, "mallory"))
    _refuses(r.clients["c000"], encode(bad), r"dropped clients \['mallory'\] are not in the cohort",
             MaskStage.CONSISTENCY)


def test_T5_unmask_request_that_omits_a_masked_with_peer_is_refused():
    """Guards a check in client.py: c004 (dropped at input, masked with by c000) in neither list."""
    r, _, req = _unmask_stage()
    assert req.dropped == ("c004",)
    _refuses(r.clients["c000"], encode(replace(req, dropped=())),
             r"peers \['c004'\] that client c000 masked with are listed neither",
             MaskStage.CONSISTENCY)


def test_T5_T8_a_peer_the_client_excluded_cannot_be_listed_as_surviving():
    """Guards a check in client.py that a peer excluded for a bad share (T8) is never listed
    as a survivor: c000 excludes c001, then the server's survivor list names c001 anyway."""
    r, _, d = _delivery_stage()
    tampered = _with_ciphertext(d["c000"], "c001", _flip(_ct(d["c000"], "c001"), -1))
    masked = decode(r.clients["c000"].respond(encode(tampered)))
    assert masked.excluded == ("c001",)
    r.server.receive("c000", encode(masked))
    for c in ("c001", "c002", "c003", "c004"):
        r.server.receive(c, r.clients[c].respond(encode(d[c])))
    reqs = r.server.next_requests()
    assert r.server.stage == "consistency" and "c001" not in decode(reqs["c000"]).survivors
    forged = replace(decode(reqs["c000"]), survivors=r.spec.cohort)
    _refuses(r.clients["c000"], encode(forged),
             r"client c000 excluded \['c001'\], yet they are listed as surviving",
             MaskStage.CONSISTENCY)


# --------------------------------------------------------------------------- T6 (client)
def test_T6_signature_of_a_colluding_non_survivor_does_not_count():
    """Guards a check in client.py (the `c not in msg.survivors` half). c004 is not in L1 but
    colludes
    with the server and signs L1 with its real identity; its signature must not make up the t."""
    r, sigs = _forked_views({"c000": L1, "c002": L1})
    sigs["c004"] = r.identities["c004"].sign(survivors_transcript(r.spec.session_id, L1))
    req = _unmask_req(r, L1, ("c004",), ("c000", "c002", "c004"), sigs)
    _refuses(r.clients["c000"], req, "c004 did not sign this survivor list",
             MaskStage.CONSISTENCY)


def test_T6_unmask_request_that_skips_the_consistency_round_is_refused():
    """Guards a check in client.py (stage check of the unmask request)."""
    r, _, honest = _survivor_list_stage()
    req = _unmask_req(r, honest.survivors, (), (), {})  # no survivor list was ever signed
    _refuses(r.clients["c000"], req, "unmask: request arrived in stage input", MaskStage.INPUT)


# --------------------------------------------------------------------------- T7 (client)
def test_T7_roster_with_columns_of_different_lengths_is_refused():
    """Guards the client's check of exactly this case."""
    r, roster = _roster_stage()
    for col in ("enc_pks", "mask_pks", "commitments", "signatures"):
        short = replace(roster, **{col: getattr(roster, col)[:-1]})
        _assert_roster_refused(r, short, "roster columns have different lengths")


# --------------------------------------------------------------------------- T8 (client)
def _sealed_c001_to_c000(r, body: bytes) -> bytes:
    sid = r.spec.session_id
    c000_enc = decode(r.first["c000"]).enc_pk
    shared = r.clients["c001"]._enc.agree(c000_enc, peer="c000")
    key = crypto.derive_key(shared, session_id=sid, label="share", parties=("c001", "c000"))
    return crypto.seal(key, body, crypto.share_ad(sid, "c001", "c000"))


@pytest.mark.parametrize("parts", [3, 5])
def test_T8_share_plaintext_with_the_wrong_number_of_parts_excludes_the_peer(parts):
    """Guards a check in client.py (`len(parts) != 4`): authentic AEAD from c001, right src/dst, but
    3 or 5 parts."""
    r, _, _d = _delivery_stage()
    e = bytes(shamir.ELEMENT_BYTES)
    body = crypto.transcript("c001", "c000", *([e] * (parts - 2)))
    ct = _sealed_c001_to_c000(r, body)
    with pytest.raises(ProtocolAbort, match="share from c001: src/dst do not match the envelope"):
        r.clients["c000"]._open_share("c001", ct)


def test_T8_share_plaintext_with_an_overrunning_length_prefix_excludes_the_peer():
    """Guards a check in client.py: the last part claims more bytes than the plaintext has."""
    r, _, _d = _delivery_stage()
    e = bytes(shamir.ELEMENT_BYTES)
    body = crypto.transcript("c001", "c000", e, e)[:-10]
    with pytest.raises(ProtocolAbort, match="share: malformed plaintext"):
        r.clients["c000"]._open_share("c001", _sealed_c001_to_c000(r, body))


# --------------------------------------------------------------------------- T9 / T10 (client)
def test_T9_request_with_only_the_round_number_changed_is_refused():
    """Guards a check in client.py (the round half; the session id alone binds the round today)."""
    r, roster = _roster_stage()
    _assert_roster_refused(r, replace(roster, round=roster.round + 1),
                           r"message from another session or round \(replay\)")


def test_T9_earlier_request_replayed_later_in_the_same_round_is_refused():
    """Guards a check in client.py: the roster again after c000 sent its shares."""
    r, roster = _roster_stage()
    r.clients["c000"].respond(encode(roster))
    assert r.clients["c000"].stage is MaskStage.SHARE
    _refuses(r.clients["c000"], encode(roster), "mask_roster arrived in stage share",
             MaskStage.SHARE)


def test_T9_a_peers_key_advert_sent_to_a_client_is_refused():
    """Guards a check in client.py (without it the client raises KeyError, not ProtocolAbort)."""
    r, _ = _roster_stage()
    _refuses(r.clients["c000"], r.first["c001"], "unexpected message mask_keys",
             MaskStage.ADVERTISE)


def test_T10_start_twice_is_refused():
    """Guards a check in client.py: a second start would draw fresh noise and a second
    encoding under the same masks."""
    r = make_round("masked", n=5)
    x = grid_inputs(r)["c000"]
    r.clients["c000"].start(x)
    with pytest.raises(ProtocolAbort, match="start called twice|noise drawn after the round"):
        r.clients["c000"].start(x)


def test_T28_noise_is_never_drawn_again_after_the_keys_left():
    """Guards add_noise's stage check: fresh noise after send would be a second
    release under the same masks."""
    r = make_round("masked", n=5)
    c, x = r.clients["c000"], grid_inputs(r)["c000"]
    c.send(c.add_noise(x))
    with pytest.raises(ProtocolAbort, match="noise drawn after the round started"):
        c.add_noise(x)


def test_T10_send_twice_is_refused():
    """Guards send's stage check."""
    r = make_round("masked", n=5)
    c = r.clients["c000"]
    w = c.add_noise(grid_inputs(r)["c000"])
    c.send(w)
    with pytest.raises(ProtocolAbort, match="start called twice"):
        c.send(w)


@pytest.mark.parametrize("fault", ["short", "long", "dtype", "above_R", "below_minus_R"])
def test_T12_T30_send_refuses_an_encoding_outside_the_round(fault):
    """Guards send's shape/dtype check (both clauses) and its ±R check: a cached or
    resumed release that does not fit the round must never be masked."""
    r = make_round("masked", n=5)
    c = r.clients["c000"]
    p = c.p
    w = c.add_noise(grid_inputs(r)["c000"])
    bad = {"short": w[:-1], "long": np.concatenate([w, w[:1]]), "dtype": w.astype(np.uint64),
           "above_R": w.copy(), "below_minus_R": w.copy()}[fault]
    if fault == "above_R":
        bad[0] = p.value_range + 1
    if fault == "below_minus_R":
        bad[0] = (p.modulus - p.value_range - 1) % p.modulus
    match = "outside" if fault.endswith("R") else "does not match the round"
    with pytest.raises(ProtocolAbort, match=match):
        c.send(bad)
    assert c.stage is None  # nothing was sent


# --------------------------------------------------------------------------- T11 / T14 (client)
def test_T11_client_without_an_identity_key_is_refused():
    """Guards the client's check of exactly this case."""
    r = make_round("masked", n=5)
    ctx = ClientContext(spec=r.spec, client_id="c000", randomness=SeededRandomness(0, "c000"),
                        identity=None, registry=r.registry)
    with pytest.raises(ProtocolAbort, match="needs a registered identity key"):
        r.backend.client(ctx)


def test_T14_client_refuses_invalid_round_parameters_with_a_protocol_abort():
    """Guards a check in client.py (a server-sent spec with bad parameters is a ProtocolAbort)."""
    r = make_round("masked", n=5)
    spec = replace(r.spec, params={"aggregation": {**r.params, "threshold": 1}})
    ctx = ClientContext(spec=spec, client_id="c000", randomness=SeededRandomness(0, "c000"),
                        identity=r.identities["c000"], registry=r.registry)
    with pytest.raises(ProtocolAbort, match="not valid masking parameters"):
        r.backend.client(ctx)


# --------------------------------------------------------------------------- server, T16/T7/T11
def _stray_input(r, client: str) -> bytes:
    return encode(MaskedInput(session_id=r.spec.session_id, round=r.spec.round, client=client,
                              excluded=(), vector=np.zeros(r.server.p.length, np.uint32)))


@pytest.mark.parametrize("stage, expected", [
    ("advertise", "mask_keys"), ("share", "mask_shares"), ("input", "masked_input"),
    ("consistency", "survivor_signature"), ("unmask", "unmask_shares")])
def test_T16_server_rejects_a_message_of_the_wrong_type_at_every_stage(stage, expected):
    """Guards the server's message-type check at each stage (without them the server crashes with an
    AttributeError, or rejects for the wrong reason)."""
    if stage == "advertise":
        r = make_round("masked", n=5)
        inputs = grid_inputs(r)
        r.start(inputs)
        for c, f in r.first.items():
            r.server.receive(c, _stray_input(r, c) if c == "c002" else f)
        _play(r)
    else:
        r, inputs = _begin()
        _play(r, on_response=lambda c, s, f: r.first["c002"] if (c, s) == ("c002", stage)
              else f)
    assert r.server.rejected["c002"] == f"{stage}: expected {expected}, got " + (
        "masked_input" if stage == "advertise" else "mask_keys")
    res = r.server.finish()
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


def test_T11_server_rejects_keys_of_a_member_without_a_registered_identity():
    """Guards a check in server.py (without it: KeyError inside receive)."""
    r = make_round("masked", n=5)
    inputs = grid_inputs(r)
    r.start(inputs)
    r.server = MaskedServer(r.spec, {c: k for c, k in r.registry.items() if c != "c004"})
    for c, f in r.first.items():
        r.server.receive(c, f)
    assert r.server.rejected["c004"] == "advertise: client has no registered identity key"
    _play(r)
    res = r.server.finish()
    assert res.contributors == ("c000", "c001", "c002", "c003")
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


def _signed_keys(r, who: str, **change: bytes) -> bytes:
    m = replace(decode(r.first[who]), **change)
    sig = r.identities[who].sign(keys_transcript(r.spec.session_id, who, m.enc_pk, m.mask_pk,
                                                 m.commitment))
    return encode(replace(m, signature=sig))


@pytest.mark.parametrize("field", ["enc_pk", "mask_pk", "commitment"])
def test_T7_server_rejects_signed_keys_of_the_wrong_length_and_the_round_completes(field):
    """Guards a check in server.py (each of its three halves). Forwarded, a 31-byte key makes every
    honest client abort (the client's key-length check): one malicious client would stop the
    round."""
    r = make_round("masked", n=5)
    inputs = grid_inputs(r)
    r.start(inputs)
    bad = _signed_keys(r, "c002", **{field: bytes(range(31))})
    for c, f in r.first.items():
        r.server.receive(c, bad if c == "c002" else f)
    _, aborted = _play(r)
    assert r.server.rejected["c002"] == "advertise: invalid public key length"
    assert set(aborted) <= {"c002"}
    res = r.server.finish()
    assert res.contributors == ("c000", "c001", "c003", "c004")
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


def test_T7_server_rejects_keys_with_a_bad_signature_and_the_round_completes():
    """Guards a check in server.py: forwarded, the bad signature makes every honest client abort."""
    r = make_round("masked", n=5)
    inputs = grid_inputs(r)
    r.start(inputs)
    m = decode(r.first["c002"])
    bad = encode(replace(m, signature=bytes(64)))
    for c, f in r.first.items():
        r.server.receive(c, bad if c == "c002" else f)
    _, _aborted = _play(r)
    assert r.server.rejected["c002"] == "advertise: keys are not signed by the registered identity"
    res = r.server.finish()
    assert res.contributors == ("c000", "c001", "c003", "c004")
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


def test_T11_server_rejects_shares_from_a_client_that_advertised_no_keys():
    """Guards a check in server.py: forwarded, such shares make every recipient abort."""
    r = make_round("masked", n=5)
    inputs = grid_inputs(r)
    r.start(inputs)
    for c, f in r.first.items():
        if c != "c002":
            r.server.receive(c, f)
    reqs = r.server.next_requests()
    for c, q in reqs.items():
        r.server.receive(c, r.clients[c].respond(q))
    others = ("c000", "c001", "c003", "c004")
    r.server.receive("c002", encode(MaskShares(
        session_id=r.spec.session_id, round=r.spec.round, client="c002", recipients=others,
        ciphertexts=tuple(bytes(100) for _ in others))))
    assert r.server.rejected["c002"] == "share: shares from a client that advertised no keys"
    _, aborted = _play(r)
    assert aborted == {}
    res = r.server.finish()
    assert res.contributors == others
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


def test_T2_server_rejects_a_masked_input_from_a_client_that_sent_no_shares():
    """Guards a check in server.py: c002 drops before its shares, then uploads a masked input."""
    r, inputs = _begin()
    reqs, aborted = _play(r, stop_at="input", drop=frozenset({("c002", "share")}))
    assert not aborted and "c002" not in reqs
    for c, q in reqs.items():
        r.server.receive(c, r.clients[c].respond(q))
    r.server.receive("c002", _stray_input(r, "c002"))
    assert r.server.rejected["c002"] == "input: masked input from a client outside the share stage"
    _, aborted = _play(r)
    assert aborted == {}
    res = r.server.finish()
    assert res.contributors == ("c000", "c001", "c003", "c004")
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


def test_T6_server_rejects_a_bad_survivor_signature_and_the_round_completes():
    """Guards a check in server.py: forwarded, the bad signature makes every client abort."""
    r, inputs = _begin()

    def forge(c: str, s: str, f: bytes) -> bytes:
        if (c, s) != ("c002", "consistency"):
            return f
        return encode(replace(decode(f), signature=bytes(64)))

    _, aborted = _play(r, on_response=forge)
    assert aborted == {}
    assert r.server.rejected["c002"] == "consistency: signature does not cover the survivor list"
    res = r.server.finish()
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


def test_T2_server_checks_a_dropped_clients_mask_key_against_its_public_key():
    """Guards the server's check of a dropped client's mask key against its public key: one bad
    mask-key share of dropped c004. With exactly t holders
    answering the server must abort; with more it must find a good subset."""
    r, _ = _begin()
    late = frozenset({("c004", "input"), ("c003", "unmask")})  # holders c000, c001, c002 = t
    with pytest.raises(ProtocolAbort, match="the shares of dropped c004 do not reconstruct"):
        _play(r, on_response=_corrupt_share_of("c002", "c004"), drop=late)
    r, inputs = _begin()
    _, aborted = _play(r, on_response=_corrupt_share_of("c002", "c004"),
                       drop=frozenset({("c004", "input")}))
    assert aborted == {}
    res = r.server.finish()
    assert res.contributors == ("c000", "c001", "c002", "c003")
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


def test_T16_server_skips_an_unmask_share_outside_the_field():
    """Guards a check in server.py (`except ValueError:
    continue`): a 66-byte share ≥ the prime."""
    r, inputs = _begin()

    def bad(c: str, s: str, f: bytes) -> bytes:
        if (c, s) != ("c002", "unmask"):
            return f
        m = decode(f)
        i = m.peers.index("c000")
        return encode(replace(m, shares=tuple(b"\xff" * 66 if j == i else x
                                              for j, x in enumerate(m.shares))))

    _, aborted = _play(r, on_response=bad)
    assert aborted == {}
    res = r.server.finish()
    assert res.contributors == r.spec.cohort
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


def test_T4_server_aborts_at_advertise_below_the_minimum_with_its_own_message():
    """Guards a check in server.py (without it the T4 test of the adversary suite still passes:
    clients refuse later)."""
    r2 = make_round("masked", n=5)
    r2.start(grid_inputs(r2))
    for c in ("c000", "c001"):
        r2.server.receive(c, r2.first[c])
    with pytest.raises(ProtocolAbort, match="2 clients advertised keys, below the minimum 3; "
                       "no aggregate is released"):
        r2.server.next_requests()
    assert r2.server.stage == "aborted"


def test_T16_server_rejects_words_outside_a_sub_word_modulus():
    """Guards a check in server.py (b = 40: words live in uint64)."""
    r = make_round("masked", n=5, settings=MaskedConfig(modulus_bits=40))
    inputs = grid_inputs(r)
    r.start(inputs)
    for c, f in r.first.items():
        r.server.receive(c, f)

    def high(c: str, s: str, f: bytes) -> bytes:
        if (c, s) != ("c001", "input"):
            return f
        m = decode(f)
        return encode(replace(m, vector=m.vector | np.uint64(1 << 45)))

    _play(r, on_response=high)
    assert "outside [0, 2^40)" in r.server.rejected["c001"]
    res = r.server.finish()
    assert "c001" not in res.contributors
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


# --------------------------------------------------------------------------- T14 (encoding)
@pytest.mark.parametrize("change, match", [
    ({"scale": 0.0}, "scale must be finite and > 0"),
    ({"scale": -1024.0}, "scale must be finite and > 0"),
    ({"scale": float("inf")}, "scale must be finite and > 0"),
    ({"scale": float("nan")}, "scale must be finite and > 0"),
    ({"clip": float("inf")}, "clip must be finite and > 0"),
    ({"noise_sigma": -1.0}, "noise_sigma must be finite and >= 0"),
    ({"noise_sigma": float("nan")}, "noise_sigma must be finite and >= 0"),
    ({"noise_sigma": float("inf")}, "noise_sigma must be finite and >= 0"),
    ({"placement": "central"}, "placement must be one of"),
    ({"degree": 0}, r"degree 0 must be in \[1, 4\]"),
    ({"degree": 5}, r"degree 5 must be in \[1, 4\]"),
    ({"min_survivors": 2}, "min_survivors 2 is below the threshold 3 of the complete graph"),
])
def test_T14_more_invalid_masking_params_raise_at_construction(change, match):
    """Guards MaskingParams' checks of scale and clip (both halves), noise_sigma, placement,
    degree and, for the complete graph, min_survivors >= t: each names the field."""
    good = _valid_params()
    with pytest.raises(ValueError, match=match):
        replace(good, **change)


def test_T14_range_below_scale_times_clip_raises():
    """Guards a check in encoding.py (q_range must hold the clipped input)."""
    good = _valid_params()
    with pytest.raises(ValueError, match="does not hold scale × clip"):
        replace(good, value_range=int(good.scale * good.clip) - 1)


def test_T14_derive_params_refuses_an_unknown_graph():
    """Guards a check in encoding.py (an unknown name silently became the Harary graph)."""
    with pytest.raises(ValueError, match="graph must be one of"):
        derive_params(cohort_size=5, length=24, clip=2.0, noise_multiplier=0.0,
                      modulus_bits=32, placement="local", graph="ring", threshold=0.6,
                      min_survivors=0.6, consistency_check=True)


# --------------------------------------------------------------------------- T15 (crypto)
@pytest.mark.parametrize("n", [16, 24, 31, 33])
def test_T15_mask_expansion_refuses_a_short_or_long_key(n):
    """Guards the key-length checks of mask expansion and the keystream (AES would silently run as
    AES-128/192 on a 16/24-byte key)."""
    ex = crypto.MaskExpander(64, 32)
    with pytest.raises(ValueError, match="mask key must be 32 bytes"):
        ex.add(np.zeros(64, np.uint32), bytes(n), +1)
    with pytest.raises(ValueError, match="mask key must be 32 bytes"):
        crypto.keystream(bytes(n), 16)


# --------------------------------------------------------------------------- T16 (wire)
def _header_frame(header: dict[str, Any], body: bytes, pad: int = 0) -> bytes:
    hb = json.dumps(header).encode() + b" " * pad
    return MAGIC + struct.pack("<I", len(hb)) + hb + body


def _more_hostile_frames() -> dict[str, bytes]:
    keys_h, keys_b = _split(_keys_frame())
    vec_h, vec_b = _split(_input_frame())
    out: dict[str, bytes] = {}
    out["magic_then_2_bytes"] = MAGIC + b"\x00\x00"  # W129a (struct.error without it)
    out["header_over_4MiB"] = _header_frame(keys_h, keys_b, pad=5 << 20)  # W132a
    sl = encode(SurvivorList(session_id="s", round=1, survivors=("a", "b")))
    (hlen,) = struct.unpack("<I", sl[4:8])
    out["header_length_past_an_empty_body"] = sl[:4] + struct.pack("<I", hlen + 100) + sl[8:]
    h = json.loads(json.dumps(vec_h))
    h["arrays"] = ["vector"]  # W149
    out["arrays_as_a_list"] = _join(h, vec_b)
    h = json.loads(json.dumps(keys_h))
    h["blobs"]["signature"] = h["blobs"]["signature"]["parts"]  # W176
    out["blob_descriptor_not_a_mapping"] = _join(h, keys_b)
    h = json.loads(json.dumps(vec_h))
    h["fields"]["excluded"] = "c001"  # W97: a string is not a tuple of ids
    out["tuple_field_as_a_string"] = _join(h, vec_b)
    h = json.loads(json.dumps(keys_h))
    h["blobs"]["commitment"]["parts"] = h["blobs"]["enc_pk"]["parts"]  # W188: overlap + gap
    out["blob_reuses_another_blobs_bytes"] = _join(h, keys_b)
    h = json.loads(json.dumps(vec_h))
    h["arrays"]["vector"]["shape"] = [24] + [1] * 69  # W163a: rank 70 > numpy's 64
    out["rank_70_shape"] = _join(h, vec_b)
    up = encode(EmbeddingUpload(session_id="s", round=1, client="a", noise_std=0.5,
                                matrix=np.zeros((2, 2), np.float32)))
    h, b = _split(up)
    h["fields"]["noise_std"] = True  # W109: a bool is not a float
    out["float_field_as_bool"] = _join(h, b)
    return out


@pytest.mark.parametrize("name", sorted(_more_hostile_frames()))
def test_T16_more_hostile_frames_raise_message_error(name):
    with pytest.raises(MessageError, match="decode"):
        decode(_more_hostile_frames()[name])


def test_T16_valid_frame_over_the_size_limit_is_refused_both_ways():
    """Guards the size limit of wire.py, in decode and in encode."""
    n = MAX_MESSAGE_BYTES // 4 + 1
    h, _ = _split(_input_frame())
    h["arrays"]["vector"].update(shape=[n], nbytes=4 * n)
    with pytest.raises(MessageError, match="exceeds"):
        decode(_join(h, bytes(4 * n)))
    with pytest.raises(MessageError, match="exceeds"):
        encode(MaskedInput(session_id="s", round=1, client="c000", excluded=(),
                           vector=np.zeros(n, np.uint32)))


def _sparse_round():
    r = make_round("masked", n=40, prompts=2, dim=4)
    inputs = grid_inputs(r, seed=11)
    r.start(inputs)
    for c, f in r.first.items():
        r.server.receive(c, f)
    return r, inputs


def test_T16_server_rejects_an_unmask_share_of_a_peer_the_holder_does_not_hold():
    """Guards a check in server.py (only reachable with a sparse graph: n=40, degree 16)."""
    r, inputs = _sparse_round()
    stranger = next(c for c in r.spec.cohort if c != "c000" and c not in r.server._graph["c000"])

    def extra(c: str, s: str, f: bytes) -> bytes:
        if (c, s) != ("c000", "unmask"):
            return f
        m = decode(f)
        return encode(replace(m, peers=(*m.peers, stranger), kinds=(*m.kinds, "self_mask"),
                              shares=(*m.shares, bytes(shamir.ELEMENT_BYTES))))

    _, aborted = _play(r, on_response=extra)
    assert aborted == {}
    assert r.server.rejected["c000"] == (f"unmask: share of {stranger}, which the client does "
                                         "not hold")
    res = r.server.finish()
    assert res.contributors == r.spec.cohort
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


def test_T16_server_rejects_shares_with_fewer_ciphertexts_than_recipients():
    """Guards a check in server.py (the length clause): with all recipients named but one ciphertext
    missing, the server would crash (KeyError) building the deliveries."""
    r, inputs = _begin(n=6)

    def short(c: str, s: str, f: bytes) -> bytes:
        if (c, s) != ("c002", "share"):
            return f
        m = decode(f)
        return encode(replace(m, ciphertexts=m.ciphertexts[:-1]))

    _, aborted = _play(r, on_response=short)
    assert aborted == {}
    assert "not addressed to exactly the client's neighbours" in r.server.rejected["c002"]
    res = r.server.finish()
    assert "c002" not in res.contributors
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


def test_T16_dict_field_given_as_a_list_is_a_message_error():
    """Guards a check in wire.py (RoundSpec.params must be a mapping)."""
    spec = make_round("masked", n=3).spec
    h, b = _split(encode(spec))
    h["fields"]["params"] = [1, 2]
    with pytest.raises(MessageError, match="decode"):
        decode(_join(h, b))


# --------------------------------------------------------------------------- server envelope
def test_T9_server_rejects_keys_with_only_the_round_number_changed():
    """Guards the round half of the server's envelope check: the keys' signature covers the
    session id, not the round field, so only that check catches a message relabelled as
    another round."""
    r = make_round("masked", n=5)
    inputs = grid_inputs(r)
    r.start(inputs)
    relabelled = encode(replace(decode(r.first["c002"]), round=r.spec.round + 1))
    for c, f in r.first.items():
        r.server.receive(c, relabelled if c == "c002" else f)
    _, aborted = _play(r)
    assert aborted == {}
    res = r.server.finish()
    assert res.rejected == {"c002": "advertise: message belongs to another session or round "
                                    "(replay)"}
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


def test_T11_server_rejects_a_registered_client_outside_the_cohort():
    """Guards the cohort half of the server's envelope check: a node the registry knows but
    the round did not select sends validly signed keys; it must not enter the round."""
    r = make_round("masked", n=5)
    inputs = grid_inputs(r)
    r.start(inputs)
    outsider = Identity()
    r.server = MaskedServer(r.spec, {**r.registry, "c005": outsider.public})
    keys = decode(r.first["c004"])
    sig = outsider.sign(keys_transcript(r.spec.session_id, "c005", keys.enc_pk, keys.mask_pk,
                                        keys.commitment))
    r.server.receive("c005", encode(replace(keys, client="c005", signature=sig)))
    assert r.server.rejected == {"c005": "advertise: sender is not a member of this round's "
                                         "cohort"}
    for c, f in r.first.items():
        r.server.receive(c, f)
    _, aborted = _play(r)
    assert aborted == {}
    res = r.server.finish()
    assert res.contributors == r.spec.cohort
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


@pytest.mark.parametrize("stage", ["advertise", "input"])
def test_T11_server_rejects_a_message_that_names_another_sender(stage):
    """Guards the sender half of the server's envelope check: c002 sends c003's keys (or its
    own masked input labelled as c003's) under its own connection."""
    if stage == "advertise":
        r = make_round("masked", n=5)
        inputs = grid_inputs(r)
        r.start(inputs)
        for c, f in r.first.items():
            r.server.receive(c, r.first["c003"] if c == "c002" else f)
        _play(r)
    else:
        r, inputs = _begin()
        _play(r, on_response=lambda c, s, f: encode(replace(decode(f), client="c003"))
              if (c, s) == ("c002", "input") else f)
    assert r.server.rejected["c002"] == f"{stage}: message names 'c003' as its sender"
    res = r.server.finish()
    assert "c002" not in res.contributors
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


def test_T16_server_stage_machine_refuses_a_transition_outside_the_table():
    """Guards the server's transition-table check (DESIGN.md §3: a stage enum and a
    transition table): every stage that the table does not list as next is refused."""
    for here, allowed in MASK_TRANSITIONS.items():
        for to in MaskStage:
            if to in allowed:
                continue
            r = make_round("masked", n=5)
            r.server._stage = here  # test-only: place the server in each stage
            with pytest.raises(ProtocolAbort, match=f"{here.value} -> {to.value} is not allowed"):
                r.server._advance(to)


def test_T16_server_rejects_shares_that_name_a_recipient_twice():
    """Guards the duplicate-recipient clause of the server's share check: c002 addresses two
    ciphertexts to c003 (and one to each other neighbour); kept, one of them would be dropped
    silently."""
    r, inputs = _begin()

    def twice(c: str, stage: str, f: bytes) -> bytes:
        if (c, stage) != ("c002", "share"):
            return f
        m = decode(f)
        i = m.recipients.index("c003")
        return encode(replace(m, recipients=(*m.recipients, "c003"),
                              ciphertexts=(*m.ciphertexts, m.ciphertexts[i])))

    _, aborted = _play(r, on_response=twice)
    assert aborted == {}
    res = r.server.finish()
    assert res.rejected == {"c002": "share: shares are not addressed to exactly the client's "
                                    "neighbours"}
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


def test_T6_server_rejects_a_survivor_signature_from_a_client_that_did_not_survive():
    """Guards the server's check that signers are survivors: c004 went silent before its
    masked input, then signs the survivor list anyway. Forwarded, its signature would make
    every honest client abort (they count only survivors' signatures, T6)."""
    r, inputs = _begin()
    reqs, _ = _play(r, stop_at="consistency", drop=frozenset({("c004", "input")}))
    survivors = decode(reqs["c000"]).survivors
    assert "c004" not in survivors
    for c, req in reqs.items():
        r.server.receive(c, r.clients[c].respond(req))
    sig = r.identities["c004"].sign(survivors_transcript(r.spec.session_id, survivors))
    r.server.receive("c004", encode(SurvivorSignature(
        session_id=r.spec.session_id, round=r.spec.round, client="c004", signature=sig)))
    assert r.server.rejected == {"c004": "consistency: signature from a client that is not a "
                                         "survivor"}
    _, aborted = _play(r)
    assert aborted == {}
    res = r.server.finish()
    assert res.contributors == survivors
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


@pytest.mark.parametrize("fault", ["short_kinds", "peer_twice"])
def test_T16_server_rejects_malformed_unmask_shares(fault):
    """Guards the server's shape check of unmask shares: columns of different lengths (zip
    would cut them silently) or a peer listed twice."""
    r, inputs = _begin()

    def bad(c: str, stage: str, f: bytes) -> bytes:
        if (c, stage) != ("c000", "unmask"):
            return f
        m = decode(f)
        if fault == "short_kinds":
            return encode(replace(m, kinds=m.kinds[:-1]))
        return encode(replace(m, peers=(*m.peers, m.peers[0]), kinds=(*m.kinds, m.kinds[0]),
                              shares=(*m.shares, m.shares[0])))

    _, aborted = _play(r, on_response=bad)
    assert aborted == {}
    res = r.server.finish()
    assert res.rejected == {"c000": "unmask: malformed unmask shares"}
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


def test_server_stops_recombining_after_its_bound(monkeypatch):
    """Guards the server's bound on Shamir recombinations (hostile shares cannot make it try
    all C(n, t) subsets): with the bound at 1, only the first subset is tried; it holds c002's
    bad share of c000, so the server aborts where the unbounded search would find a good
    subset (test_server_sums_correctly_past_one_bad_share_among_more_than_t)."""
    import privsem.aggregation.masked.server as server_mod

    monkeypatch.setattr(server_mod, "MAX_RECOMBINATIONS", 1)
    r, _ = _begin()
    with pytest.raises(ProtocolAbort, match="the shares of survivor c000 do not reconstruct its "
                       "committed secret"):
        _play(r, on_response=_corrupt_share_of("c002", "c000"))
    assert r.server.stage == "aborted"


@pytest.mark.parametrize("bits", [0, 65, -1])
def test_T14_word_dtype_refuses_moduli_outside_1_to_64_bits(bits):
    """Guards word_dtype's range check: 2^65 does not fit a uint64 word."""
    with pytest.raises(ValueError, match=r"modulus bits must be in \[1, 64\]"):
        crypto.word_dtype(bits)


@pytest.mark.parametrize("acc", [np.zeros(24, np.uint64), np.zeros(23, np.uint32),
                                 np.zeros((2, 12), np.uint32)])
def test_T15_mask_expansion_refuses_an_accumulator_of_the_wrong_dtype_or_shape(acc):
    """Guards MaskExpander.add's accumulator check: a uint64 accumulator under a 32-bit modulus
    would carry past 2^32 (the sum would no longer be mod 2^b), a short one would be masked
    only in part."""
    ex = crypto.MaskExpander(24, 32)
    with pytest.raises(ValueError, match=r"mask accumulator must be uint32\(24,\)"):
        ex.add(acc, bytes(range(32)), +1)


@pytest.mark.parametrize("part", [[-64, 64], [0, -1]])
def test_T16_byte_range_with_a_negative_offset_or_length_is_refused(part):
    """Guards the two sign clauses of the wire format's byte-range check: Python slicing would
    read a negative offset from the end of the body."""
    h, b = _split(_keys_frame())
    h["blobs"]["signature"]["parts"] = [part]
    with pytest.raises(MessageError, match=r"bytes signature\[0\] lies outside the frame"):
        decode(_join(h, b))


@pytest.mark.parametrize("frame", [None, "PSM1 a string", 12345])
def test_T16_a_frame_that_is_not_bytes_is_a_message_error(frame):
    """Guards decode's type check: without it None or an int raise TypeError, which a server
    would not treat as a rejected message."""
    with pytest.raises(MessageError, match="frame must be bytes"):
        decode(frame)


def test_T16_a_single_bytes_field_sent_in_two_parts_is_refused():
    """Guards the part count of a non-tuple bytes field: the signature's bytes split into two
    parts (covering the body exactly) are not one signature."""
    h, b = _split(_keys_frame())
    (off, n), = h["blobs"]["signature"]["parts"]
    h["blobs"]["signature"]["parts"] = [[off, n // 2], [off + n // 2, n - n // 2]]
    with pytest.raises(MessageError, match="bytes field signature has 2 parts"):
        decode(_join(h, b))
