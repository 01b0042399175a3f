"""The confidence column (privsem.confidence): the upload [w·e, w] keeps the release's
sensitivity bound, the weighted mean is exact under every back-end, bad confidences are refused
on the client before anything leaves it, the ledger charges the release with the column, and
labels a confident client disagrees with are refused."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from aggregation_harness import make_round
from hypothesis import given, settings
from hypothesis import strategies as st

from privsem.confidence import (
    accepts,
    gain_confidence,
    knows,
    likelihood_confidence,
    self_agreement_confidence,
    upload_dim,
    validate_confidence,
    weighted_rows,
)
from privsem.config import load_config
from privsem.consensus import mean_consensus, medoid, robust_consensus, weighted_consensus
from privsem.errors import EmbeddingRejected
from privsem.privacy.embedding import joint_clip
from privsem.runtime.inprocess import run, run_round, setup

BACKENDS = ["plaintext", "masked", "ckks"]


def _unit_rows(rng, P, d):
    e = rng.normal(size=(P, d))
    return e / np.linalg.norm(e, axis=1, keepdims=True)


@settings(deadline=2000, max_examples=200)
@given(P=st.integers(1, 40), d=st.integers(2, 24), n=st.integers(1, 6),
       seed=st.integers(0, 2**32 - 1), extreme=st.booleans())
def test_T23_weighted_upload_keeps_the_sensitivity_bound(P, d, n, seed, extreme):
    """Rows w·e with the column w have norm w·√2, so an honest upload never exceeds the default
    clip √(2P) (nothing is shrunk), and after the joint clip one client moves the sum by at most
    the clip C the noise is calibrated to (add/remove one client)."""
    rng = np.random.default_rng(seed)
    C = math.sqrt(2 * P)
    uploads = []
    for _ in range(n):
        w = rng.choice([0.0, 1.0], size=P) if extreme else rng.uniform(0, 1, size=P)
        up = weighted_rows(_unit_rows(rng, P, d), w)
        assert up.shape == (P, d + 1)
        assert np.linalg.norm(up) <= C * (1 + 1e-12)
        clipped, factor = joint_clip(up, C)
        assert factor == pytest.approx(1.0)
        # an arbitrary (dishonest) matrix of the same shape is clipped to C as well
        wild, _ = joint_clip(rng.normal(size=(P, d + 1)) * 50, C)
        assert np.linalg.norm(wild) <= C * (1 + 1e-12)
        uploads.append(clipped)
    total = sum(uploads)
    for i in range(n):
        without = total - uploads[i]
        assert np.linalg.norm(total - without) <= C * (1 + 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_weighted_mean_is_exact_under_every_backend(backend):
    """The back-ends sum [w·e, w] like any matrix; the server's Σw·e / Σw equals the weighted
    mean of the clients' unit rows (bit for bit on the grid for plaintext and masked, within
    the stated tolerance for ckks)."""
    P, d, n = 4, 7, 5
    r = make_round(backend, n=n, prompts=P, dim=d + 1, clip=math.sqrt(2 * P))
    rng = np.random.default_rng(11)
    scale = 2.0 ** 10
    inputs, rows, weights = {}, {}, {}
    for c in r.spec.cohort:
        e = _unit_rows(rng, P, d)
        w = rng.uniform(0.05, 1.0, size=P)
        up = np.round(weighted_rows(e, w) * scale) / scale  # on the masked back-end's grid
        inputs[c], rows[c], weights[c] = up, up[:, :d], up[:, d]
    r.start(inputs)
    assert r.run() == {}
    res = r.server.finish()
    assert res.contributors == r.spec.cohort
    cons = weighted_consensus(res.total, n, noise_variance=0.0)
    want = sum(rows.values()) / sum(weights.values())[:, None]  # (P, d)
    err = np.max(np.abs(cons.points - want))
    tol = r.tolerance(n)
    if tol:  # ckks: the error of the sums, divided by Σw
        assert err <= 2 * tol / min(sum(weights.values())) + 1e-12
    else:
        assert err <= 1e-12
    assert np.allclose(cons.weight, sum(weights.values()) / n, atol=tol + 1e-12)


def test_weighted_consensus_with_equal_weights_is_the_plain_mean():
    rng = np.random.default_rng(0)
    ups = [weighted_rows(_unit_rows(rng, 5, 6), np.ones(5)) for _ in range(3)]
    total = sum(ups)
    w = weighted_consensus(total, 3, noise_variance=0.01)
    m = mean_consensus(total[:, :6], 3, noise_variance=0.01)
    assert np.allclose(w.points, m.points) and np.allclose(w.agreement, m.agreement)
    assert np.allclose(w.weight, 1.0)


def test_weighted_consensus_follows_the_confident_client():
    """Two clients agree on answer A with confidence 0.1, one answers B with confidence 0.9:
    the plain mean sits at A, the weighted mean at B."""
    a, b = np.eye(4)[0], np.eye(4)[1]
    rows = [np.stack([a]), np.stack([a]), np.stack([b])]
    w = [np.array([0.1]), np.array([0.1]), np.array([0.9])]
    total = sum(weighted_rows(e, x) for e, x in zip(rows, w))
    cons = weighted_consensus(total, 3, noise_variance=0.0)
    assert cons.points[0] @ b > cons.points[0] @ a
    plain = mean_consensus(sum(rows), 3, noise_variance=0.0)
    assert plain.points[0] @ a > plain.points[0] @ b


def test_weighted_medoid_votes_by_confidence():
    a, b = np.eye(3)[0], np.eye(3)[1]
    stack = np.stack([np.stack([a]), np.stack([a]), np.stack([b])])  # (3, 1, 3)
    assert np.allclose(medoid(stack)[0], a)
    w = np.array([[0.05], [0.05], [1.0]])
    assert np.allclose(medoid(stack, w)[0], b)
    up = np.concatenate([stack * w[:, :, None], w[:, :, None]], axis=2)
    assert np.allclose(robust_consensus(up, "medoid", trim_fraction=0.2,
                                        weighted=True).points[0], b)
    with pytest.raises(ValueError, match="takes no confidence weights"):
        robust_consensus(up, "trimmed_mean", trim_fraction=0.2, weighted=True)


@pytest.mark.parametrize("bad, why", [
    (np.array([0.5, np.nan, 0.2]), "non-finite"),
    (np.array([0.5, np.inf, 0.2]), "non-finite"),
    (np.array([0.5, 1.5, 0.2]), "outside"),
    (np.array([0.5, -0.01, 0.2]), "outside"),
    (np.array([0.5, 0.2]), "shape"),
    (np.array([1, 0, 1]), "dtype"),
    ([0.5, 0.5, 0.5], "numpy array"),
])
def test_bad_confidence_is_refused(bad, why):
    with pytest.raises(EmbeddingRejected, match=why):
        validate_confidence(bad, prompts=3)
    assert np.array_equal(validate_confidence(np.array([0.0, 0.5, 1.0]), prompts=3),
                          [0.0, 0.5, 1.0])


@pytest.mark.parametrize("bad", [np.nan, 1.5, -0.5, np.inf])
def test_T30_bad_confidence_never_leaves_the_client(tmp_path, bad):
    """A confidence outside [0, 1] or non-finite is refused on the client before the ledger is
    charged and before any message leaves it; the round continues without that client."""
    cfg = load_config(preset="smoke", overrides=["evaluation.enabled=false", "max_prompts=4",
                                                 "rounds=1"])
    fed = setup(cfg, tmp_path / "run", lambda s: None)
    carol = fed.clients["carol"]
    original = carol._compute_confidence

    def broken() -> None:
        original()
        w = carol._confidence.copy()
        w[1] = bad
        carol._confidence = w

    carol._compute_confidence = broken  # type: ignore[method-assign]
    run_round(fed, 1, lambda s: None)
    assert any("upload withheld: confidence" in s for s in carol.log.status)
    assert fed.server.result is not None and "carol" not in fed.server.result.contributors
    assert set(fed.server.result.contributors) == {"alice", "bob"}
    charged = [e for e in fed.ledger.entries if e.client == "carol" and e.unit == "client"]
    assert charged == []  # nothing released, nothing charged


def test_ledger_charges_the_release_with_the_column(tmp_path):
    cfg = load_config(preset="smoke", overrides=["evaluation.enabled=false", "max_prompts=4",
                                                 "rounds=1"])
    out = run(cfg, tmp_path / "run", show_progress=False)
    entries = [json.loads(x) for x in (out / "ledger.jsonl").read_text().splitlines()]
    releases = [e for e in entries if e["mechanism"] == "embedding_discrete_gaussian"]
    assert len(releases) == 3
    for e in releases:
        assert e["detail"]["shape"] == [4, upload_dim(384, "gain")] == [4, 385]
        assert e["detail"]["clip"] == pytest.approx(math.sqrt(2 * 4))
    plain = load_config(preset="smoke", overrides=["evaluation.enabled=false", "max_prompts=4",
                                                   "rounds=1", "consensus.confidence=none"])
    out2 = run(plain, tmp_path / "plain", show_progress=False)
    entries2 = [json.loads(x) for x in (out2 / "ledger.jsonl").read_text().splitlines()]
    rel2 = [e for e in entries2 if e["mechanism"] == "embedding_discrete_gaussian"]
    assert rel2[0]["detail"]["shape"] == [4, 384]
    assert rel2[0]["detail"]["clip"] == pytest.approx(2.0)
    # the same ε for both: the same noise multiplier on a larger clip (the column costs noise,
    # not budget), and the same ρ charged
    assert releases[0]["detail"]["noise_multiplier"] == rel2[0]["detail"]["noise_multiplier"]
    assert releases[0]["detail"]["rho"] == pytest.approx(rel2[0]["detail"]["rho"])
    spent = [e for e in entries if e["unit"] == "client" and e["mechanism"] != "noise_present"]
    assert all(e["detail"]["backend"] == "masked" for e in spent)


def test_measures_are_in_the_unit_interval():
    rng = np.random.default_rng(2)
    base, ft = rng.uniform(0, 6, (5, 3)), rng.uniform(0, 6, (5, 3))
    for w in (gain_confidence(ft, base), likelihood_confidence(ft)):
        assert w.shape == (5,) and np.all((w >= 0) & (w <= 1))
    assert np.all(gain_confidence(base, base) == 0.0)  # fine-tuning moved nothing
    assert np.all(gain_confidence(np.zeros((2, 2)), np.full((2, 2), 50.0)) > 0.99)
    agree = self_agreement_confidence([["the cat sat", "the cat sat"], ["a b c", "x y z"]])
    assert agree[0] == pytest.approx(1.0) and agree[1] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="at least 2 candidates"):
        self_agreement_confidence([["only one"]])


def test_label_acceptance():
    own = np.array([0.3, 0.3, 0.3, 0.3])
    label = np.array([2.0, 0.5, 2.0, 0.5])  # prompts 0, 2: the label is far less likely
    confident = np.array([True, True, False, False])
    ok = accepts(own, label, confident, margin=0.5)
    # refused only where confident and disagreeing
    assert ok.tolist() == [False, True, True, True]
    # no margin: refused wherever confident, whatever the likelihoods
    assert accepts(None, None, confident, margin=None).tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="needs the likelihoods"):
        accepts(None, None, confident, margin=0.5)


def test_who_knows_is_a_share_of_the_federations_confidence():
    """The probe's round 1 (instructions): bob's confidence was high on every prompt, above the
    federation's mean on recipes and planets too; as a share of Σw he knows travel only."""
    alice = np.array([0.77, 0.26, 0.14, 0.79])  # recipes, travel, planets, recipes
    bob = np.array([0.67, 0.88, 0.61, 0.76])
    carol = np.array([0.58, 0.47, 0.64, 0.32])
    total = alice + bob + carol
    assert (bob >= total / 3).tolist() == [False, True, True, True]  # the mean: too many
    assert knows(bob, total, min_confidence=0.2, share=0.5).tolist() == [False, True, False, False]
    assert knows(alice, total, min_confidence=0.2, share=0.5).tolist() == [False] * 4
    assert knows(alice, total, min_confidence=0.2, share=1 / 3).tolist() == [True, False, False,
                                                                              True]
    # the absolute floor: a share of nothing is not knowledge
    assert not knows(np.array([0.1]), np.array([0.1]), min_confidence=0.2, share=0.5)[0]


def test_client_state_is_private_and_non_finite_consensus_is_refused(tmp_path):
    """Every file under a client's state folder is 0600 in a 0700 folder (candidates, labels,
    adapters, releases, journals); a consensus broadcast with a non-finite entry is refused by
    the client, which then chooses no label from it."""
    import os
    import stat

    from privsem.errors import ProtocolAbort
    from privsem.protocol.messages import ConsensusBroadcast, Stage, StageMachine, decode, encode

    cfg = load_config(preset="smoke", overrides=["evaluation.enabled=false", "max_prompts=4",
                                                 "rounds=1"])
    out = run(cfg, tmp_path / "run", show_progress=False)
    for client in ("alice", "bob", "carol"):
        folder = out / "state" / client
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        files = list(folder.iterdir())
        assert {f.name for f in files} >= {"candidates-1.json", "labels-1.json",
                                           "adapter-trained-1.safetensors",
                                           "release-1.safetensors", "round-1.json"}
        for f in files:
            assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f.name

    fed = setup(cfg, tmp_path / "again", lambda s: None)
    carol = fed.clients["carol"]
    spec = fed.server.open_round(1, tuple(fed.clients))
    carol.on_round_spec(spec)
    P = 4
    for field in ("consensus", "agreement", "weight"):
        good = {"consensus": np.zeros((P, 384), np.float32),
                "agreement": np.ones(P, np.float32), "weight": np.ones(P, np.float32)}
        good[field] = good[field].copy()
        good[field].flat[0] = np.nan
        frame = encode(ConsensusBroadcast(session_id=decode(spec).session_id, round=1,
                                          contributors=("carol",), noise_std_of_consensus=0.0,
                                          **good))
        with pytest.raises(ProtocolAbort, match=f"{field} holds 1 non-finite"):
            carol.on_consensus(frame)
        carol.stage = StageMachine("client carol")  # as after its upload, for the next case
        carol.stage.advance(Stage.SPEC)
        carol.stage.advance(Stage.UPLOAD)
        assert carol.pseudo_labels == []


@pytest.mark.parametrize("margin, kept", [
    # null: where it knows (prompt 0: 0.9 >= 1.2 / 3), every label is refused
    ("null", ["b", "c", "d"]),
    # a margin: refused only where it knows *and* its model finds the label that much less
    # likely than its own candidates; no label is 1000 nats per token less likely
    ("1000", ["a", "b", "c", "d"]),
])
def test_a_client_that_knows_keeps_its_own_answer(tmp_path, margin, kept):
    from privsem.protocol.client import RoundLog

    cfg = load_config(preset="smoke", overrides=["evaluation.enabled=false", "max_prompts=4",
                                                 "rounds=1", f"consensus.accept_margin={margin}",
                                                 "consensus.own_answer=false"])
    fed = setup(cfg, tmp_path / "run", lambda s: None)
    carol = fed.clients["carol"]
    spec = fed.server.open_round(1, tuple(fed.clients))
    carol.on_round_spec(spec)  # trains, answers and computes its confidences
    carol._confidence = np.array([0.9, 0.1, 0.9, 0.0])
    carol._federation_weight = np.array([1.2, 1.0, 3.0, 0.5])  # knows prompt 0 only
    carol._contributors = 3
    carol.log = RoundLog(1)
    carol._set_labels(["a", "b", "c", "d"])
    assert [ex.response for ex in carol.pseudo_labels] == kept
    assert carol.log.labels_refused == 4 - len(kept)
    # ``own_answer``: where it refuses, it rehearses its own greedy answer instead
    carol.cfg = replace(carol.cfg, consensus=replace(carol.cfg.consensus, own_answer=True))
    carol.log = RoundLog(1)
    carol._set_labels(["a", "b", "c", "d"])
    own = carol._cand_texts[0][0]
    want = kept if len(kept) == 4 else [own, *kept]
    assert [ex.response for ex in carol.pseudo_labels] == (want if own.strip() else kept)
    assert carol.log.labels_refused == 4 - len(kept)


def test_proximity_measure_reads_how_close_a_prompt_is_to_the_private_prompts():
    from privsem.confidence import proximity_confidence

    e = np.eye(4)
    private = e[:2]  # the client was taught about directions 0 and 1
    mid = (e[0] * 0.55 + e[2] * math.sqrt(1 - 0.55 ** 2))[None]  # cosine 0.55 to a private one
    prompts = np.vstack([e[0], e[1], e[2], mid[0]])
    w = proximity_confidence(prompts, private, low=0.4, high=0.7)
    assert w[:3].tolist() == [1.0, 1.0, 0.0]  # taught, taught, never seen
    assert w[3] == pytest.approx((0.55 - 0.4) / 0.3)  # linear between the two ends
    assert proximity_confidence(prompts, np.zeros((0, 4)), low=0.4, high=0.7).tolist() == [0] * 4
    for low, high in ((0.7, 0.4), (-0.1, 0.5), (0.5, 1.5)):
        with pytest.raises(ValueError, match="low < high"):
            proximity_confidence(prompts, private, low=low, high=high)


def test_proximity_fails_closed_with_record_level_dp():
    """It reads the private prompts directly, so it is not post-processing of DP-SGD: the
    configuration refuses it with record-level DP, and accepts it without."""
    from privsem.errors import ConfigError

    with pytest.raises(ConfigError, match="consensus.confidence.*reads the private prompts"):
        load_config(preset="smoke", overrides=["consensus.confidence=proximity"])
    cfg = load_config(preset="smoke", overrides=["consensus.confidence=proximity",
                                                 "privacy.record.enabled=false",
                                                 "privacy.client.enabled=true"])
    assert cfg.consensus.confidence == "proximity"
    with pytest.raises(ConfigError, match="proximity_low"):
        load_config(preset="smoke", overrides=["consensus.confidence=proximity",
                                               "privacy.record.enabled=false",
                                               "consensus.proximity_low=0.8",
                                               "consensus.proximity_high=0.5"])


def test_a_client_weighs_the_prompts_its_private_data_covers(tmp_path):
    """End to end on a client: a public prompt that is one of its private prompts gets w = 1,
    the w it releases is the measure raised to the power, and it is validated like the rest."""
    from privsem.confidence import proximity_confidence
    from privsem.data import Example

    cfg = load_config(preset="smoke", overrides=[
        "evaluation.enabled=false", "max_prompts=4", "rounds=1", "privacy.record.enabled=false",
        "consensus.confidence=proximity", "consensus.confidence_power=2"])
    fed = setup(cfg, tmp_path / "run", lambda s: None)
    carol = fed.clients["carol"]
    taught = carol.prompts[0].text
    carol._private = [*carol._private, Example(messages=(("user", taught),), response="x")]
    spec = fed.server.open_round(1, tuple(fed.clients))
    carol.on_round_spec(spec)
    w = carol._confidence
    assert w is not None and w.shape == (4,) and w[0] == pytest.approx(1.0)
    expect = proximity_confidence(
        carol.embedder.encode([p.text for p in carol.prompts]),
        carol.embedder.encode([ex.messages[-1][1] for ex in carol._private]),
        low=0.4, high=0.7) ** 2
    assert np.allclose(w, expect, atol=1e-6)


def test_routing_needs_no_record_dp_and_the_mixed_schedule():
    """``consensus.route: proximity`` reads the private prompts at answer time: the
    configuration refuses it with record-level DP, without the phase-1 adapter (sequential
    schedule) and with a threshold off the ramp."""
    from privsem.errors import ConfigError

    base = ["consensus.route=proximity", "privacy.record.enabled=false",
            "privacy.client.enabled=true"]
    assert load_config(preset="smoke", overrides=base).consensus.route == "proximity"
    with pytest.raises(ConfigError, match="consensus.route.*record-level DP"):
        load_config(preset="smoke", overrides=["consensus.route=proximity"])
    with pytest.raises(ConfigError, match="consensus.route.*mixed"):
        load_config(preset="smoke", overrides=[*base, "training.schedule=sequential"])
    with pytest.raises(ConfigError, match="route_threshold"):
        load_config(preset="smoke", overrides=[*base, "consensus.route_threshold=0"])
    with pytest.raises(ConfigError, match="route"):
        load_config(preset="smoke", overrides=[*base[1:], "consensus.route=nearest"])


def test_routing_answers_near_prompts_with_the_private_adapter(tmp_path):
    """A question near the client's private prompts is answered by the adapter of phase 1, any
    other by the current adapter; which is which follows the proximity ramp, the answers are
    exactly those of the adapter chosen, and the current adapter comes back bit for bit. With
    record-level DP the client refuses to route (fail closed)."""
    import torch

    from privsem.confidence import proximity_confidence
    from privsem.data import EvalItem, Example
    from privsem.errors import ProtocolAbort

    cfg = load_config(preset="smoke", overrides=[
        "evaluation.enabled=false", "max_prompts=4", "rounds=1", "privacy.record.enabled=false",
        "consensus.route=proximity", "evaluation.max_new_tokens=6"])
    fed = setup(cfg, tmp_path / "run", lambda s: None)
    carol = fed.clients["carol"]
    taught = carol.prompts[0].text
    carol._private = [*carol._private, Example(messages=(("user", taught),), response="x")]
    spec = fed.server.open_round(1, tuple(fed.clients))
    carol.on_round_spec(spec)  # phase 1 trains; its candidates are routed already
    near = proximity_confidence(carol.embedder.encode([p.text for p in carol.prompts]),
                                carol._private_prompt_embeddings(), low=0.4, high=0.7) >= 0.5
    assert near[0] and carol.log.routed == int(near.sum())

    carol.eval_items = [
        EvalItem(Example(messages=(("user", taught),), response="x"), "own", None, None),
        EvalItem(Example(messages=(("user", "Name a colour of the sky at noon on Mars."),),
                         response="butterscotch"), "other", None, None)]
    with torch.no_grad():  # the federation's training moves the current adapter away
        for p in carol.model.parameters():
            if p.requires_grad:
                p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    current = carol._adapter_state()
    rows = carol.evaluate_questions(max_new_tokens=6, seed=3)
    assert all(torch.equal(current[n], p) for n, p in carol.model.named_parameters()
               if p.requires_grad)
    routed = [r["adapter"] for r in rows]
    assert routed[0] == "private"
    assert sum(r == "private" for r in routed) == int(np.sum(proximity_confidence(
        carol.embedder.encode([taught, "Name a colour of the sky at noon on Mars."]),
        carol._private_prompt_embeddings(), low=0.4, high=0.7) >= 0.5))
    plain = carol.evaluate_questions(max_new_tokens=6, seed=3, route=False)
    assert all(p["adapter"] == "current" for p in plain)
    with carol._swapped(carol._private_reference()):
        private = carol.evaluate_questions(max_new_tokens=6, seed=3, route=False)
    for r, p, q in zip(rows, plain, private, strict=True):
        want = q if r["adapter"] == "private" else p
        assert (r["answer"], r["nll"]) == (want["answer"], pytest.approx(want["nll"], abs=1e-5))
    assert rows[0]["nll"] != pytest.approx(plain[0]["nll"], abs=1e-5)  # the adapters differ

    # a configuration the loader would refuse, forced past it: the client still refuses
    object.__setattr__(carol.cfg.privacy.record, "enabled", True)
    with pytest.raises(ProtocolAbort, match="routing reads private prompts"):
        carol.evaluate_questions(max_new_tokens=6, seed=3)


def test_the_whole_budget_in_phase_one_is_the_local_only_training(tmp_path):
    """Without record-level DP, ``first_phase_share: 1`` trains phase 1 exactly as the
    local-only baseline trains over all its rounds, so the adapter ``route`` answers the
    client's own topics with is, bit for bit, the one it would have trained alone."""
    import torch

    common = ["evaluation.enabled=false", "max_prompts=4", "rounds=2",
              "privacy.record.enabled=false"]
    cfg = load_config(preset="smoke", overrides=[*common, "training.first_phase_share=1"])
    fed = setup(cfg, tmp_path / "semantic", lambda s: None)
    carol = fed.clients["carol"]
    carol.on_round_spec(fed.server.open_round(1, tuple(fed.clients)))
    phase1 = carol._private_reference()
    assert carol.log.dp_train is not None and carol.log.dp_train.steps > 0

    # the local-only baseline as the bench runs it: R phases of private data only
    alone = setup(load_config(preset="smoke", overrides=[*common, "training.schedule=sequential"]),
                  tmp_path / "alone", lambda s: None).clients["carol"]
    alone.train_locally(1)
    assert not all(torch.equal(phase1[n], p) for n, p in alone.model.named_parameters()
                   if p.requires_grad)  # one round is not yet the whole training
    alone.train_locally(2)
    for n, p in alone.model.named_parameters():
        if p.requires_grad:
            assert torch.equal(phase1[n], p), n
