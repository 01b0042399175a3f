"""The whole round on tiny models: run folder, determinism, budget refusal, client-side checks."""

import json
from dataclasses import replace

import numpy as np
import pytest

from privsem.config import load_config
from privsem.errors import ProtocolAbort
from privsem.protocol.messages import RoundSpec, decode, encode
from privsem.runtime.inprocess import run, run_round, setup

SMOKE = ["evaluation.max_questions=2", "max_prompts=4"]


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x]


def test_smoke_run_writes_the_four_files(tmp_path):
    out = run(load_config(preset="smoke"), tmp_path / "run", show_progress=False)
    for name in ("config.yaml", "metrics.jsonl", "ledger.jsonl", "report.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    rows = _rows(out / "metrics.jsonl")
    assert {r["round"] for r in rows} == {0, 1, 2} and len(rows) == 9
    # under record-level DP (the smoke preset) the run does not route, so ``auto`` resolves to
    # the gentle recipe: ¾ of the private budget in phase 1, the rest over the later phases
    r2 = [r for r in rows if r["round"] == 2]
    for r in r2:
        for key in ("client", "model", "bytes_up", "bytes_down", "seconds", "train_loss",
                    "final_train_loss", "own_similarity", "other_similarity", "mean_agreement"):
            assert r[key] is not None, key
        assert r["bytes_up"] > 6 * 384 * 4  # the (6 × 384) float32 matrix at least
        assert r["epsilon_record"] == pytest.approx(8.0, abs=1e-3)
        assert r["epsilon_client"] == pytest.approx(8.0, abs=1e-3)
    ledger = _rows(out / "ledger.jsonl")
    # clients × rounds × (dp_sgd, embedding, zero-cost note of the noise present: T26), and
    # per client the mixed schedule's final phase on the last round's labels
    assert len(ledger) == 3 * 2 * 3 + 3
    assert sorted({e["mechanism"] for e in ledger}) == [
        "dp_sgd", "dp_sgd_final", "embedding_discrete_gaussian", "noise_present"]
    upload = next(e for e in ledger if e["mechanism"] == "embedding_discrete_gaussian")
    assert upload["detail"]["shape"] == [6, 385]  # the rows w·e and the confidence column
    report = (out / "report.md").read_text()
    assert "| 2 | alice | tiny-llama |" in report and "ε client" in report
    assert "learns **only the noisy sum over the survivors**" in report
    assert "round 2: sum over 3 survivors" in report


def _strip(rows, keys):
    return [{k: v for k, v in r.items() if k not in keys} for r in rows]


def test_deterministic_under_a_seed(tmp_path):
    cfg = load_config(preset="smoke", overrides=SMOKE)
    a = run(cfg, tmp_path / "a", show_progress=False)
    b = run(cfg, tmp_path / "b", show_progress=False)
    timing = {"seconds", "phase_seconds", "eval_seconds", "round_seconds"}
    assert _strip(_rows(a / "metrics.jsonl"), timing) == _strip(_rows(b / "metrics.jsonl"),
                                                                 timing)
    volatile = {"time", "hash", "prev"}
    assert _strip(_rows(a / "ledger.jsonl"), volatile) == _strip(_rows(b / "ledger.jsonl"),
                                                                 volatile)
    c = run(replace(cfg, seed=1), tmp_path / "c", show_progress=False)
    assert _strip(_rows(a / "metrics.jsonl"), timing) != _strip(_rows(c / "metrics.jsonl"),
                                                                timing)


@pytest.mark.parametrize("share", [0.75, 1])
def test_T27_budget_exhausted_client_refuses_before_touching_private_data(tmp_path,
                                                                         monkeypatch, share):
    # A record budget below one round's spend: the client must refuse DP-SGD outright. The
    # ¾ split keeps private steps for the phase after the labels, which must be refused too.
    cfg = load_config(preset="smoke", overrides=[*SMOKE, "rounds=1", "evaluation.enabled=false",
                                                 "privacy.record.budget=0.5",
                                                 f"training.first_phase_share={share}"])
    import privsem.protocol.client as client_mod

    def forbidden(*a, **k):
        raise AssertionError("private training ran although the budget was exhausted")

    labels_only = []

    def plain(model, data, **k):  # label-only passes (share 1) read at most the 4 labels
        if len(data) > 4:
            raise AssertionError(f"plain training on {len(data)} examples: private data")
        labels_only.append(len(data))
        return real_plain(model, data, **k)

    real_plain = client_mod.train_plain
    monkeypatch.setattr(client_mod, "train_dp_sgd", forbidden)
    monkeypatch.setattr(client_mod, "train_mixed", forbidden)
    monkeypatch.setattr(client_mod, "train_plain", plain if share == 1 else forbidden)
    fed = setup(cfg, tmp_path, lambda s: None)
    run_round(fed, 1, lambda s: None)
    for c in fed.clients.values():
        assert c.log.dp_train is None
        assert any("refused private training" in s for s in c.log.status)
    assert all(e.unit == "client" for e in fed.ledger.entries)  # no record-level charge
    assert bool(labels_only) == (share == 1)  # share 1: the labels are still trained on


def test_T27_client_budget_refusal_means_no_upload(tmp_path):
    cfg = load_config(preset="smoke", overrides=[*SMOKE, "rounds=2", "evaluation.enabled=false",
                                                 "privacy.client.budget=5.0"])
    fed = setup(cfg, tmp_path, lambda s: None)
    run_round(fed, 1, lambda s: None)  # ε_client after round 1 ≈ 5.33 > 5: refused already
    # Nobody uploads, so the masked round aborts below its minimum of survivors.
    assert fed.server.result is None and "below the minimum" in (fed.server.abort_reason or "")
    assert not [e for e in fed.ledger.entries if e.unit == "client"]


def test_T32_client_aborts_on_tampered_round_spec(tmp_path):
    cfg = load_config(preset="smoke", overrides=[*SMOKE, "evaluation.enabled=false"])
    fed = setup(cfg, tmp_path, lambda s: None)
    spec = decode(fed.server.open_round(1, tuple(fed.clients)), RoundSpec)
    client = fed.clients["alice"]
    weaker = replace(spec, params={**spec.params, "embedding_noise_multiplier": 0.01})
    with pytest.raises(ProtocolAbort, match="differ from the client's own"):
        client.on_round_spec(encode(weaker))
    other_prompts = replace(spec, prompt_set_hash="0" * 64)
    with pytest.raises(ProtocolAbort, match="different prompt set"):
        client.on_round_spec(encode(other_prompts))
    forged_sid = replace(spec, session_id="f" * 64)
    with pytest.raises(ProtocolAbort, match="session id"):
        client.on_round_spec(encode(forged_sid))
    assert not fed.ledger.entries  # nothing charged, nothing released


def test_T9_client_refuses_a_replayed_round(tmp_path):
    cfg = load_config(preset="smoke", overrides=[*SMOKE, "evaluation.enabled=false"])
    fed = setup(cfg, tmp_path, lambda s: None)
    run_round(fed, 1, lambda s: None)
    charged = len(fed.ledger.entries)
    old = fed.server.open_round(1, tuple(fed.clients))  # round 1 announced again
    with pytest.raises(ProtocolAbort, match="replayed or out of order"):
        fed.clients["alice"].on_round_spec(old)
    assert len(fed.ledger.entries) == charged


def test_T30_bad_embeddings_withheld_on_the_client(tmp_path, monkeypatch):
    cfg = load_config(preset="smoke", overrides=[*SMOKE, "rounds=1", "evaluation.enabled=false"])
    fed = setup(cfg, tmp_path, lambda s: None)
    bob = fed.clients["bob"]
    monkeypatch.setattr(bob, "answer_matrix",
                        lambda: np.full((4, 384), np.nan))
    run_round(fed, 1, lambda s: None)
    assert any("upload withheld" in s for s in bob.log.status)
    assert fed.server.result.contributors == ("alice", "carol")
    assert not [e for e in fed.ledger.entries if e.client == "bob" and e.unit == "client"]


def test_shared_selection_round(tmp_path):
    cfg = load_config(preset="smoke", overrides=[*SMOKE, "rounds=1", "evaluation.enabled=false",
                                                 "consensus.selection=shared"])
    fed = setup(cfg, tmp_path, lambda s: None)
    traffic = run_round(fed, 1, lambda s: None)
    labels = [c.pseudo_labels for c in fed.clients.values()]
    assert labels[0] and labels[0] == labels[1] == labels[2]  # everyone got the server's pick
    noms = [e for e in fed.ledger.entries if e.mechanism == "text_nomination"]
    assert len(noms) == 3
    assert all(t["up"] > 0 and t["down"] > 0 for t in traffic.values())
    for t in traffic.values():  # the nominated texts up, the chosen labels down
        assert t["stages"]["nomination"]["up"] > 0 and t["stages"]["labels"]["down"] > 0
        assert t["stages"]["consensus"]["up"] == 0


@pytest.mark.parametrize("operator", ["medoid", "geometric_median", "trimmed_mean"])
def test_plaintext_robust_operators_run(tmp_path, operator):
    # medoid takes the confidence weights; the coordinate-wise operators only the plain rows
    weights = [] if operator == "medoid" else ["consensus.confidence=none"]
    cfg = load_config(preset="smoke", overrides=[*SMOKE, "rounds=1", "evaluation.enabled=false",
                                                 f"consensus.operator={operator}",
                                                 "aggregation.backend=plaintext", *weights])
    fed = setup(cfg, tmp_path, lambda s: None)
    run_round(fed, 1, lambda s: None)
    assert fed.server.consensus is not None
    assert fed.server.consensus.points.shape == (4, 384)


def test_T26_masked_round_completes_from_survivors_when_a_client_drops(tmp_path):
    """The main job's back-end in the real round: carol drops after sharing her keys; the
    sum is over alice and bob, the ledger holds carol's charge (made before she sent
    anything), and the run folder records the dropout and the bytes of every stage."""
    cfg = load_config(preset="smoke", overrides=[*SMOKE, "evaluation.enabled=false"])
    assert cfg.aggregation.backend == "masked"
    fed = setup(cfg, tmp_path, lambda s: None)
    traffic = run_round(fed, 1, lambda s: None, drop=lambda c, s: c == "carol" and s == "input")
    res = fed.server.result
    assert res is not None and res.contributors == ("alice", "bob")
    assert res.dropped == ("carol",)
    assert res.individual is None  # the server never sees one client's matrix
    charged = {e.client for e in fed.ledger.entries if e.mechanism.startswith("embedding")}
    assert charged == {"alice", "bob", "carol"}
    # T26: the survivors note the noise actually present in the sum, at no cost in ε.
    notes = [e for e in fed.ledger.entries if e.mechanism == "noise_present"]
    assert {e.client for e in notes} == {"alice", "bob"}
    assert all(e.detail["contributors"] == 2 and e.event == {"type": "no_op"} for e in notes)
    assert fed.ledger.spent("alice", "client", delta=1e-5) == max(
        e.epsilon_after for e in fed.ledger.entries if e.client == "alice" and e.unit == "client")
    assert set(traffic["alice"]["stages"]) >= {"advertise", "share", "input", "consistency",
                                               "unmask", "consensus"}
    assert "unmask" not in traffic["carol"]["stages"]
    assert fed.clients["carol"].stage.stage.value == "aborted"
    assert fed.clients["alice"].stage.stage.value == "done"


def test_masked_round_aborts_cleanly_below_the_minimum(tmp_path):
    cfg = load_config(preset="smoke", overrides=[*SMOKE, "evaluation.enabled=false"])
    fed = setup(cfg, tmp_path, lambda s: None)
    run_round(fed, 1, lambda s: None, drop=lambda c, s: c != "alice" and s == "share")
    assert fed.server.result is None
    assert "below the minimum" in (fed.server.abort_reason or "")
    assert all(c.stage.stage.value == "aborted" for c in fed.clients.values())


def test_split_federation_matches_the_whole(tmp_path):
    """As in a deployment: the server built alone (no client, no private data, no ledger) and
    each client alone with its own ledger and state. Run through the same transport, the
    round gives the same aggregate and each client's ledger the same entries."""
    from privsem.aggregation.masked.crypto import Identity
    from privsem.runtime.inprocess import serve_round, setup_node, setup_server
    from privsem.runtime.parties import ClientEndpoint, InProcess

    cfg = load_config(preset="smoke", overrides=[*SMOKE, "rounds=1", "evaluation.enabled=false"])
    whole = setup(cfg, tmp_path / "whole", lambda s: None)
    run_round(whole, 1, lambda s: None)

    identities = {c.id: Identity() for c in cfg.clients}
    registry = {cid: i.public for cid, i in identities.items()}
    server = setup_server(cfg, registry=registry, progress=lambda s: None, run="ab" * 16)
    nodes = {c.id: setup_node(cfg, c.id, tmp_path / "nodes" / c.id, identity=identities[c.id],
                              registry=registry, progress=lambda s: None, run="ab" * 16)
             for c in cfg.clients}
    assert not hasattr(server, "ledger") and not hasattr(server, "clients")
    net = InProcess({cid: ClientEndpoint(client) for cid, (client, _) in nodes.items()},
                    drop=lambda c, s: False, first_stage=lambda: server.collector.stage,
                    progress=lambda s: None)
    serve_round(server, tuple(nodes), 1, net, lambda s: None)

    assert server.result.contributors == whole.server.result.contributors
    assert np.array_equal(server.result.total, whole.server.result.total)
    volatile = {"time", "hash", "prev", "seq"}
    for cid, (_, ledger) in nodes.items():
        mine = _strip(_rows(tmp_path / "nodes" / cid / "ledger.jsonl"), volatile)
        assert mine == [r for r in _strip(_rows(tmp_path / "whole" / "ledger.jsonl"), volatile)
                        if r["client"] == cid]
        assert {e.client for e in ledger.entries} == {cid}  # a node's ledger holds only its own


def test_deployment_parts_refuse_what_they_cannot_serve(tmp_path):
    from privsem.aggregation.masked.crypto import Identity
    from privsem.errors import ConfigError
    from privsem.runtime.inprocess import setup_node, setup_server

    cfg = load_config(preset="smoke", overrides=[*SMOKE, "aggregation.backend=ckks"])
    with pytest.raises(ConfigError, match="key holder"):
        setup_server(cfg, registry={}, progress=lambda s: None, run="ab" * 16)
    with pytest.raises(ConfigError, match="one of the configured clients"):
        setup_node(load_config(preset="smoke"), "mallory", tmp_path, identity=Identity(),
                   registry={}, progress=lambda s: None, run="ab" * 16)


def test_the_whole_private_budget_in_phase_one_then_labels_only(tmp_path):
    """``first_phase_share: 1``: every DP-SGD step in round 1, charged once; the later phases
    train on the labels alone, read no private example and charge nothing, and the run's ε is
    the planned total."""
    from privsem.privacy.plan import phase_split

    assert phase_split(24, 4, 1.0) == (24, 0, 0, 0)
    assert phase_split(1, 3, 1.0) == (1, 0, 0)
    cfg = load_config(preset="smoke", overrides=[*SMOKE, "training.first_phase_share=1"])
    out = run(cfg, tmp_path / "run", show_progress=False)
    ledger = _rows(out / "ledger.jsonl")
    sgd = [e for e in ledger if e["mechanism"].startswith("dp_sgd")]
    assert sorted((e["client"], e["round"], e["mechanism"]) for e in sgd) == [
        (c, 1, "dp_sgd") for c in ("alice", "bob", "carol")]
    rows = _rows(out / "metrics.jsonl")
    for r in (r for r in rows if r["round"] >= 1):
        assert r["epsilon_record"] == pytest.approx(8.0, abs=1e-3)  # the whole plan, once
    r2 = [r for r in rows if r["round"] == 2]
    assert all(r["dp_steps"] == 0 and r["pseudo_label_loss"] is not None for r in r2)
    assert all(r["final_train_loss"] is not None for r in r2)  # the last labels count too
    assert all(any("pseudo-labels only" in s for s in r["status"]) for r in r2)


def test_a_final_share_ends_on_private_data_and_labels(tmp_path):
    """``final_phase_share``: phase 1 and the last phase train on private data (charged as
    ``dp_sgd`` of round 1 and ``dp_sgd_final`` of the last round), the phase between on labels
    only (no charge); ε is the planned total."""
    cfg = load_config(preset="smoke", overrides=[*SMOKE, "rounds=3",
                                                 "training.first_phase_share=0.5",
                                                 "training.final_phase_share=0.5"])
    out = run(cfg, tmp_path / "run", show_progress=False)
    sgd = [e for e in _rows(out / "ledger.jsonl") if e["mechanism"].startswith("dp_sgd")]
    assert sorted((e["client"], e["round"], e["mechanism"]) for e in sgd) == sorted(
        [(c, 1, "dp_sgd") for c in ("alice", "bob", "carol")]
        + [(c, 3, "dp_sgd_final") for c in ("alice", "bob", "carol")])
    rows = _rows(out / "metrics.jsonl")
    assert all(r["dp_steps"] == 0 for r in rows if r["round"] in (2, 3))
    assert all(r["epsilon_record"] == pytest.approx(8.0, abs=1e-3) for r in rows
               if r["round"] == 3)
