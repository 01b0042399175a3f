"""The masked back-end against a malicious server, malicious peers and hostile bytes (TESTING.md
A: T5–T9, T11, T14, T16), plus the secret types, Shamir sharing and the server's share checks.

The tests play the adversary with the real protocol: a round is driven stage by stage
(:func:`_play`), the honest server's requests are decoded, changed with
:func:`dataclasses.replace` and re-encoded, and forged keys, signatures and ciphertexts are made
with the real primitives of :mod:`privsem.aggregation.masked.crypto`. A forged roster entry is
re-signed with that client's registered identity: the server colludes with that client. Every
abort is matched on the message of the check that must catch it, so removing the check fails
the test. Rounds use the harness defaults (n=5, complete graph, threshold 3, min_survivors 3).

Three bugs found here were pinned by ``xfail(strict=True)`` tests and then fixed; the tests
stay as regressions: the client's missing survivors-within-its-masked-set check (T6), the
server's sum after a masked input is rejected (T9/T16), and a shape product overflow in the wire
decoder (T16).
"""

from __future__ import annotations

import copy
import inspect
import itertools
import json
import pickle
import struct
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from aggregation_harness import Round, grid_inputs, make_round

from privsem.aggregation import ClientContext
from privsem.aggregation.masked import client as masked_client
from privsem.aggregation.masked import crypto, shamir
from privsem.aggregation.masked import server as masked_server
from privsem.aggregation.masked.client import keys_transcript, pair_sign, share_point
from privsem.aggregation.masked.encoding import MaskingParams, decode_sum, derive_params
from privsem.config import load_config
from privsem.errors import ConfigError, MessageError, ProtocolAbort
from privsem.protocol import wire
from privsem.protocol.messages import (
    MAGIC,
    MAX_MESSAGE_BYTES,
    MaskedInput,
    MaskKeys,
    MaskRoster,
    MaskSharesDelivery,
    MaskStage,
    SurvivorList,
    UnmaskRequest,
    UnmaskShares,
    decode,
    encode,
)
from privsem.rng import SeededRandomness

ORDER_8_POINT = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
LOW_ORDER_POINTS = {
    "zero": bytes(32),
    "one": bytes([1]) + bytes(31),  # order 4
    "order8": ORDER_8_POINT,
    "order8_b": bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    "p_minus_1": bytes.fromhex("ec" + "ff" * 30 + "7f"),  # u = p − 1, order 2
}

Hook = Callable[[str, str, bytes], bytes | None]


# --------------------------------------------------------------------------- driving a round
def _begin(n: int = 5, seed: int = 0, on_first: dict[str, bytes] | None = None, **kw: Any
           ) -> tuple[Round, dict[str, np.ndarray]]:
    """A round whose clients have sent their keys to the server (``on_first[c]`` instead of
    client ``c``'s own first message, if given)."""
    r = make_round("masked", n=n, **kw)
    inputs = grid_inputs(r, seed=seed)
    r.start(inputs)
    for c, frame in r.first.items():
        r.server.receive(c, (on_first or {}).get(c, frame))
    return r, inputs


def _play(r: Round, *, stop_at: str | None = None, on_request: Hook | None = None,
          on_response: Hook | None = None, drop: frozenset[tuple[str, str]] = frozenset()
          ) -> tuple[dict[str, bytes], dict[str, str]]:
    """Moves messages like :func:`run_exchanges`, with the server's stage after each batch of
    requests ("share" for rosters, "input" for deliveries, "consistency" for survivor lists,
    "unmask" for unmask requests). Stops before delivering the batch of stage ``stop_at``
    and returns it. ``on_request``/``on_response`` rewrite one frame (None swallows it);
    ``drop`` holds (client, stage) pairs that go silent. Returns (undelivered, aborted)."""
    aborted: dict[str, str] = {}
    while reqs := r.server.next_requests():
        stage = r.server.stage
        if stage == stop_at:
            return reqs, aborted
        for c, req in reqs.items():
            if c in aborted or (c, stage) in drop:
                continue
            if on_request is not None:
                req = on_request(c, stage, req)
            try:
                resp = r.clients[c].respond(req)
            except ProtocolAbort as e:
                aborted[c] = str(e)
                continue
            if on_response is not None and resp is not None:
                resp = on_response(c, stage, resp)
            if resp is not None:
                r.server.receive(c, resp)
    return {}, aborted


def _sum(inputs: dict[str, np.ndarray], members: Any) -> np.ndarray:
    return np.sum([inputs[c].astype(np.float64) for c in members], axis=0)


def _unmask_stage(drop_at_input: str | None = "c004"
                  ) -> tuple[Round, dict[str, np.ndarray], UnmaskRequest]:
    """A round at its unmask stage (signatures collected), with ``drop_at_input`` silent
    before its masked upload so that the request has a dropped client."""
    r, inputs = _begin()
    drop = frozenset({(drop_at_input, "input")}) if drop_at_input else frozenset()
    reqs, aborted = _play(r, stop_at="unmask", drop=drop)
    assert not aborted
    return r, inputs, decode(reqs["c000"])


def _refuses(client: Any, frame: bytes, match: str, stage: MaskStage | None) -> None:
    """``client`` aborts on ``frame`` with ``match``: it answers nothing (no frame comes back),
    stays aborted, and refuses every later request, honest or not. The test then rewinds the
    client to ``stage`` so that the next lie can be tried on the same state."""
    with pytest.raises(ProtocolAbort, match=match):
        client.respond(frame)
    assert client.stage is MaskStage.ABORTED
    with pytest.raises(ProtocolAbort, match="already aborted"):
        client.respond(frame)
    client.stage = stage  # test-only rewind


# --------------------------------------------------------------------------- T5
@pytest.mark.parametrize("case", ["both", "dropped_twice", "survivor_twice", "self_dropped"])
def test_T5_unmask_request_with_contradictory_lists_reveals_nothing(case):
    r, _, req = _unmask_stage()
    assert req.dropped == ("c004",) and "c001" in req.survivors
    bad, match = {
        "both": (replace(req, dropped=(*req.dropped, "c001")),
                 "client c001 listed as both surviving and dropped"),
        "dropped_twice": (replace(req, dropped=("c004", "c004")), "dropped client listed twice"),
        "survivor_twice": (replace(req, survivors=(*req.survivors, "c001")),
                           "survivor listed twice"),
        "self_dropped": (replace(req, survivors=tuple(c for c in req.survivors if c != "c000"),
                                 dropped=(*req.dropped, "c000")),
                         "client c000 is listed as dropped"),
    }[case]
    _refuses(r.clients["c000"], encode(bad), match, MaskStage.CONSISTENCY)
    # Control: the same request without the lie is answered (by c001, who got it too).
    shares = decode(r.clients["c001"].respond(encode(req)))
    assert isinstance(shares, UnmaskShares) and r.clients["c001"].stage is MaskStage.DONE
    assert dict(zip(shares.peers, shares.kinds))["c004"] == masked_client.MASK_KEY


def test_T5_a_peer_both_surviving_and_dropped_would_give_the_server_both_shares():
    """Why T5 matters: the two halves a server must never hold together for one peer."""
    r, _, req = _unmask_stage()
    both = replace(req, dropped=(*req.dropped, "c001"))
    _refuses(r.clients["c002"], encode(both), "both surviving and dropped", MaskStage.CONSISTENCY)
    shares = decode(r.clients["c003"].respond(encode(req)))
    kinds = [k for p, k in zip(shares.peers, shares.kinds) if p == "c001"]
    assert kinds == [masked_client.SELF_MASK]  # one share per peer, never both


# --------------------------------------------------------------------------- T6
L1 = ("c000", "c001", "c002", "c003")  # c004 "dead"
L2 = ("c000", "c001", "c002", "c004")  # c003 "dead"


def _forked_views(views: dict[str, tuple[str, ...]]) -> tuple[Round, dict[str, bytes]]:
    """The server shows each client in ``views`` its own survivor list; returns each client's
    signature (over the list it was shown)."""
    r, _ = _begin()
    reqs, _ = _play(r, stop_at="consistency")
    honest = decode(reqs["c000"])
    assert honest.survivors == r.spec.cohort
    sigs = {c: decode(r.clients[c].respond(encode(replace(honest, survivors=view)))).signature
            for c, view in views.items()}
    return r, sigs


def _unmask_req(r: Round, survivors: tuple[str, ...], dropped: tuple[str, ...],
                signers: tuple[str, ...], sigs: dict[str, bytes]) -> bytes:
    return encode(UnmaskRequest(session_id=r.spec.session_id, round=r.spec.round,
                                survivors=survivors, dropped=dropped, signers=signers,
                                signatures=tuple(sigs[c] for c in signers)))


def test_T6_request_for_a_survivor_list_the_client_did_not_sign():
    # c000 signed L1; c001, c002, c004 signed L2: three valid signatures over L2.
    r, sigs = _forked_views({"c000": L1, "c001": L2, "c002": L2, "c004": L2})
    req = _unmask_req(r, L2, ("c003",), ("c001", "c002", "c004"), sigs)
    _refuses(r.clients["c000"], req, "client c000 signed a different survivor list",
             MaskStage.CONSISTENCY)


def test_T6_signature_over_another_clients_view_is_detected():
    r, sigs = _forked_views({"c000": L1, "c002": L1, "c003": L1, "c001": L2, "c004": L2})
    # c001 signed L2, not L1: the server passes its signature off as one over L1.
    req = _unmask_req(r, L1, ("c004",), ("c000", "c001", "c002"), sigs)
    _refuses(r.clients["c000"], req, "c001 did not sign this survivor list",
             MaskStage.CONSISTENCY)
    # A signature by a client outside the survivor list is refused too.
    req = _unmask_req(r, L1, ("c004",), ("c000", "c002", "c004"), sigs)
    _refuses(r.clients["c000"], req, "c004 did not sign this survivor list",
             MaskStage.CONSISTENCY)
    # A signature under the wrong signer's name.
    forged = decode(_unmask_req(r, L1, ("c004",), ("c000", "c002", "c003"), sigs))
    swapped = replace(forged, signatures=(forged.signatures[0], forged.signatures[2],
                                          forged.signatures[1]))
    _refuses(r.clients["c000"], encode(swapped), "c002 did not sign this survivor list",
             MaskStage.CONSISTENCY)
    # Control: c002 (who signed L1 too) accepts the genuine signatures over L1.
    ok = decode(r.clients["c002"].respond(encode(forged)))
    assert isinstance(ok, UnmaskShares) and r.clients["c002"].stage is MaskStage.DONE


def test_T6_too_few_signatures_and_malformed_signature_lists():
    r, sigs = _forked_views({"c000": L1, "c002": L1, "c003": L1})
    client = r.clients["c000"]
    _refuses(client, _unmask_req(r, L1, ("c004",), ("c000", "c002"), sigs),
             "2 signatures from the share holders of c000, below the threshold 3",
             MaskStage.CONSISTENCY)
    full = decode(_unmask_req(r, L1, ("c004",), ("c000", "c002", "c003"), sigs))
    _refuses(client, encode(replace(full, signers=("c000", "c002", "c002"))),
             "malformed signature list", MaskStage.CONSISTENCY)
    _refuses(client, encode(replace(full, signatures=full.signatures[:2])),
             "malformed signature list", MaskStage.CONSISTENCY)


def test_T6_forked_views_never_yield_both_shares_of_a_peer():
    """The server shows L1 to c000, c001, c003 and L2 to c002, c004, then sends every client
    the request for its own view with every signature it holds over that view. The minority
    view lacks signatures and its clients abort; across all answers the server never holds a
    peer's self-mask share and mask-key share together."""
    views = {"c000": L1, "c001": L1, "c003": L1, "c002": L2, "c004": L2}
    r, sigs = _forked_views(views)
    answers, refused = [], {}
    for c, view in views.items():
        signers = tuple(s for s, v in views.items() if v == view)
        dropped = tuple(x for x in r.spec.cohort if x not in view)
        try:
            answers.append(decode(r.clients[c].respond(_unmask_req(r, view, dropped, signers,
                                                                   sigs))))
        except ProtocolAbort as e:
            refused[c] = str(e)
    assert set(refused) == {"c002", "c004"}
    assert all("signatures from the share holders of" in m and "below the threshold 3" in m
               for m in refused.values())
    revealed = {(p, k) for m in answers for p, k in zip(m.peers, m.kinds)}
    assert not any((p, masked_client.SELF_MASK) in revealed and
                   (p, masked_client.MASK_KEY) in revealed for p in r.spec.cohort)


def _attacker_unmasks(r: Round, target: str, y: np.ndarray, shares: list[UnmaskShares],
                      live: tuple[str, ...]) -> np.ndarray:
    """What a server holding these unmask shares computes for ``target`` alone."""
    p, sid, t = r.server.p, r.spec.session_id, r.server.p.threshold

    def secret(peer: str, kind: str) -> bytes:
        pts = {share_point(r.spec.cohort, m.client): s for m in shares
               for j, k, s in zip(m.peers, m.kinds, m.shares) if j == peer and k == kind}
        return shamir.combine(dict(list(pts.items())[:t]), threshold=t)

    keys = {c: decode(r.first[c]) for c in r.spec.cohort}
    ex = crypto.MaskExpander(p.length, p.modulus_bits)
    acc = y.copy()
    seed = secret(target, masked_client.SELF_MASK)
    ex.add(acc, crypto.derive_key(seed, session_id=sid, label="self-mask", parties=(target,)),
           -1)
    for j in live:
        pair = crypto.KeyPair.from_secret(crypto.Secret(secret(j, masked_client.MASK_KEY)))
        shared = pair.agree(keys[target].mask_pk, peer=target)
        key = crypto.derive_key(shared, session_id=sid, label="pair-mask",
                                parties=tuple(sorted((target, j))))
        ex.add(acc, key, -pair_sign(target, j))
    ex.reduce(acc)
    return decode_sum(acc, p).astype(np.float64) / p.scale


def test_T6_survivors_outside_the_clients_live_set_are_refused():
    r, inputs = _begin()
    target, live, others = "c000", ("c001", "c002"), ("c003", "c004")
    reqs, _ = _play(r, stop_at="input")
    y = None
    for c, req in reqs.items():  # c000 sees only c001 and c002 alive at the share stage
        d = decode(req)
        if c == target:
            keep = [i for i, s in enumerate(d.senders) if s in live]
            d = replace(d, senders=tuple(d.senders[i] for i in keep),
                        ciphertexts=tuple(d.ciphertexts[i] for i in keep))
            y = decode(r.clients[c].respond(encode(d))).vector
        else:
            r.clients[c].respond(encode(d))
    survivors, dropped = (target, *others), live
    listing = encode(SurvivorList(session_id=r.spec.session_id, round=r.spec.round,
                                  survivors=survivors))
    sigs = {c: decode(r.clients[c].respond(listing)).signature for c in others}
    try:  # an honest c000 must refuse to sign this list ...
        sigs[target] = decode(r.clients[target].respond(listing)).signature
    except ProtocolAbort:
        return
    request = _unmask_req(r, survivors, dropped, survivors, sigs)
    shares = [decode(r.clients[c].respond(request)) for c in others]
    try:  # ... or refuse to unmask
        shares.append(decode(r.clients[target].respond(request)))
    except ProtocolAbort:
        return
    leaked = _attacker_unmasks(r, target, y, shares, live)
    assert not np.array_equal(leaked, inputs[target].reshape(-1)), (
        "the server recovered c000's individual input")


# --------------------------------------------------------------------------- T7
def _roster_stage() -> tuple[Round, MaskRoster]:
    r, _ = _begin()
    reqs = r.server.next_requests()
    assert r.server.stage == "share"
    return r, decode(reqs["c000"])


def _forge(r: Round, roster: MaskRoster, who: str, **keys: bytes) -> MaskRoster:
    """``who``'s roster entry with ``keys`` (enc_pk, mask_pk, commitment) replaced and
    re-signed by ``who``'s registered identity (``who`` colludes with the server)."""
    i = roster.clients.index(who)
    cols = {f: list(getattr(roster, f)) for f in ("enc_pks", "mask_pks", "commitments",
                                                  "signatures")}
    for name, value in keys.items():
        cols[name + "s"][i] = value
    cols["signatures"][i] = r.identities[who].sign(keys_transcript(
        r.spec.session_id, who, cols["enc_pks"][i], cols["mask_pks"][i], cols["commitments"][i]))
    columns: dict[str, Any] = {f: tuple(v) for f, v in cols.items()}
    return replace(roster, **columns)


def _without(roster: MaskRoster, *gone: str) -> MaskRoster:
    keep = [i for i, c in enumerate(roster.clients) if c not in gone]
    columns: dict[str, Any] = {f: tuple(getattr(roster, f)[i] for i in keep) for f in (
        "clients", "enc_pks", "mask_pks", "commitments", "signatures")}
    return replace(roster, **columns)


def _assert_roster_refused(r: Round, roster: MaskRoster, match: str) -> None:
    _refuses(r.clients["c000"], encode(roster), match, MaskStage.ADVERTISE)


def test_T7_roster_with_a_duplicate_key():
    r, roster = _roster_stage()
    i = roster.clients.index("c001")
    for field in ("mask_pk", "enc_pk"):
        twin = _forge(r, roster, "c002", **{field: getattr(roster, field + "s")[i]})
        _assert_roster_refused(r, twin, r"invalid public key \(the roster repeats a key\)")
    # One client's enc key reused as another's mask key is a repeat too.
    cross = _forge(r, roster, "c002", mask_pk=roster.enc_pks[i])
    _assert_roster_refused(r, cross, "repeats a key")


def test_T7_roster_with_own_keys_twice_or_own_entry_twice():
    r, roster = _roster_stage()
    me = roster.clients.index("c000")
    # c001 (colluding) advertises c000's own keys as its own.
    stolen = _forge(r, roster, "c001", enc_pk=roster.enc_pks[me], mask_pk=roster.mask_pks[me])
    _assert_roster_refused(r, stolen, "invalid public key .*repeats a key")
    doubled = replace(roster, **{f: (*getattr(roster, f), getattr(roster, f)[me]) for f in (
        "clients", "enc_pks", "mask_pks", "commitments", "signatures")})
    _assert_roster_refused(r, doubled, "roster lists a client twice")


def test_T7_roster_without_own_key_or_with_substituted_own_key():
    r, roster = _roster_stage()
    _assert_roster_refused(r, _without(roster, "c000"), "own key missing from the roster")
    me = roster.clients.index("c000")
    other = crypto.KeyPair().public
    swapped = replace(roster, mask_pks=tuple(other if i == me else k
                                             for i, k in enumerate(roster.mask_pks)))
    _assert_roster_refused(r, swapped, "carries keys that are not its own")


@pytest.mark.parametrize("length", [0, 31, 33, 64])
@pytest.mark.parametrize("field", ["enc_pk", "mask_pk"])
def test_T7_roster_with_a_key_of_the_wrong_length(field, length):
    r, roster = _roster_stage()
    bad = _forge(r, roster, "c003", **{field: bytes(range(length))})
    _assert_roster_refused(r, bad, r"invalid public key \(length is not 32\)")


@pytest.mark.parametrize("point", sorted(LOW_ORDER_POINTS))
@pytest.mark.parametrize("field", ["enc_pk", "mask_pk"])
def test_T7_roster_with_a_low_order_point(field, point):
    r, roster = _roster_stage()
    bad = _forge(r, roster, "c003", **{field: LOW_ORDER_POINTS[point]})
    _assert_roster_refused(r, bad, "invalid public key of c003: low-order point")


def test_T7_key_agreement_refuses_low_order_points_and_bad_lengths():
    kp = crypto.KeyPair()
    for point in LOW_ORDER_POINTS.values():
        with pytest.raises(ProtocolAbort, match="invalid public key of x: low-order point"):
            kp.agree(point, peer="x")
    with pytest.raises(ProtocolAbort, match="invalid public key of x: expected 32 bytes"):
        kp.agree(bytes(31), peer="x")
    with pytest.raises(ProtocolAbort, match="expected 32 bytes"):
        kp.agree(bytearray(32), peer="x")  # type: ignore[arg-type]
    other = crypto.KeyPair()
    assert kp.agree(other.public, peer="y") == other.agree(kp.public, peer="x") != bytes(32)


def test_T7_unsigned_forged_key_is_refused():
    """Without the colluding client's identity, a forged key fails the signature check."""
    r, roster = _roster_stage()
    i = roster.clients.index("c003")
    bad = replace(roster, mask_pks=tuple(crypto.KeyPair().public if j == i else k
                                         for j, k in enumerate(roster.mask_pks)))
    _assert_roster_refused(r, bad, "keys of c003 are not signed by its registered identity")


# --------------------------------------------------------------------------- T8
def _delivery_stage() -> tuple[Round, dict[str, np.ndarray], dict[str, MaskSharesDelivery]]:
    r, inputs = _begin()
    reqs, _ = _play(r, stop_at="input")
    return r, inputs, {c: decode(f) for c, f in reqs.items()}


def _with_ciphertext(d: MaskSharesDelivery, sender: str, ct: bytes) -> MaskSharesDelivery:
    return replace(d, ciphertexts=tuple(ct if s == sender else x
                                        for s, x in zip(d.senders, d.ciphertexts)))


def _ct(d: MaskSharesDelivery, sender: str) -> bytes:
    return d.ciphertexts[d.senders.index(sender)]


def _flip(b: bytes, at: int) -> bytes:
    """``b`` with the lowest bit of byte ``at`` (negative counts from the end) flipped."""
    at %= len(b)
    return b[:at] + bytes([b[at] ^ 0x01]) + b[at + 1:]


def _resealed_to_c000_naming(r: Round, src: str, dst: str) -> bytes:
    """A ciphertext that c001 (malicious) seals correctly to c000, whose plaintext claims to
    be from ``src`` to ``dst``."""
    sid = r.spec.session_id
    c000_enc = decode(r.first["c000"]).enc_pk
    shared = r.clients["c001"]._enc.agree(c000_enc, peer="c000")
    key = crypto.derive_key(shared, session_id=sid, label="share", parties=("c001", "c000"))
    body = crypto.transcript(src, dst, bytes(shamir.ELEMENT_BYTES), bytes(shamir.ELEMENT_BYTES))
    return crypto.seal(key, body, crypto.share_ad(sid, "c001", "c000"))


def _tamper_cases(r: Round, d: dict[str, MaskSharesDelivery]) -> dict[str, tuple[str, bytes]]:
    """(peer to be excluded, ciphertext the server puts under that peer's name for c000)."""
    return {
        # c001's ciphertext for c002, delivered to c000 as c001's share for c000
        "retargeted": ("c001", _ct(d["c002"], "c001")),
        # c003's ciphertext for c000 replayed under c002's name
        "wrong_sender": ("c002", _ct(d["c000"], "c003")),
        "bit_flip_body": ("c002", _flip(_ct(d["c000"], "c002"), 40)),
        "bit_flip_tag": ("c003", _flip(_ct(d["c000"], "c003"), -1)),
        "bit_flip_nonce": ("c004", _flip(_ct(d["c000"], "c004"), 0)),
        "truncated": ("c004", _ct(d["c000"], "c004")[:20]),
        # authentic AEAD from c001, but its plaintext names other parties (src/dst check)
        "reencrypted_dst": ("c001", _resealed_to_c000_naming(r, "c001", "c002")),
        "reencrypted_src": ("c001", _resealed_to_c000_naming(r, "c003", "c000")),
    }


@pytest.mark.parametrize("case", ["retargeted", "wrong_sender", "bit_flip_body", "bit_flip_tag",
                                  "bit_flip_nonce", "truncated", "reencrypted_dst",
                                  "reencrypted_src"])
def test_T8_bad_share_ciphertext_excludes_the_peer_and_the_round_completes(case):
    r, inputs, d = _delivery_stage()
    peer, ct = _tamper_cases(r, d)[case]
    tampered = encode(_with_ciphertext(d["c000"], peer, ct))
    masked = decode(r.clients["c000"].respond(tampered))
    assert isinstance(masked, MaskedInput) and masked.excluded == (peer,)
    r.server.receive("c000", encode(masked))
    for c in ("c001", "c002", "c003", "c004"):
        r.server.receive(c, r.clients[c].respond(encode(d[c])))
    _, aborted = _play(r)
    assert aborted == {}
    res = r.server.finish()
    assert peer not in res.contributors and "neighbour" in res.rejected[peer]
    assert set(res.contributors) == set(r.spec.cohort) - {peer}
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


@pytest.mark.parametrize("case", ["retargeted", "wrong_sender", "bit_flip_body",
                                  "bit_flip_tag", "bit_flip_nonce"])
def test_T8_aead_check_raises(case):
    r, _, d = _delivery_stage()
    peer, ct = _tamper_cases(r, d)[case]
    with pytest.raises(ProtocolAbort, match=f"share from {peer}: authentication failed"):
        r.clients["c000"]._open_share(peer, ct)
    assert r.clients["c000"]._open_share(peer, _ct(d["c000"], peer))  # the genuine one opens


@pytest.mark.parametrize("case", ["reencrypted_dst", "reencrypted_src"])
def test_T8_src_dst_check_raises(case):
    r, _, d = _delivery_stage()
    peer, ct = _tamper_cases(r, d)[case]
    with pytest.raises(ProtocolAbort, match="share from c001: src/dst do not match the envelope"):
        r.clients["c000"]._open_share(peer, ct)


def test_T8_open_sealed_rejects_every_single_bit_flip():
    key, ad = bytes(range(32)), crypto.share_ad("s", "a", "b")
    sealed = crypto.seal(key, b"shares", ad)
    assert crypto.open_sealed(key, sealed, ad, what="x") == b"shares"
    for at in range(len(sealed)):
        for bit in range(8):
            forged = sealed[:at] + bytes([sealed[at] ^ (1 << bit)]) + sealed[at + 1:]
            with pytest.raises(ProtocolAbort, match="x: authentication failed"):
                crypto.open_sealed(key, forged, ad, what="x")
    for other_ad in (crypto.share_ad("s", "b", "a"), crypto.share_ad("s", "a", "c"),
                     crypto.share_ad("t", "a", "b")):
        with pytest.raises(ProtocolAbort, match="authentication failed"):
            crypto.open_sealed(key, sealed, other_ad, what="x")
    with pytest.raises(ProtocolAbort, match="ciphertext too short"):
        crypto.open_sealed(key, sealed[:27], ad, what="x")


def test_T8_delivery_addressed_to_another_client_or_from_a_stranger():
    r, _, d = _delivery_stage()
    client = r.clients["c000"]
    _refuses(client, encode(d["c001"]), "shares addressed to 'c001'", MaskStage.SHARE)
    twice = replace(d["c000"], senders=("c001", "c001"), ciphertexts=d["c000"].ciphertexts[:2])
    _refuses(client, encode(twice), "lists a sender twice", MaskStage.SHARE)
    short = replace(d["c000"], ciphertexts=d["c000"].ciphertexts[:-1])
    _refuses(client, encode(short), "lacks a ciphertext", MaskStage.SHARE)
    stranger = replace(d["c000"], senders=("c009", *d["c000"].senders[1:]))
    _refuses(client, encode(stranger), "shares from 'c009', which is not a neighbour",
             MaskStage.SHARE)


def test_T8_too_many_bad_shares_leave_the_client_below_the_threshold():
    r, _, d = _delivery_stage()
    bad = d["c000"]
    for peer in ("c001", "c002", "c003"):
        bad = _with_ciphertext(bad, peer, _flip(_ct(bad, peer), 20))
    _refuses(r.clients["c000"], encode(bad), "2 live share holders, below the threshold 3",
             MaskStage.SHARE)


# --------------------------------------------------------------------------- T9
OTHER_ROUNDS = {"next_round": {"rnd": 2}, "other_session": {"prompts": 4}}


def _record(kw: dict[str, Any]) -> tuple[Round, dict[tuple[str, str], bytes],
                                         dict[tuple[str, str], bytes]]:
    """An honest round of another session; its requests and responses per (client, stage)."""
    other, _ = _begin(seed=9, **kw)
    requests: dict[tuple[str, str], bytes] = {}
    responses: dict[tuple[str, str], bytes] = {}

    def keep(store: dict[tuple[str, str], bytes]) -> Hook:
        def hook(c: str, stage: str, frame: bytes) -> bytes:
            store[(c, stage)] = frame
            return frame
        return hook

    _play(other, on_request=keep(requests), on_response=keep(responses))
    assert other.server.finish().contributors == other.spec.cohort
    return other, requests, responses


REQUEST_STAGES = {"share": MaskStage.ADVERTISE, "input": MaskStage.SHARE,
                  "consistency": MaskStage.INPUT, "unmask": MaskStage.CONSISTENCY}


@pytest.mark.parametrize("kind", sorted(OTHER_ROUNDS))
@pytest.mark.parametrize("stage", sorted(REQUEST_STAGES))
def test_T9_client_refuses_requests_of_another_session_or_round(kind, stage):
    """The other session's request of the same stage (roster, delivery, survivor list,
    unmask request) reaches c000 just when it waits for that request."""
    other, old, _ = _record(OTHER_ROUNDS[kind])
    r, _ = _begin()
    assert (other.spec.session_id, other.spec.round) != (r.spec.session_id, r.spec.round)
    current, _ = _play(r, stop_at=stage)
    assert decode(current["c000"]).TYPE == decode(old[("c000", stage)]).TYPE
    _refuses(r.clients["c000"], old[("c000", stage)],
             r"client c000: message from another session or round \(replay\)",
             REQUEST_STAGES[stage])


@pytest.mark.parametrize("kind", sorted(OTHER_ROUNDS))
def test_T9_server_rejects_keys_of_another_session_or_round(kind):
    other, _, _ = _record(OTHER_ROUNDS[kind])
    r, inputs = _begin(on_first={"c000": other.first["c000"]})
    _, aborted = _play(r)
    assert aborted == {}
    res = r.server.finish()
    assert res.rejected == {"c000": "advertise: message belongs to another session or round "
                                    "(replay)"}
    assert res.contributors == ("c001", "c002", "c003", "c004")
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


@pytest.mark.parametrize("kind", sorted(OTHER_ROUNDS))
@pytest.mark.parametrize("stage", ["share", "input", "consistency", "unmask"])
def test_T9_server_rejects_a_replayed_later_message(kind, stage):
    """c002 answers one request with its answer from the other session; the server rejects it
    and never counts it (the sum itself is checked in the input-stage xfail test below)."""
    _, _, old = _record(OTHER_ROUNDS[kind])
    r, _ = _begin()
    _play(r, on_response=lambda c, s, f: old[(c, s)] if (c, s) == ("c002", stage) else f)
    assert r.server.rejected["c002"] == (f"{stage}: message belongs to another session or "
                                         "round (replay)")
    if stage in ("share", "input"):
        assert "c002" not in r.server.finish().contributors


def test_T9_session_id_is_bound_into_share_encryption():
    key = bytes(32)
    sealed = crypto.seal(key, b"share", crypto.share_ad("session-1", "a", "b"))
    with pytest.raises(ProtocolAbort, match="authentication failed"):
        crypto.open_sealed(key, sealed, crypto.share_ad("session-2", "a", "b"), what="share")
    k1 = crypto.derive_key(b"\x01" * 32, session_id="session-1", label="share", parties=("a",))
    k2 = crypto.derive_key(b"\x01" * 32, session_id="session-2", label="share", parties=("a",))
    assert k1 != k2


def test_T9_keys_signed_for_another_session_are_refused():
    """A roster entry replayed from another session carries a signature over the old session
    id, which the client refuses."""
    r, roster = _roster_stage()
    other, _ = _begin(rnd=2)
    old = decode(other.first["c003"])
    i = roster.clients.index("c003")
    replayed = replace(roster, **{f + "s": tuple(getattr(old, f) if j == i else k for j, k in
                                                 enumerate(getattr(roster, f + "s")))
                                  for f in ("enc_pk", "mask_pk", "commitment", "signature")})
    _assert_roster_refused(r, replayed, "keys of c003 are not signed by its registered identity")


# --------------------------------------------------------------------------- T11
def test_T11_roster_with_an_id_outside_the_cohort_is_refused():
    r, roster = _roster_stage()
    mallory = crypto.Identity()
    r.registry["mallory"] = mallory.public  # registered, but not a member of this cohort
    enc, mask, commit = crypto.KeyPair().public, crypto.KeyPair().public, bytes(32)
    sig = mallory.sign(keys_transcript(r.spec.session_id, "mallory", enc, mask, commit))
    sybil = replace(roster, clients=(*roster.clients, "mallory"), enc_pks=(*roster.enc_pks, enc),
                    mask_pks=(*roster.mask_pks, mask),
                    commitments=(*roster.commitments, commit),
                    signatures=(*roster.signatures, sig))
    _assert_roster_refused(r, sybil, "roster lists 'mallory', which is not a registered member "
                           r"of the cohort \(Sybil\)")


def test_T11_roster_with_an_unregistered_cohort_member_is_refused():
    r, roster = _roster_stage()
    registry = {c: k for c, k in r.registry.items() if c != "c004"}
    ctx = ClientContext(spec=r.spec, client_id="c000", randomness=SeededRandomness(0, "c000"),
                        identity=r.identities["c000"], registry=registry)
    client = r.backend.client(ctx)
    client.start(grid_inputs(r)["c000"])
    _refuses(client, encode(roster), "roster lists 'c004', which is not a registered member",
             MaskStage.ADVERTISE)


def test_T11_roster_below_the_minimum_of_registered_clients_is_refused():
    r, roster = _roster_stage()
    assert r.server.p.min_survivors == 3
    _assert_roster_refused(r, _without(roster, "c002", "c003", "c004"),
                           "roster has 2 registered clients, fewer than the minimum 3")
    # Padding with copies of one client does not make up the number.
    i = roster.clients.index("c001")
    small = _without(roster, "c002", "c003", "c004")
    padded = replace(small, **{f: (*getattr(small, f), getattr(roster, f)[i]) for f in (
        "clients", "enc_pks", "mask_pks", "commitments", "signatures")})
    _assert_roster_refused(r, padded, "roster lists a client twice")


# --------------------------------------------------------------------------- T14
def _valid_params(**kw: Any) -> MaskingParams:
    args: dict[str, Any] = {"cohort_size": 5, "length": 24, "clip": 2.0,
                            "noise_multiplier": 0.0, "modulus_bits": 32, "placement": "local",
                            "graph": "complete", "threshold": 0.6, "min_survivors": 0.6,
                            "consistency_check": True}
    return derive_params(**{**args, **kw})


@pytest.mark.parametrize("change, match", [
    ({"clip": 0.0}, "clip must be finite and > 0, got 0.0"),
    ({"clip": -1.0}, "clip must be finite and > 0"),
    ({"clip": float("nan")}, "clip must be finite and > 0"),
    ({"value_range": 1 << 32}, r"value range 4294967296 must be in \[1, M\)"),
    ({"value_range": 0}, r"value range 0 must be in \[1, M\)"),
    ({"threshold": 5}, "threshold t=5 must be below the number of shares"),
    ({"threshold": 6}, "threshold t=6 must be below the number of shares"),
    ({"threshold": 2}, "threshold t=2 is below the security floor"),
    ({"threshold": 1}, "below the security floor"),
    ({"cohort_size": 2, "degree": 1}, "a cohort of 2 clients cannot be masked"),
    ({"min_survivors": 1}, "min_survivors 1 must be in"),
    ({"modulus_bits": 0}, "modulus_bits must be in"),
])
def test_T14_invalid_masking_params_raise_at_construction(change, match):
    good = _valid_params()
    assert (good.degree, good.threshold) == (4, 3)
    with pytest.raises(ValueError, match=match):
        replace(good, **change)


def test_T14_threshold_floor_holds_for_every_degree():
    for degree, t in itertools.product(range(1, 9), range(11)):
        holders = degree + 1
        kw = dict(_valid_params(cohort_size=10).to_json(), degree=degree, threshold=t,
                  min_survivors=max(2, t))
        if 2 * t > holders and t < holders:
            MaskingParams(**kw)
        else:
            with pytest.raises(ValueError, match="threshold"):
                MaskingParams(**kw)


def test_T14_derive_params_names_the_modulus_when_it_is_too_small():
    with pytest.raises(ValueError, match="modulus"):
        _valid_params(cohort_size=1000, modulus_bits=16, graph="harary")
    with pytest.raises(ValueError, match="raise aggregation.masked.modulus_bits"):
        _valid_params(cohort_size=5, modulus_bits=12)
    assert _valid_params(cohort_size=1000, modulus_bits=40, graph="harary").scale >= 2 ** 8


@pytest.mark.parametrize("override", ["aggregation.masked.threshold=0.5",
                                      "aggregation.masked.threshold=1.0",
                                      "aggregation.masked.modulus_bits=8"])
def test_T14_config_refuses_bad_masking_settings(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].rsplit(".", 1)[1]):
        load_config(preset="smoke", overrides=[override])
    assert load_config(preset="smoke").aggregation.masked.threshold > 0.5


# --------------------------------------------------------------------------- T16
_DETONATED: list[str] = []


def _detonate() -> None:  # what a pickle gadget would run
    _DETONATED.append("executed")


class _Gadget:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_detonate, ())


GADGET = pickle.dumps(_Gadget())


def _split(frame: bytes) -> tuple[dict[str, Any], bytes]:
    (hlen,) = struct.unpack("<I", frame[4:8])
    return json.loads(frame[8:8 + hlen]), frame[8 + hlen:]


def _join(header: dict[str, Any], body: bytes) -> bytes:
    hb = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(hb)) + hb + body


def _keys_frame() -> bytes:
    kp = crypto.KeyPair()
    return encode(MaskKeys(session_id="s", round=1, client="c000", enc_pk=kp.public,
                           mask_pk=crypto.KeyPair().public, commitment=bytes(32),
                           signature=bytes(64)))


def _input_frame() -> bytes:
    return encode(MaskedInput(session_id="s", round=1, client="c000", excluded=(),
                              vector=np.arange(24, dtype=np.uint32)))


def _edit(frame: bytes, fn: Callable[[dict[str, Any], bytes], bytes | None]) -> bytes:
    header, body = _split(frame)
    new_body = fn(header, body)
    return _join(header, body if new_body is None else new_body)


def _hostile_frames() -> dict[str, bytes]:
    keys, vec = _keys_frame(), _input_frame()

    def blob(name: str, part: list[Any]) -> Callable[[dict[str, Any], bytes], None]:
        def fn(h: dict[str, Any], b: bytes) -> None:
            h["blobs"][name]["parts"] = [part]
        return fn

    def shape(s: list[int]) -> Callable[[dict[str, Any], bytes], None]:
        def fn(h: dict[str, Any], b: bytes) -> None:
            h["arrays"]["vector"]["shape"] = s
        return fn

    def field(name: str, value: Any) -> Callable[[dict[str, Any], bytes], None]:
        def fn(h: dict[str, Any], b: bytes) -> None:
            h["fields"][name] = value
        return fn

    def blob_as_json(h: dict[str, Any], b: bytes) -> bytes:
        off, n = h["blobs"].pop("commitment")["parts"][0]
        h["fields"]["commitment"] = b[off:off + n].hex()
        for meta in h["blobs"].values():  # close the gap the commitment left in the body
            meta["parts"] = [[o - n if o > off else o, k] for o, k in meta["parts"]]
        return b[:off] + b[off + n:]

    return {
        "pickle_gadget": GADGET,
        "magic_then_pickle": MAGIC + GADGET,
        "pickle_in_header": MAGIC + struct.pack("<I", len(GADGET)) + GADGET,
        "oversized_header_length": MAGIC + struct.pack("<I", 0xFFFFFFFF) + b"{}",
        "header_length_past_frame": keys[:4] + struct.pack("<I", len(keys)) + keys[8:],
        "truncated_body": keys[:-1],
        "truncated_header": keys[:20],
        "truncated_magic": keys[:3],
        "empty": b"",
        "trailing_bytes": keys + b"\x00",
        "blob_past_end": _edit(keys, blob("signature", [10, 1 << 40])),
        "blob_negative_offset": _edit(keys, blob("signature", [-64, 64])),
        "blob_overlaps": _edit(keys, blob("signature", [0, 64])),
        "blob_not_a_range": _edit(keys, blob("signature", ["a", "b"])),
        "huge_shape": _edit(vec, shape([1 << 40])),
        "huge_2d_shape": _edit(vec, shape([1 << 20, 1 << 20])),
        "negative_shape": _edit(vec, shape([-24])),
        "bad_dtype": _edit(vec, lambda h, b: h["arrays"]["vector"].update(dtype="|O") or b),
        "round_as_string": _edit(keys, field("round", "1")),
        "round_as_bool": _edit(keys, field("round", True)),
        "round_as_float": _edit(keys, field("round", 1.0)),
        "client_as_list": _edit(keys, field("client", ["c000"])),
        "excluded_of_ints": _edit(vec, field("excluded", [1, 2])),
        "bytes_field_as_json_string": _edit(keys, blob_as_json),
        "missing_field": _edit(keys, lambda h, b: h["fields"].pop("round") and b),
        "extra_field": _edit(keys, field("evil", 1)),
        "unknown_type": _edit(keys, lambda h, b: h.update(type="__reduce__") or b),
        "bad_version": _edit(keys, lambda h, b: h.update(version=1) or b),
        "header_not_object": _join([], b""),  # type: ignore[arg-type]
    }


def test_T16_frame_surgery_alone_breaks_nothing():
    """Control for the hostile frames: splitting and re-joining a frame keeps it valid, so
    each hostile frame fails for its one defect."""
    header, body = _split(_keys_frame())
    assert isinstance(decode(_join(header, body)), MaskKeys)
    assert isinstance(decode(_edit(_input_frame(), lambda h, b: None)), MaskedInput)


@pytest.mark.parametrize("name", sorted(_hostile_frames()))
def test_T16_hostile_frames_raise_message_error_without_executing_anything(name):
    frame = _hostile_frames()[name]
    t0 = time.perf_counter()
    with pytest.raises(MessageError, match="decode"):
        decode(frame)
    assert time.perf_counter() - t0 < 1.0
    assert _DETONATED == []


@pytest.mark.parametrize("name", ["oversized_header_length", "header_length_past_frame",
                                  "blob_past_end", "huge_shape", "huge_2d_shape",
                                  "oversized_frame"])
def test_T16_lying_lengths_allocate_nothing_large(name):
    frame = (MAGIC + bytes(MAX_MESSAGE_BYTES) if name == "oversized_frame"
             else _hostile_frames()[name])
    tracemalloc.start()
    try:
        with pytest.raises(MessageError):
            decode(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # under 1 MiB, whatever the frame claims


@pytest.mark.parametrize("bad_shape", [[1 << 32, 1 << 32], [1 << 62, 4], [0, 1 << 70]])
def test_T16_shape_whose_product_overflows_is_a_message_error(bad_shape):
    header, _ = _split(_input_frame())
    header["arrays"]["vector"].update(shape=bad_shape, nbytes=0)
    with pytest.raises(MessageError, match="decode"):
        decode(_join(header, b""))


def _overflowing_frame() -> bytes:
    header, _ = _split(_input_frame())
    header["arrays"]["vector"].update(shape=[1 << 32, 1 << 32], offset=0, nbytes=0)
    return _join(header, b"")


def test_T16_client_aborts_on_a_shape_whose_product_overflows():
    r, _ = _roster_stage()
    _refuses(r.clients["c000"], _overflowing_frame(), "malformed request", MaskStage.ADVERTISE)


def test_T16_server_survives_a_shape_whose_product_overflows():
    r, _ = _begin()

    def overflow(c: str, stage: str, resp: bytes) -> bytes:
        if (c, stage) != ("c002", "input"):
            return resp
        header, _ = _split(resp)
        header["arrays"]["vector"].update(shape=[1 << 32, 1 << 32], offset=0, nbytes=0)
        return _join(header, b"")  # a well-addressed masked_input from c002, but for its shape

    _play(r, on_response=overflow)
    assert "c002" in r.server.rejected and "c002" not in r.server.finish().contributors


def test_T16_no_pickle_on_the_wire_path():
    for module in (wire, masked_client, masked_server):
        src = inspect.getsource(module)
        assert "import pickle" not in src and "pickle.load" not in src
        assert "marshal" not in src


def test_T16_server_rejects_hostile_payloads_and_the_round_completes():
    hostile = _hostile_frames()
    # c000's keys never arrive: a pickle gadget does. n=8: complete graph, t = m = 5.
    r, inputs = _begin(n=8, on_first={"c000": GADGET})

    def corrupt(c: str, stage: str, resp: bytes) -> bytes:
        if (c, stage) == ("c001", "share"):
            return resp[:-7]  # truncated shares
        if (c, stage) == ("c002", "share"):
            return hostile["oversized_header_length"]
        return resp

    _, aborted = _play(r, on_response=corrupt)
    assert aborted == {} and _DETONATED == []
    res = r.server.finish()
    assert "bad magic" in res.rejected["c000"]
    assert "decode" in res.rejected["c001"] and "header length" in res.rejected["c002"]
    assert res.contributors == ("c003", "c004", "c005", "c006", "c007")
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


def test_T16_server_rejects_well_formed_but_wrong_shares():
    r, inputs = _begin(n=6)

    def corrupt(c: str, stage: str, resp: bytes) -> bytes:
        if stage != "share" or c not in ("c001", "c002"):
            return resp
        m = decode(resp)
        if c == "c001":  # an oversized "ciphertext" carrying a pickle gadget
            return encode(replace(m, ciphertexts=(GADGET * 20, *m.ciphertexts[1:])))
        return encode(replace(m, recipients=m.recipients[:-1], ciphertexts=m.ciphertexts[:-1]))

    _play(r, on_response=corrupt)
    res = r.server.finish()
    assert "share ciphertext is oversized" in res.rejected["c001"]
    assert "not addressed to exactly the client's neighbours" in res.rejected["c002"]
    assert res.contributors == ("c000", "c003", "c004", "c005")
    assert np.array_equal(res.total, _sum(inputs, res.contributors))
    assert _DETONATED == []


def _conflicting_retransmit(r: Round, resp: bytes) -> bytes:
    r.server.receive("c001", resp)  # the genuine input arrives, then a different one
    m = decode(resp)
    return encode(replace(m, vector=m.vector ^ np.uint32(1)))


INPUT_FAULTS: dict[str, tuple[Callable[[Round, bytes], bytes], str]] = {
    "replayed": (lambda r, f: encode(replace(decode(f), session_id="0" * 64)), "replay"),
    "wrong_dtype": (lambda r, f: encode(replace(decode(f), vector=decode(f).vector.astype(
        np.uint64))), "is not uint32(24,)"),
    "wrong_length": (lambda r, f: encode(replace(decode(f), vector=decode(f).vector[:-1])),
                     "is not uint32(24,)"),
    "undecodable": (lambda r, f: f[:-3], "decode"),
    "pickle_gadget": (lambda r, f: GADGET, "bad magic"),
    "foreign_excluded": (lambda r, f: encode(replace(decode(f), excluded=("c009",))),
                         "excluded peers that are not neighbours"),
    "conflicting_retransmit": (_conflicting_retransmit, "conflicting second message"),
}


def _reject_input_of_c001(fault: str) -> tuple[Round, dict[str, np.ndarray]]:
    r, inputs = _begin()
    make = INPUT_FAULTS[fault][0]
    _play(r, on_response=lambda c, s, f: make(r, f) if (c, s) == ("c001", "input") else f)
    return r, inputs


@pytest.mark.parametrize("fault", sorted(INPUT_FAULTS))
def test_T16_server_rejects_a_bad_masked_input(fault):
    r, _ = _reject_input_of_c001(fault)
    assert INPUT_FAULTS[fault][1] in r.server.rejected["c001"]
    res = r.server.finish()
    assert "c001" not in res.contributors and "c001" in res.dropped
    assert _DETONATED == []


@pytest.mark.parametrize("fault", sorted(INPUT_FAULTS))
def test_T16_sum_stays_exact_when_a_masked_input_is_rejected(fault):
    r, inputs = _reject_input_of_c001(fault)
    res = r.server.finish()
    assert res.contributors == ("c000", "c002", "c003", "c004")
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


@pytest.mark.parametrize("name", ["pickle_gadget", "truncated_body", "oversized_header_length",
                                  "blob_past_end", "round_as_string",
                                  "bytes_field_as_json_string"])
def test_T16_client_aborts_on_a_malformed_request(name):
    r, _ = _roster_stage()
    _refuses(r.clients["c000"], _hostile_frames()[name], r"client c000: malformed request \(",
             MaskStage.ADVERTISE)
    assert _DETONATED == []


def test_T16_pickle_gadget_inside_a_share_ciphertext_is_only_bytes():
    r, _, d = _delivery_stage()
    masked = decode(r.clients["c000"].respond(encode(_with_ciphertext(d["c000"], "c001",
                                                                      GADGET))))
    assert masked.excluded == ("c001",) and _DETONATED == []


# --------------------------------------------------------------------------- secrets
def test_secret_keys_are_never_serialised():
    """Secret material (STYLE.md: "a type that refuses to serialise"), and so any object
    holding it, a whole client included, cannot be pickled or copied."""
    r, _ = _begin()
    for obj in (crypto.Secret(b"k" * 32), crypto.random_secret(), crypto.KeyPair(),
                crypto.Identity(), r.identities["c000"], r.clients["c000"]):
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            with pytest.raises(TypeError, match="refuse(s)? to be serialised"):
                pickle.dumps(obj, protocol=protocol)
    with pytest.raises(TypeError, match="refuses to be copied"):
        copy.deepcopy(crypto.Secret(b"k"))
    with pytest.raises(TypeError, match="refuses to be copied"):
        copy.copy(crypto.Secret(b"k"))
    assert "k" * 32 not in repr(crypto.Secret(b"k" * 32))
    with pytest.raises(TypeError, match="refuse"):
        copy.deepcopy(r.clients["c000"])


# --------------------------------------------------------------------------- Shamir
@pytest.mark.parametrize("n, t", [(3, 2), (5, 3), (7, 4), (9, 5)])
def test_shamir_any_t_shares_recover_and_fewer_do_not(n, t):
    secret = bytes(range(1, 33))
    shares = shamir.split(secret, points=list(range(1, n + 1)), threshold=t)
    assert all(len(s) == shamir.ELEMENT_BYTES for s in shares.values())
    for subset in itertools.combinations(shares, t):
        assert shamir.combine({x: shares[x] for x in subset}, threshold=t) == secret
    for subset in itertools.combinations(shares, t - 1):
        few = {x: shares[x] for x in subset}
        with pytest.raises(ValueError, match="cannot recover"):
            shamir.combine(few, threshold=t)
        try:  # interpolating too low a degree gives garbage (or is caught as inconsistent)
            assert shamir.combine(few, threshold=t - 1) != secret
        except ValueError as e:
            assert "inconsistent" in str(e)


def test_shamir_refuses_bad_inputs():
    with pytest.raises(ValueError, match="distinct and non-zero"):
        shamir.split(bytes(32), points=[0, 1, 2], threshold=2)
    with pytest.raises(ValueError, match="distinct and non-zero"):
        shamir.split(bytes(32), points=[1, 1, 2], threshold=2)
    with pytest.raises(ValueError, match="threshold 4 must be in"):
        shamir.split(bytes(32), points=[1, 2, 3], threshold=4)
    with pytest.raises(ValueError, match="too long"):
        shamir.split(bytes(66), points=[1, 2, 3], threshold=2)
    good = shamir.split(bytes(32), points=[1, 2, 3], threshold=2)
    with pytest.raises(ValueError, match="expected 66"):
        shamir.combine({1: good[1], 2: good[2][:-1]}, threshold=2)
    with pytest.raises(ValueError, match="outside the field"):
        shamir.combine({1: good[1], 2: b"\xff" * 66}, threshold=2)


def _corrupt_share_of(holder: str, peer: str) -> Hook:
    """``holder`` sends a well-formed but wrong self-mask share of ``peer``."""
    def hook(c: str, stage: str, resp: bytes) -> bytes:
        if (c, stage) != (holder, "unmask"):
            return resp
        m = decode(resp)
        i = m.peers.index(peer)
        return encode(replace(m, shares=tuple(_flip(s, -1) if j == i else s
                                              for j, s in enumerate(m.shares))))
    return hook


def test_server_refuses_to_sum_when_no_t_subset_reconstructs_the_committed_secret():
    r, _ = _begin()
    late = frozenset({("c003", "unmask"), ("c004", "unmask")})  # exactly t=3 holders answer
    with pytest.raises(ProtocolAbort, match="the shares of survivor c000 do not reconstruct its "
                       "committed secret; no aggregate is released"):
        _play(r, on_response=_corrupt_share_of("c002", "c000"), drop=late)
    assert r.server.stage == "aborted"
    with pytest.raises(ProtocolAbort, match="not ready"):
        r.server.finish()


def test_server_sums_correctly_past_one_bad_share_among_more_than_t():
    r, inputs = _begin()
    _, aborted = _play(r, on_response=_corrupt_share_of("c002", "c000"))
    assert aborted == {}
    res = r.server.finish()
    assert res.contributors == r.spec.cohort
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


def test_server_rejects_an_unmask_share_of_the_wrong_kind_or_length():
    r, inputs = _begin()

    def bad(c: str, stage: str, resp: bytes) -> bytes:
        if stage != "unmask" or c not in ("c001", "c002"):
            return resp
        m = decode(resp)
        if c == "c001":
            return encode(replace(m, kinds=tuple("mask_key" for _ in m.kinds)))
        return encode(replace(m, shares=(m.shares[0][:-1], *m.shares[1:])))

    _play(r, on_response=bad)
    res = r.server.finish()
    assert "wrong kind" in res.rejected["c001"] and "wrong length" in res.rejected["c002"]
    assert np.array_equal(res.total, _sum(inputs, res.contributors))
