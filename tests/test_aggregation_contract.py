"""The contract every aggregation back-end satisfies (STYLE.md "Tests"; TESTING.md T1–T4, T10,
T30): the same sum on grid inputs (bit for bit for ``plaintext`` and ``masked``, within the
stated tolerance for ``ckks``), the same dropout behaviour, inputs unchanged."""

import numpy as np
import pytest
from aggregation_harness import grid_inputs, make_round

BACKENDS = ["plaintext", "masked", "ckks"]


def _sum(inputs, members):
    return sum(inputs[c].astype(np.float64) for c in members)


def _close(r, res, inputs):
    """The released total equals the exact sum within the back-end's stated tolerance."""
    err = np.max(np.abs(res.total - _sum(inputs, res.contributors)))
    tol = r.tolerance(len(res.contributors))
    return err <= tol if tol else err == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_T1_exact_sum_including_negatives_and_clip_boundaries(backend):
    r = make_round(backend, n=10, prompts=3, dim=8, clip=2.0)
    inputs = grid_inputs(r, seed=1)
    # Boundary values: an entry at +clip and one at -clip (the rest zero) in two clients.
    edge = np.zeros((3, 8))
    edge[0, 0] = 2.0
    inputs["c000"] = edge
    inputs["c001"] = -edge
    copies = {c: m.copy() for c, m in inputs.items()}
    r.start(inputs)
    assert r.run() == {}
    res = r.server.finish()
    assert res.contributors == r.spec.cohort
    assert _close(r, res, inputs)
    assert all(np.array_equal(inputs[c], copies[c]) for c in inputs)  # inputs left unchanged


def test_T1_ckks_within_its_stated_tolerance_and_exact_on_the_grid():
    """CKKS is approximate, but the key holder rounds its release to 2^-grid_bits: on inputs of
    a coarser grid the CKKS error and the flooding noise (6σ below half a grid step) round
    away and the sum equals plaintext's bit for bit; off the grid the error is non-zero and
    within the stated tolerance."""
    rng = np.random.default_rng(3)
    on_grid = None
    for grid in (True, False):
        r = make_round("ckks", n=6)
        exact = make_round("plaintext", n=6)
        inputs = grid_inputs(r, seed=7)
        if not grid:
            inputs = {c: m + rng.uniform(-2e-4, 2e-4, m.shape) for c, m in inputs.items()}
        for x in (r, exact):
            x.start({c: m.astype(np.float32) if x is exact else m for c, m in inputs.items()})
            x.run()
        got = r.server.finish()
        err = np.max(np.abs(got.total - _sum(inputs, got.contributors)))
        assert got.contributors == r.spec.cohort and got.individual is None
        if grid:
            on_grid = err
            assert np.array_equal(got.total, exact.server.finish().total)
        else:
            assert 0 < err <= r.tolerance(6) < 2.0 ** -10
    assert on_grid == 0.0


def test_T1_masked_equals_plaintext_bit_for_bit():
    totals = {}
    for backend in BACKENDS:
        r = make_round(backend, n=6)
        inputs = grid_inputs(r, seed=7)
        r.start(inputs)
        r.run()
        totals[backend] = r.server.finish().total
    assert np.array_equal(totals["plaintext"], totals["masked"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_T2_client_that_never_uploads_is_absent_from_the_sum(backend):
    r = make_round(backend, n=6)
    inputs = grid_inputs(r, seed=2)
    r.start(inputs)
    first_stage = r.server.stage
    r.run(drop=lambda c, s: c == "c002" and s == first_stage)
    res = r.server.finish()
    assert "c002" not in res.contributors and len(res.contributors) == 5
    assert _close(r, res, inputs)


@pytest.mark.parametrize("stage", ["share", "input"])
def test_T2_masked_drop_after_key_share_before_masked_upload(stage):
    """The dropped client's pairwise masks are removed through its mask-key shares."""
    r = make_round("masked", n=7)
    inputs = grid_inputs(r, seed=3)
    r.start(inputs)
    r.run(drop=lambda c, s: c in ("c001", "c005") and s == stage)
    res = r.server.finish()
    assert res.contributors == ("c000", "c002", "c003", "c004", "c006")
    assert set(res.dropped) == {"c001", "c005"}
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


@pytest.mark.parametrize("stage", ["consistency", "unmask"])
def test_T3_masked_drop_after_upload_is_counted(stage):
    r = make_round("masked", n=7)
    inputs = grid_inputs(r, seed=4)
    r.start(inputs)
    r.run(drop=lambda c, s: c in ("c002", "c006") and s == stage)
    res = r.server.finish()
    if stage == "unmask":  # uploaded and signed, then vanished: still in the sum
        assert res.contributors == r.spec.cohort
    else:  # uploaded but never signed: the consistency round leaves it out of the unmasking
        assert set(res.contributors) == set(r.spec.cohort)
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


def test_T3_masked_drops_at_every_stage_in_one_round():
    r = make_round("masked", n=12)
    inputs = grid_inputs(r, seed=5)
    plan = {"c000": "advertise", "c003": "share", "c005": "input", "c008": "unmask"}
    r.start(inputs)
    r.run(drop=lambda c, s: plan.get(c) == s)
    res = r.server.finish()
    assert set(res.contributors) == set(r.spec.cohort) - {"c000", "c003", "c005"}
    assert np.array_equal(res.total, _sum(inputs, res.contributors))


@pytest.mark.parametrize("stage", ["advertise", "share", "input", "consistency", "unmask"])
def test_T4_below_threshold_aborts_without_aggregate(stage):
    from privsem.errors import ProtocolAbort

    r = make_round("masked", n=5)  # min_survivors = 3, threshold = 3
    inputs = grid_inputs(r, seed=6)
    r.start(inputs)
    gone = {"c000", "c001", "c002"}
    sent_unmask = []
    real = {c: a.respond for c, a in r.clients.items()}

    def spy(c):
        def respond(req):
            out = real[c](req)
            if r.clients[c].stage is not None and r.clients[c].stage.value == "done":
                sent_unmask.append(c)
            return out
        return respond

    from privsem.aggregation import run_exchanges
    with pytest.raises(ProtocolAbort, match="no aggregate|aborted|not ready"):
        run_exchanges(r.server, {c: spy(c) for c in r.clients}, r.first,
                      drop=lambda c, s: c in gone and s == stage)
        r.server.finish()
    if stage != "unmask":
        assert not sent_unmask  # no client revealed any share after the abort


@pytest.mark.parametrize("backend", BACKENDS)
def test_T10_retransmit_counts_once_conflict_is_rejected(backend):
    r = make_round(backend, n=5)
    inputs = grid_inputs(r, seed=8)
    r.start(inputs)
    r.server.receive("c000", r.first["c000"])  # a retransmit before the stage closes
    other = make_round(backend, n=5)
    other_inputs = grid_inputs(other, seed=9)
    other.start(other_inputs)
    r.server.receive("c001", other.first["c001"])  # a different payload from c001 (wrong session)
    r.run()
    res = r.server.finish()
    assert "c000" in res.contributors
    assert "c001" not in res.contributors and "c001" in res.rejected
    assert _close(r, res, inputs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_T30_bad_matrices_are_refused_before_anything_is_sent(backend):
    from privsem.errors import ProtocolAbort

    r = make_round(backend, n=5)
    client = r.clients["c000"]
    bad = np.full((3, 8), np.nan)
    if backend == "masked":
        with pytest.raises(ProtocolAbort, match="non-finite|does not match"):
            client.start(bad)
        with pytest.raises(ProtocolAbort, match="does not match"):
            r.clients["c001"].start(np.zeros((3, 7)))
    elif backend == "ckks":
        with pytest.raises(ProtocolAbort, match="non-finite"):
            client.start(bad)
        with pytest.raises(ProtocolAbort, match=r"shape \(3, 7\)"):
            r.clients["c001"].start(np.zeros((3, 7)))
    else:
        with pytest.raises(ProtocolAbort, match="not a finite float32"):
            client.start(bad)
        # A client that skips the check anyway is excluded at the server's boundary.
        from privsem.protocol.messages import EmbeddingUpload, encode

        s = r.spec
        r.server.receive("c000", encode(EmbeddingUpload(
            session_id=s.session_id, round=s.round, client="c000", noise_std=1.0,
            matrix=np.full((len(s.prompt_ids), s.dim), np.nan, dtype=np.float32))))
        r.server.next_requests()
        assert "non-finite" in r.server.finish().rejected["c000"]


def test_T2_T3_sparse_harary_graph_with_drops_at_every_stage_is_exact():
    """SecAgg+: each client masks with and shares among its k neighbours only (k < n − 1)."""
    from privsem.protocol.messages import MaskRoster, UnmaskRequest, decode

    r = make_round("masked", n=40, prompts=2, dim=4)
    k = r.params["degree"]
    assert k < 39 and k % 2 == 0
    inputs = grid_inputs(r, seed=11)
    r.start(inputs)
    plan = {"c001": "advertise", "c007": "share", "c013": "input", "c021": "consistency",
            "c033": "unmask"}
    seen: dict[str, list] = {"roster": [], "unmask": []}
    real = {c: a.respond for c, a in r.clients.items()}

    def spy(c):
        def respond(req):
            msg = decode(req)
            if isinstance(msg, MaskRoster):
                seen["roster"].append(len(msg.clients))
            if isinstance(msg, UnmaskRequest):
                seen["unmask"].append(len(msg.signers))
            return real[c](req)
        return respond

    from privsem.aggregation import run_exchanges
    run_exchanges(r.server, {c: spy(c) for c in r.clients}, r.first,
                  drop=lambda c, s: plan.get(c) == s)
    res = r.server.finish()
    assert set(res.contributors) == set(r.spec.cohort) - {"c001", "c007", "c013"}
    assert np.array_equal(res.total, _sum(inputs, res.contributors))
    assert max(seen["roster"]) <= k + 1  # a client receives only its neighbours' keys
    assert max(seen["unmask"]) < 39  # and only its two-hop neighbourhood's signatures


def test_T11_roster_entry_outside_the_neighbourhood_is_refused():
    import dataclasses

    from privsem.errors import ProtocolAbort
    from privsem.protocol.messages import MaskRoster, decode, encode

    r = make_round("masked", n=40, prompts=2, dim=4)
    r.start(grid_inputs(r))
    for c, f in r.first.items():
        r.server.receive(c, f)
    reqs = r.server.next_requests()
    mine = decode(reqs["c000"])
    assert isinstance(mine, MaskRoster)
    stranger = next(c for c in r.spec.cohort if c not in mine.clients)
    theirs = decode(reqs[stranger])
    i = theirs.clients.index(stranger)
    forged = dataclasses.replace(
        mine, clients=(*mine.clients, stranger), enc_pks=(*mine.enc_pks, theirs.enc_pks[i]),
        mask_pks=(*mine.mask_pks, theirs.mask_pks[i]),
        commitments=(*mine.commitments, theirs.commitments[i]),
        signatures=(*mine.signatures, theirs.signatures[i]))
    with pytest.raises(ProtocolAbort, match="which is not a neighbour"):
        r.clients["c000"].respond(encode(forged))
