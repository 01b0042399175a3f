"""Run binding (issue 19): every message of one run, replayed into another run of the same
configuration, is refused, and says so. Each run (and each incarnation of a resumed run) has a
nonce of its own that the round's session id binds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from privsem.errors import ProtocolAbort
from privsem.protocol.messages import MESSAGE_TYPES, decode


def _record(r: Any) -> tuple[dict[tuple[str, int], bytes], dict[tuple[str, int], bytes]]:
    """Runs the round, recording per (party, k) the k-th request to it and its answer."""
    from privsem.aggregation import run_exchanges

    requests: dict[tuple[str, int], bytes] = {}
    answers: dict[tuple[str, int], bytes] = {}
    count: dict[str, int] = {}

    def wrap(party: str, fn: Any) -> Any:
        def inner(req: bytes) -> bytes | None:
            count[party] = count.get(party, 0) + 1
            requests[(party, count[party])] = req
            out = fn(req)
            if out is not None:
                answers[(party, count[party])] = out
            return out
        return inner

    for c, frame in r.first.items():
        answers[(c, 0)] = frame
    run_exchanges(r.server, {p: wrap(p, f) for p, f in r.responders().items()}, r.first)
    return requests, answers


@pytest.mark.parametrize("backend", ["plaintext", "masked", "ckks"])
def test_every_aggregation_message_of_one_run_is_refused_in_another(backend):
    """Run A and run B: same configuration, same seed, same inputs, different run nonces. For
    every message A's parties sent (uploads, keys, shares, masked inputs, signatures, unmask
    shares, key holder answers) delivered in B in its place, B's server excludes the sender
    (or the round cannot finish); for every request A's server sent, B's party aborts."""
    from aggregation_harness import grid_inputs, make_round

    from privsem.aggregation import run_exchanges

    def fresh(run: str) -> Any:
        r = make_round(backend, n=5, seed=3, run=run)
        r.start(grid_inputs(r))
        return r

    a_requests, a_answers = _record(fresh("a" * 32))
    assert a_answers, "run A sent nothing"
    kinds = set()
    for (party, k), frame in sorted(a_answers.items()):  # a party's message of stage k
        kinds.add(decode(frame).TYPE)
        b = fresh("b" * 32)
        responders = b.responders()
        if k == 0:
            b.first[party] = frame
        else:
            seen = {"n": 0}

            def replay(req: bytes, fn: Any = responders[party], k: int = k,
                       old: bytes = frame, seen: dict[str, int] = seen) -> bytes | None:
                seen["n"] += 1
                out = fn(req)
                return old if seen["n"] == k else out

            responders[party] = replay
        try:
            gone = run_exchanges(b.server, responders, b.first)
            result = b.server.finish()
        except ProtocolAbort:
            continue  # the round could not be finished with the replayed message: refused
        # refused: the sender was excluded from that stage on (a masked client whose input was
        # already in still counts, by the protocol: its replayed later message is what is
        # refused), or left out of the sum
        refused = (party in gone or party in result.rejected
                   or party not in result.contributors)
        assert refused, f"{backend}: {decode(frame).TYPE} of run A was accepted in run B"
    for (party, k), frame in sorted(a_requests.items()):  # the server's k-th request
        kinds.add(decode(frame).TYPE)
        b = fresh("b" * 32)
        responders = b.responders()
        outcome: dict[str, str] = {}
        calls = [0]

        def swap(req: bytes, fn: Any = responders[party], k: int = k, old: bytes = frame,
                 seen: list[int] = calls, outcome: dict[str, str] = outcome) -> bytes | None:
            seen[0] += 1
            if seen[0] != k:
                return fn(req)
            try:
                out = fn(old)  # B's party, at this stage, gets A's request instead of B's
            except ProtocolAbort as e:
                outcome["abort"] = str(e)
                raise
            outcome["accepted"] = decode(old).TYPE
            return out

        responders[party] = swap
        try:
            run_exchanges(b.server, responders, b.first)
        except ProtocolAbort:
            pass
        assert "accepted" not in outcome, f"{backend}: {outcome['accepted']} of run A accepted"
        why = outcome.get("abort", "")
        if decode(frame).TYPE == "ckks_decrypt_request":
            # the key holder's keys are made per run: A's ciphertexts decrypt to noise under
            # B's key, and its count-slot check refuses to release anything
            assert "not the aggregate of those contributors" in why, why
        else:
            assert "another session" in why or "replay" in why, why
    expected = {"plaintext": {"embedding_upload"},
                "masked": {"mask_keys", "mask_roster", "mask_shares", "mask_shares_delivery",
                           "masked_input", "survivor_list", "survivor_signature",
                           "unmask_request", "unmask_shares"},
                "ckks": {"ckks_upload", "ckks_decrypt_request", "ckks_release"}}[backend]
    assert expected <= kinds <= set(MESSAGE_TYPES)


def test_every_protocol_message_of_one_run_is_refused_in_another(tmp_path):
    """Two in-process federations of one configuration: run A's round announcement, consensus
    broadcast and pseudo-labels are refused by run B's client, and its nomination is excluded by
    run B's server; the client's refusal names the other run."""
    from privsem.config import load_config
    from privsem.consensus import Consensus
    from privsem.protocol.messages import (
        ConsensusBroadcast,
        Nomination,
        PseudoLabels,
        Stage,
        encode,
    )
    from privsem.runtime.inprocess import setup

    cfg = load_config(preset="smoke", overrides=["rounds=2", "evaluation.enabled=false",
                                                 "consensus.selection=shared"])
    a = setup(cfg, tmp_path / "a", lambda s: None)
    b = setup(cfg, tmp_path / "b", lambda s: None)
    assert a.server.run != b.server.run
    a_spec = a.server.open_round(1, tuple(a.clients))
    b_spec = b.server.open_round(1, tuple(b.clients))
    assert decode(a_spec).params == decode(b_spec).params  # one configuration
    bob = b.clients["bob"]
    with pytest.raises(ProtocolAbort, match="announced for another run"):
        bob.on_round_spec(a_spec)
    assert not b.ledger.entries  # nothing charged for it
    # a copy of A's announcement with B's nonce but A's session id is refused as well
    forged = decode(a_spec)
    from dataclasses import replace
    with pytest.raises(ProtocolAbort, match="session id"):
        bob.on_round_spec(encode(replace(forged, run=b.server.run)))
    bob.on_round_spec(b_spec)
    spec_a, spec_b = decode(a_spec), decode(b_spec)
    P, d = len(spec_b.prompt_ids), bob.embedder.dim

    def broadcast(spec: Any) -> bytes:
        return encode(ConsensusBroadcast(
            session_id=spec.session_id, round=1, contributors=spec.cohort,
            noise_std_of_consensus=0.0, consensus=np.full((P, d), d ** -0.5, np.float32),
            agreement=np.ones(P, np.float32), weight=np.full(P, 0.5, np.float32)))

    with pytest.raises(ProtocolAbort, match="another session"):
        bob.on_consensus(broadcast(spec_a))
    bob.on_consensus(broadcast(spec_b))
    assert bob.stage.stage is Stage.NOMINATION

    def labels(spec: Any) -> bytes:
        return encode(PseudoLabels(session_id=spec.session_id, round=1,
                                   texts=tuple(f"label {j}" for j in range(P))))

    with pytest.raises(ProtocolAbort, match="another session"):
        bob.on_pseudo_labels(labels(spec_a))
    # the server's side: a nomination of run A is excluded from run B's selection
    b.server.consensus = Consensus(np.full((P, d), d ** -0.5), np.ones(P), 0.0,
                                   np.full(P, 0.5))
    b.server.stage.stage = Stage.CONSENSUS
    nom = encode(Nomination(session_id=spec_a.session_id, round=1, client="alice",
                            texts=tuple(f"run A's answer {j}" for j in range(P))))
    chosen = decode(b.server.choose_labels({"alice": nom}))
    assert all(t is None for t in chosen.texts)  # nothing of run A became a label
