"""The ``ckks`` back-end in the round (TESTING.md T35–T39): clients encrypt under the key
holder's public context, the aggregator adds without a secret key, the key holder decrypts the
sum once. Harness rounds first, then the whole round on tiny models."""

import dataclasses
import gc
import json
import pickle

import numpy as np
import pytest
import tenseal as ts
from aggregation_harness import grid_inputs, make_round

from privsem.aggregation import NoisePlan, get_backend
from privsem.aggregation.ckks import CONTEXT, KEY_HOLDER, he
from privsem.config import CkksConfig, load_config
from privsem.errors import ConfigError, ProtocolAbort
from privsem.protocol.messages import CkksUpload, DecryptRequest, decode, encode
from privsem.rng import SeededRandomness
from privsem.runtime.inprocess import run, run_round, setup

SMOKE = ["evaluation.max_questions=2", "max_prompts=4", "aggregation.backend=ckks"]


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x]


def _sum(inputs, members):
    return sum(inputs[c].astype(np.float64) for c in members)


# ------------------------------------------------------------------ harness rounds


def test_T36_bad_ciphertexts_exclude_only_their_senders():
    r = make_round("ckks", n=5, settings=CkksConfig(min_contributors=0.4))  # 2 of 5
    inputs = grid_inputs(r, seed=2)
    r.start(inputs)
    p_json = r.params["ckks"]
    up = {c: decode(f, CkksUpload) for c, f in r.first.items()}
    # c001: a truncated ciphertext; c002: random bytes; c003: the right key at another scale
    r.first["c001"] = encode(dataclasses.replace(
        up["c001"], ciphertexts=(up["c001"].ciphertexts[0][:5000],)))
    r.first["c002"] = encode(dataclasses.replace(
        up["c002"], ciphertexts=(bytes(SeededRandomness(9, "junk").uniform(4096)
                                       .astype(np.float64).tobytes()),)))
    ctx = ts.context_from(r.public[CONTEXT])
    ctx.global_scale = 2.0 ** 30
    flat = np.concatenate([inputs["c003"].reshape(-1), [1.0]]).tolist()
    r.first["c003"] = encode(dataclasses.replace(
        up["c003"], ciphertexts=(bytes(ts.ckks_vector(ctx, flat).serialize()),)))
    assert p_json["scale_bits"] == 40
    r.run()
    res = r.server.finish()
    assert res.contributors == ("c000", "c004")
    assert set(res.rejected) == {"c001", "c002", "c003"}
    assert "could not be parsed" in res.rejected["c001"]
    assert "could not be parsed" in res.rejected["c002"]
    assert "scale 2^30" in res.rejected["c003"]
    assert np.max(np.abs(res.total - _sum(inputs, res.contributors))) <= r.tolerance(2)


def test_T37_the_aggregator_holds_no_secret_key_only_the_key_holder_does():
    r = make_round("ckks", n=4)
    agg = r.server
    assert agg._he.is_private() is False
    assert ts.context_from(r.public[CONTEXT]).is_private() is False
    holder = r.helpers[KEY_HOLDER]
    assert holder.holder._ctx.is_private() is True
    with pytest.raises(TypeError, match="refuses to be serialised"):
        pickle.dumps(holder)
    # A public bundle that carries the secret key is refused by every party that loads it.
    leaked = dict(r.public)
    leaked[CONTEXT] = bytes(holder.holder._ctx.serialize(save_secret_key=True))
    with pytest.raises(ProtocolAbort, match="digest|secret key"):
        get_backend("ckks").server(r.spec, r.registry, leaked)


def test_T37_a_party_holding_another_key_holders_context_refuses_the_round():
    r = make_round("ckks", n=4)
    other = make_round("ckks", n=4, seed=1)
    assert other.params["context_digest"] != r.params["context_digest"]
    from privsem.aggregation.base import ClientContext

    with pytest.raises(ProtocolAbort, match="does not match the digest"):
        get_backend("ckks").client(ClientContext(
            spec=r.spec, client_id="c000", randomness=SeededRandomness(0, "c000"),
            public=other.public))
    with pytest.raises(ProtocolAbort, match="no public context"):
        get_backend("ckks").server(r.spec, r.registry, {})


def test_round_params_refuse_announced_parameters_that_differ_from_the_partys_own():
    be = get_backend("ckks")
    noise = NoisePlan(noise_multiplier=1.0, clip=2.0)
    parties = be.start_run(noise, cohort=("a", "b", "c"), prompts=3, dim=8,
                           settings=CkksConfig(), randomness=SeededRandomness(0, "h"))
    ok = be.round_params(noise, cohort_size=3, length=24, settings=CkksConfig(),
                         public=parties.public)
    assert ok["context_digest"] == he.digest(parties.public[CONTEXT])
    with pytest.raises(ValueError, match="announced parameters"):
        be.round_params(noise, cohort_size=3, length=24, settings=CkksConfig(flood_std=1e-3),
                        public=parties.public)
    with pytest.raises(ValueError, match="announced parameters"):  # another noise multiplier
        be.round_params(NoisePlan(noise_multiplier=2.0, clip=2.0), cohort_size=3, length=24,
                        settings=CkksConfig(), public=parties.public)
    with pytest.raises(ValueError, match="serves 3 clients"):
        be.round_params(noise, cohort_size=3, length=25, settings=CkksConfig(),
                        public=parties.public)
    with pytest.raises(ValueError, match="has none"):
        be.round_params(noise, cohort_size=3, length=24, settings=CkksConfig(), public={})
    with pytest.raises(ValueError, match="has none"):
        be.round_params(noise, cohort_size=3, length=24, settings=CkksConfig(),
                        public={CONTEXT: parties.public[CONTEXT]})
    with pytest.raises(ValueError, match="local noise placement"):
        be.start_run(NoisePlan(noise_multiplier=1.0, clip=2.0, placement="distributed"),
                     cohort=("a", "b", "c"), prompts=3, dim=8, settings=CkksConfig(),
                     randomness=SeededRandomness(0, "h"))
    with pytest.raises(ValueError, match="key holder's id"):
        be.start_run(noise, cohort=("a", "b", KEY_HOLDER), prompts=3, dim=8,
                     settings=CkksConfig(), randomness=SeededRandomness(0, "h"))
    with pytest.raises(ValueError, match="128-bit security"):  # T35 at run start
        be.start_run(noise, cohort=("a", "b", "c"), prompts=3, dim=8,
                     settings=CkksConfig(poly_modulus_degree=4096),
                     randomness=SeededRandomness(0, "h"))


def test_T38_aggregator_below_the_minimum_asks_nothing_and_key_holder_decrypts_once():
    r = make_round("ckks", n=5)  # min_contributors = 3
    r.start(grid_inputs(r, seed=4))
    asked = []
    holder = r.helpers[KEY_HOLDER]
    responders = r.responders()
    responders[KEY_HOLDER] = lambda req: asked.append(req) or holder.respond(req)
    from privsem.aggregation import run_exchanges

    with pytest.raises(ProtocolAbort, match="2 valid upload.s., below the minimum of 3"):
        run_exchanges(r.server, responders, r.first,
                      drop=lambda c, s: c in ("c000", "c001", "c002") and s == "upload")
    with pytest.raises(ProtocolAbort, match="key holder released no aggregate"):
        r.server.finish()
    assert asked == []  # too few uploads (2 < 3): nothing reached the key holder

    r = make_round("ckks", n=5)
    r.start(grid_inputs(r, seed=4))
    r.run()
    res = r.server.finish()
    # The aggregator's request, replayed, is refused: one decryption per round.
    req = encode(DecryptRequest(session_id=r.spec.session_id, round=r.spec.round,
                                contributors=res.contributors,
                                ciphertexts=tuple(decode(r.first["c000"]).ciphertexts)))
    with pytest.raises(ProtocolAbort, match="already decrypted once"):
        r.helpers[KEY_HOLDER].respond(req)
    assert [s.get("released") for s in r.helpers[KEY_HOLDER].seen] == [True, None]
    assert "already decrypted once" in r.helpers[KEY_HOLDER].seen[1]["refused"]


def test_T38_one_clients_ciphertext_passed_off_as_the_sum_is_refused(monkeypatch):
    """A cheating aggregator forwards c000's upload as the sum of all five: the count slot
    says 1, the key holder refuses and nothing is released."""
    from privsem.aggregation.ckks import backend

    monkeypatch.setattr(backend.he, "add_uploads",
                        lambda ups: tuple(bytes(v.serialize()) for v in ups[0]))
    r = make_round("ckks", n=5)
    r.start(grid_inputs(r, seed=4))
    aborted = r.run()
    assert "count slot says 1.000" in aborted[KEY_HOLDER]
    with pytest.raises(ProtocolAbort, match="released no aggregate"):
        r.server.finish()


def test_release_from_anyone_but_the_key_holder_or_of_other_contributors_is_refused():
    from privsem.protocol.messages import AggregateRelease

    r = make_round("ckks", n=4)
    r.start(grid_inputs(r, seed=5))
    for c, f in r.first.items():
        r.server.receive(c, f)
    req = r.server.next_requests()
    assert set(req) == {KEY_HOLDER}
    fake = encode(AggregateRelease(session_id=r.spec.session_id, round=r.spec.round,
                                   contributors=r.spec.cohort, total=np.zeros((3, 8))))
    r.server.receive("c000", fake)  # a client cannot pose as the key holder
    with pytest.raises(ProtocolAbort, match="released no aggregate"):
        r.server.finish()
    r.server.receive(KEY_HOLDER, encode(AggregateRelease(
        session_id=r.spec.session_id, round=r.spec.round, contributors=r.spec.cohort[:3],
        total=np.zeros((3, 8)))))
    assert r.server.next_requests() == {}
    with pytest.raises(ProtocolAbort, match="other contributors than requested"):
        r.server.finish()


# ------------------------------------------------------------------ the whole round


def test_ckks_run_end_to_end_and_the_report_says_who_held_which_key(tmp_path):
    cfg = load_config(preset="smoke", overrides=SMOKE)
    out = run(cfg, tmp_path / "run", show_progress=False)
    rows = _rows(out / "metrics.jsonl")
    r2 = [r for r in rows if r["round"] == 2]
    assert len(r2) == 3 and all(r["counted"] and r["contributors"] == 3 for r in r2)
    digests = {r["aggregation"]["context_digest"] for r in rows if r["round"] > 0}
    assert len(digests) == 1  # one key holder, one public context for the run
    for r in r2:
        assert r["bytes_by_stage"]["upload"]["up"] > 100_000  # ciphertexts, not a matrix
        assert r["aggregate_detail"]["context_digest"] in digests
        assert r["aggregate_detail"]["bytes"]["request"] > 100_000
    ledger = _rows(out / "ledger.jsonl")
    assert sorted({e["mechanism"] for e in ledger}) == [  # record DP: the ¾ split (no route)
        "dp_sgd", "dp_sgd_final", "embedding_gaussian", "noise_present"]
    assert r2[0]["epsilon_client"] == pytest.approx(8.0, abs=1e-3)
    report = (out / "report.md").read_text()
    assert "**alone held the secret key**" in report
    assert "never held a secret key" in report
    assert f"SHA-256 {next(iter(digests))[:16]}" in report
    assert "round 2: sum over 3 survivors (alice, bob, carol)" in report
    assert "The server sees only ciphertexts and their decrypted sum" in report


def _reachable_contexts(root):
    """Every TenSEAL context reachable from ``root`` through Python references."""
    seen, found, todo = set(), [], [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, type)):
            continue
        seen.add(id(obj))
        if isinstance(obj, ts.Context):
            found.append(obj)
            continue
        if isinstance(obj, np.ndarray) or len(seen) > 200_000:
            continue
        todo.extend(gc.get_referents(obj))
    return found


def test_T2_T37_ckks_round_from_survivors_and_no_secret_key_on_the_server(tmp_path):
    cfg = load_config(preset="smoke", overrides=[*SMOKE, "evaluation.enabled=false"])
    fed = setup(cfg, tmp_path, lambda s: None)
    traffic = run_round(fed, 1, lambda s: None, drop=lambda c, s: c == "carol" and s == "upload")
    res = fed.server.result
    assert res is not None and res.contributors == ("alice", "bob") and res.individual is None
    charged = {e.client for e in fed.ledger.entries if e.mechanism == "embedding_gaussian"}
    assert charged == {"alice", "bob", "carol"}  # carol was charged before her upload left
    notes = [e for e in fed.ledger.entries if e.mechanism == "noise_present"]
    assert {e.client for e in notes} == {"alice", "bob"}
    assert all(e.detail["contributors"] == 2 for e in notes)
    kh = traffic[KEY_HOLDER]["stages"]["decrypt"]
    assert kh["down"] > 100_000 and kh["up"] > 4 * 384 * 8  # one sum in, one matrix out
    assert fed.helpers[KEY_HOLDER].seen == [{"round": 1, "contributors": ["alice", "bob"],
                                             "bytes": kh["down"], "released": True}]
    # Everything the server holds: TenSEAL contexts, and not one with a secret key.
    contexts = _reachable_contexts(fed.server)
    assert contexts and not any(c.is_private() for c in contexts)
    assert any(c.is_private() for c in _reachable_contexts(fed.helpers[KEY_HOLDER]))


def test_a_silent_key_holder_aborts_the_round_with_nothing_released(tmp_path):
    cfg = load_config(preset="smoke", overrides=[*SMOKE, "evaluation.enabled=false"])
    fed = setup(cfg, tmp_path, lambda s: None)
    run_round(fed, 1, lambda s: None, drop=lambda c, s: c == KEY_HOLDER)
    assert fed.server.result is None and fed.server.consensus is None
    assert "key holder released no aggregate" in fed.server.abort_reason
    for c in fed.clients.values():
        assert c.stage.stage.value == "aborted"
        assert any(s.startswith(f"{KEY_HOLDER}: went silent") for s in c.log.status)


def test_ckks_configuration_refusals():
    base = load_config(preset="smoke")
    two = [dataclasses.replace(c) for c in base.clients[:2]]
    with pytest.raises(ConfigError, match="at least 3 clients"):
        dataclasses.replace(base, clients=tuple(two), aggregation=dataclasses.replace(
            base.aggregation, backend="ckks"))
    with pytest.raises(ConfigError, match="distributed noise is only private"):
        load_config(preset="smoke", overrides=["aggregation.backend=ckks",
                                               "privacy.client.placement=distributed"])
    with pytest.raises(ConfigError, match="min_contributors"):
        load_config(preset="smoke", overrides=["aggregation.ckks.min_contributors=0"])
    cfg = load_config(preset="smoke", overrides=["aggregation.backend=ckks"])
    assert cfg.aggregation.settings() == CkksConfig()


# ------------------------------------------------------------------ boundary checks, one each


def test_aggregator_envelope_checks_exclude_with_a_reason():
    r = make_round("ckks", n=6, settings=CkksConfig(min_contributors=0.3))  # 2 of 6
    r.start(grid_inputs(r, seed=6))
    up = decode(r.first["c001"], CkksUpload)
    r.server.receive("c000", r.first["c000"])
    r.server.receive("c001", encode(dataclasses.replace(up, client="c002")))
    r.server.receive("stranger", encode(dataclasses.replace(up, client="stranger")))
    r.server.receive("c003", r.first["c003"])
    r.server.receive("c004", r.first["c004"])
    r.server.receive("c004", r.first["c003"])  # a second, different upload
    other = make_round("ckks", n=6)
    other.start(grid_inputs(other, seed=6))
    r.server.receive("c002", other.first["c002"])  # an upload of another session
    req = r.server.next_requests()
    r.server.receive("c001", r.first["c001"])  # its own upload, too late
    r.server.receive("c005", r.first["c005"])  # a first upload, too late
    assert r.server._inbox.rejected["c005"] == "upload after the stage closed"
    assert "names 'c002' as its sender" in r.server._inbox.rejected["c001"]
    assert "not a member of this round's cohort" in r.server._inbox.rejected["stranger"]
    assert r.server._inbox.rejected["c002"] == "message belongs to another session or round (replay)"
    assert "conflicting second upload" in r.server._inbox.rejected["c004"]
    assert decode(req[KEY_HOLDER]).contributors == ("c000", "c003")


@pytest.mark.parametrize("fault", ["malformed", "shape", "nan", "twice"])
def test_a_bad_release_from_the_key_holder_releases_nothing(fault):
    from privsem.protocol.messages import AggregateRelease

    r = make_round("ckks", n=4)
    r.start(grid_inputs(r, seed=5))
    for c, f in r.first.items():
        r.server.receive(c, f)
    r.server.next_requests()
    good = {"session_id": r.spec.session_id, "round": r.spec.round,
            "contributors": r.spec.cohort}
    frames = {"malformed": [b"garbage"],
              "shape": [encode(AggregateRelease(**good, total=np.zeros((3, 7))))],
              "nan": [encode(AggregateRelease(**good, total=np.full((3, 8), np.nan)))],
              "twice": [encode(AggregateRelease(**good, total=np.zeros((3, 8))))] * 2}[fault]
    for f in frames:
        r.server.receive(KEY_HOLDER, f)
    with pytest.raises(ProtocolAbort, match={"malformed": "malformed", "shape": "finite",
                                             "nan": "finite", "twice": "twice"}[fault]):
        r.server.finish()


def test_key_holder_refuses_a_malformed_request_and_records_what_it_saw():
    from privsem.aggregation.ckks.keyholder import KeyHolderRefusal

    r = make_round("ckks", n=4)
    with pytest.raises(KeyHolderRefusal, match="malformed decryption request"):
        r.helpers[KEY_HOLDER].respond(b"not a request")
    assert r.helpers[KEY_HOLDER].seen == []


def test_client_clamps_to_the_value_bound_and_checks_the_rounds_shape():
    r = make_round("ckks", n=4, noise_multiplier=0.5)
    client = r.clients["c000"]
    x = np.zeros((3, 8))
    x[0, 0], x[1, 1] = 1e6, -1e6  # far beyond clip · (1 + 8 z) = 10
    noised = client.add_noise(x)
    assert noised[0, 0] == 10.0 and noised[1, 1] == -10.0
    assert client.stats["clamped_entries"] == 2
    from privsem.aggregation.base import ClientContext

    for spec in (dataclasses.replace(r.spec, dim=9),
                 dataclasses.replace(r.spec, params={"aggregation": {"ckks": {}}})):
        with pytest.raises(ProtocolAbort, match="parameters for a|incomplete or invalid"):
            get_backend("ckks").client(ClientContext(
                spec=spec, client_id="c000", randomness=SeededRandomness(0, "c000"),
                public=r.public))
