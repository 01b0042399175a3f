"""Attack tests of the threat models (threat_models/catalogue.yaml) that no back-end issue owns.

T31: f Byzantine clients push a target text through the consensus ("a little is enough" style:
every Byzantine upload as large as the boundary accepts, pointing at the target).
"""

import numpy as np
import pytest
from aggregation_harness import make_round

from privsem.aggregation.plaintext import upload_norm_bound
from privsem.consensus import mean_consensus, robust_consensus, select_nearest
from privsem.protocol.messages import EmbeddingUpload, encode

N, F, P, D = 10, 3, 4, 32
Z, CLIP = 0.05, 2.0  # the joint clip is √P = 2 for unit rows


def _directions(seed):
    """Per prompt, the honest answer's direction u_j and an orthogonal target t_j (unit)."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((P, D))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    t = rng.standard_normal((P, D))
    t -= np.sum(t * u, axis=1, keepdims=True) * u
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return u, t


def _byzantine_upload(r, client, matrix):
    s = r.spec
    return encode(EmbeddingUpload(session_id=s.session_id, round=s.round, client=client,
                                  noise_std=Z * CLIP, matrix=matrix.astype(np.float32)))


def _attacked_round(seed, *, scale):
    """n − f honest clients answer u_j (clipped, noised by their own client code); f Byzantine
    clients send the target t in prompt 0 only, at Frobenius norm ``scale``."""
    r = make_round("plaintext", n=N, prompts=P, dim=D, noise_multiplier=Z, clip=CLIP,
                   seed=seed)
    u, t = _directions(seed)
    rng = np.random.default_rng(seed + 1)
    honest = r.spec.cohort[:N - F]
    inputs = {}
    for c in honest:
        x = u + 0.1 * rng.standard_normal((P, D))
        inputs[c] = x / np.linalg.norm(x, axis=1, keepdims=True)  # unit rows: norm √P = C
    r.start(inputs)
    attack = np.zeros((P, D))
    attack[0] = t[0] * scale
    for c in r.spec.cohort[N - F:]:
        r.first[c] = _byzantine_upload(r, c, attack)
    r.run()
    return r, u, t, honest


def test_T31_the_server_refuses_uploads_above_the_honest_norm_bound():
    r, *_ = _attacked_round(0, scale=10 * CLIP)
    bound = upload_norm_bound(r.spec)
    assert CLIP < bound < 10 * CLIP
    res = r.server.finish()
    assert len(res.contributors) == N - F
    assert all("exceeds" in res.rejected[c] for c in r.spec.cohort[N - F:])


def _bound():
    return upload_norm_bound(make_round("plaintext", n=N, prompts=P, dim=D,
                                        noise_multiplier=Z, clip=CLIP).spec)


def test_T31_the_mean_moves_at_most_two_bound_f_over_n():
    r0, *_ = _attacked_round(1, scale=0.0)  # the same honest uploads (same seeds), no attack
    honest_uploads = r0.server.finish().individual
    bound = _bound()
    r, _, _, honest = _attacked_round(1, scale=bound * 0.999)  # as large as accepted
    res = r.server.finish()
    assert len(res.contributors) == N  # every Byzantine upload passed the boundary
    attacked = res.total / N
    clean = sum(honest_uploads[c] for c in honest) / (N - F)
    moved = np.linalg.norm(attacked - clean)
    assert 0.1 * (2 * bound * F / N) < moved <= 2 * bound * F / N


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_T31_robust_operators_do_not_select_the_target_the_mean_does(seed):
    r, u, t, _ = _attacked_round(seed, scale=_bound() * 0.999)
    res = r.server.finish()
    assert len(res.contributors) == N
    stack = np.stack([res.individual[c] for c in res.contributors])
    # candidates per prompt: the honest answer (index 0) and the target text (index 1)
    cands = np.stack([u, t], axis=1)
    mean = mean_consensus(res.total, N, noise_variance=res.noise_variance)
    assert select_nearest(cands, mean.points, mean.agreement, threshold=0.0)[0] == 1
    for op in ("trimmed_mean", "geometric_median", "medoid"):
        cons = robust_consensus(stack, op, trim_fraction=0.3)
        assert select_nearest(cands, cons.points, cons.agreement, threshold=0.0)[0] == 0, op


# ------------------------------------------------------------------ the server's whole view


def _server_view_and_releases(backend):
    """Runs a round, recording every byte the server received and each client's release in the
    back-end's own domain (masked: the encoded words; ckks: the clamped float64 matrix;
    plaintext: the float32 matrix)."""
    from aggregation_harness import grid_inputs

    from privsem.aggregation import run_exchanges

    r = make_round(backend, n=5, prompts=6, dim=16, noise_multiplier=0.5, clip=2.0)
    releases = {}
    for c, client in r.clients.items():
        real = client.add_noise

        def record(clipped, c=c, real=real):
            out = real(clipped)
            releases[c] = np.asarray(out)
            return out
        client.add_noise = record
    inputs = grid_inputs(r, seed=3)
    r.start(inputs)
    view = bytearray()
    for frame in r.first.values():
        view += frame

    def wrap(fn):
        def respond(req):
            out = fn(req)
            if out is not None:
                nonlocal view
                view += out
            return out
        return respond
    responders = {c: wrap(f) for c, f in r.responders().items()}
    run_exchanges(r.server, responders, r.first)
    assert len(r.server.finish().contributors) == 5
    return bytes(view), releases, inputs


def _windows(arr, *, width):
    """Byte strings of ``width`` consecutive values taken across the flattened array."""
    flat = np.ascontiguousarray(arr).reshape(-1)
    return [flat[i:i + width].tobytes() for i in range(0, flat.size - width, width)]


def _leaks(view, releases, inputs):
    found = []
    for c, rel in releases.items():
        reps = [rel, np.asarray(inputs[c], np.float32), np.asarray(inputs[c], np.float64),
                np.asarray(rel, np.float32), np.asarray(rel, np.float64)]
        found += [c for rep in reps for w in _windows(rep, width=4) if w in view]
    return found


def test_the_detector_finds_individual_uploads_in_the_plaintext_servers_view():
    view, releases, inputs = _server_view_and_releases("plaintext")
    assert set(_leaks(view, releases, inputs)) == set(releases)


@pytest.mark.parametrize("backend", ["masked", "ckks"])
def test_the_servers_complete_view_holds_no_individual_embedding(backend):
    """Every byte the server received in a round, searched for any 4 consecutive values of any
    client's release (in its own encoding, float32 and float64) or of its input: none is
    there under secure aggregation; the server still learns the sum."""
    view, releases, inputs = _server_view_and_releases(backend)
    assert len(view) > 5 * 6 * 16 * 4
    assert _leaks(view, releases, inputs) == []


# ------------------------------------------------------------------ differencing across rounds


def _spec(fed, rnd, cohort):
    from privsem.protocol.messages import RoundSpec
    from privsem.protocol.session import expected_params, session_id

    s = fed.server
    params = expected_params(fed.cfg, fed.plan, cohort_size=len(cohort), dim=s.dim,
                             public=s.public)
    return encode(RoundSpec(round=rnd, run=s.run,
                            session_id=session_id(rnd, cohort, s.prompt_hash, params, run=s.run),
                            cohort=cohort, prompt_ids=tuple(p.id for p in s.prompts),
                            prompt_set_hash=s.prompt_hash, dim=s.upload_dim, params=params))


def _releases(fed, client, rnd):
    return [e for e in fed.ledger.entries
            if e.client == client and e.round == rnd and e.mechanism.startswith("embedding")]


def test_T33_a_round_re_announced_with_another_cohort_gets_fresh_noise(tmp_path):
    """Differencing: after a client restarts inside round 1, the server announces round 1 again
    with one client swapped for one of its own. Resending the cached release would give the
    server two sums sharing this client's noise draw (and, with distributed noise, only a
    share of it); the client instead releases afresh under a new ledger charge. The same
    cohort still gets the cached release back (T28)."""
    from privsem.config import load_config
    from privsem.runtime.inprocess import setup

    cfg = load_config(preset="smoke", overrides=[
        "evaluation.enabled=false", "max_prompts=4", "privacy.client.placement=distributed"])
    fed = setup(cfg, tmp_path, lambda s: None)
    alice = fed.clients["alice"]
    first = _spec(fed, 1, ("alice", "bob", "carol"))
    assert alice.on_round_spec(first) is not None
    assert len(_releases(fed, "alice", 1)) == 1

    alice.abort_round()
    alice.restore(0)  # a restart inside round 1
    alice.log.status.clear()
    assert alice.on_round_spec(first) is not None
    assert any("resent the cached release" in s for s in alice.log.status)
    assert len(_releases(fed, "alice", 1)) == 1  # the same release: no new charge

    alice.abort_round()
    alice.restore(0)
    alice.log.status.clear()
    assert alice.on_round_spec(_spec(fed, 1, ("alice", "bob", "mallory"))) is not None
    assert not any("resent" in s for s in alice.log.status)
    assert len(_releases(fed, "alice", 1)) == 2  # fresh noise, charged again
