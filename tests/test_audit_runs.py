"""Run-folder audits (issue 5): canaries planted at set-up, the canary, membership-inference
and inversion audits of a finished run, their report section (T19, T34, T43, T44).

The fast part runs one smoke-sized federation of tiny models with record-level DP off and
canaries planted in `alice`, trained long enough to memorise them, and audits it. The slow part
runs a DP federation on the masked back-end and checks that the audit does not refute its ε.
"""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from privsem.audits import planting
from privsem.cli import main
from privsem.config import load_config
from privsem.errors import ConfigError, DataError
from privsem.privacy.analysis import dpsgd_event, epsilon
from privsem.privacy.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]
# Tiny random models learn through LoRA only when it reaches the output layer as well.
TINY_TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj", "lm_head"]


def _config(tmp: Path, **over: object) -> Path:
    """A smoke-sized federation: alice (tiny Llama, canaries) and bob (tiny Gemma-3, 8 examples),
    plaintext back-end, one round, record-level DP off, 30 epochs (memorises)."""
    bob = tmp / "bob.train.jsonl"
    lines = (ROOT / "privsem/data/demo/bob.train.jsonl").read_text().splitlines()[:8]
    bob.write_text("\n".join(lines) + "\n")
    cfg: dict = {
        "name": "audit-fast", "seed": 0, "rounds": 1, "prompts": "demo:prompts.jsonl",
        "max_prompts": 4, "threads": 1,
        "clients": [
            {"id": "alice", "model": {"name": "tiny-llama", "max_length": 96,
                                      "lora": {"targets": TINY_TARGETS}},
             "train": "demo:alice.train.jsonl"},
            {"id": "bob", "model": {"name": "tiny-gemma3", "max_length": 96},
             "train": str(bob)}],
        "training": {"batch_size": 8, "epochs_per_round": 30.0, "learning_rate": 0.01},
        "privacy": {"randomness": "seeded", "record": {"enabled": False},
                    "client": {"epsilon": 8.0}},
        "aggregation": {"backend": "plaintext"},
        "generation": {"candidates": 2, "max_new_tokens": 8, "batch_size": 16},
        "evaluation": {"enabled": False},
        "audit": {"canaries": {"client": "alice", "count": 32}}}
    cfg.update(over)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    out = tmp / "run"
    assert main(["run", str(_config(tmp)), "--out", str(out), "--quiet"]) == 0
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(run, dst)
    return dst


# ---------------------------------------------------------------------------------- config


@pytest.mark.parametrize("override, field", [
    ("audit.canaries.client=zed", "audit.canaries.client"),
    ("audit.canaries.count=1", "audit.canaries.count"),
    ("audit.canaries.format=hex", "audit.canaries.format"),
    ("audit.canaries.length=3", "audit.canaries.length"),
    ("audit.canaries.length=16", "audit.canaries.length"),
    ("audit.canaries.count=2.5", "audit.canaries.count"),
    ("audit.canaries.colour=red", "audit.canaries.colour")])
def test_canary_config_is_validated_with_the_field_named(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(preset="smoke", overrides=["audit.canaries.client=alice", override])
    assert e.value.field == field


def test_canaries_are_off_by_default_and_the_audit_preset_plants_them():
    assert load_config(preset="smoke").audit.canaries is None
    cc = load_config(preset="audit").audit.canaries
    assert cc is not None and (cc.client, cc.count, cc.format) == ("alice", 64, "digits")
    words = load_config(preset="smoke", overrides=["audit.canaries.client=bob",
                                                   "audit.canaries.format=words",
                                                   "audit.canaries.length=7"]).audit.canaries
    fmt = planting.canary_format(words)  # the longest word secret fits the exact sampler
    assert fmt.space_size == 100 ** 7 and len(set(planting.WORDS)) == 100


# --------------------------------------------------------------------------------- planting


def test_planting_draws_from_the_runs_randomness_and_writes_the_secret(tmp_path):
    cfg = load_config(preset="smoke", overrides=["audit.canaries.client=carol",
                                                 "audit.canaries.count=200"])
    private = {"alice": [], "carol": []}
    planted = planting.plant_for_run(cfg, tmp_path, private)
    again = planting.draw(cfg)  # seeded: the same canaries and split every time
    assert [c.secret for c in planted.canaries] == [c.secret for c in again.canaries]
    assert np.array_equal(planted.included, again.included)
    # each canary included independently with probability ½: 200 draws, sd 7.1
    assert abs(int(planted.included.sum()) - 100) < 30
    assert private["carol"] == planted.members and private["alice"] == []
    back = planting.load_planted(tmp_path)
    assert [c.text for c in back.canaries] == [c.text for c in planted.canaries]
    assert np.array_equal(back.included, planted.included)
    data = json.loads(planting.canaries_path(tmp_path).read_text())
    assert "away from the server" in data["about"]
    # a hand-edited canary is refused, not scored
    data["canaries"][3]["text"] = "My account PIN is 000000."
    planting.canaries_path(tmp_path).write_text(json.dumps(data))
    with pytest.raises(DataError, match="canary 3 does not match"):
        planting.load_planted(tmp_path)


def test_a_resumed_run_reads_its_canaries_back(tmp_path, monkeypatch):
    cfg = load_config(preset="smoke", overrides=["audit.canaries.client=alice"])
    first = planting.plant_for_run(cfg, tmp_path, {"alice": []})
    monkeypatch.setattr(planting, "draw", lambda cfg: pytest.fail("drew new canaries"))
    private: dict = {"alice": []}
    again = planting.plant_for_run(cfg, tmp_path, private, resumes=1)
    assert [c.secret for c in again.canaries] == [c.secret for c in first.canaries]
    assert len(private["alice"]) == int(first.included.sum())
    other = load_config(preset="smoke", overrides=["audit.canaries.client=bob"])
    with pytest.raises(DataError, match="does not belong to this configuration"):
        planting.plant_for_run(other, tmp_path, {"bob": []}, resumes=1)


def test_T19_the_plan_counts_the_planted_canaries(fast_run):
    planted = planting.load_planted(fast_run)
    n = 48 + int(planted.included.sum())
    entries = [json.loads(x) for x in (fast_run / "ledger.jsonl").read_text().splitlines()]
    dp = [e for e in entries if e["client"] == "alice" and e["mechanism"] == "dp_sgd"]
    assert dp and dp[0]["detail"]["sample_rate"] == pytest.approx(8 / n)
    # record-level DP is off here, so the charge is non-private (ε = ∞), never a claim
    assert dp[0]["event"] == {"type": "non_private"}


# ---------------------------------------------------------------------------- canary audit


def test_T34_T43_canary_audit_of_a_non_private_run(fast_run, capsys):
    code = main(["audit", "canaries", str(fast_run), "--exposure-samples", "20"])
    out = capsys.readouterr().out
    assert code == 0, out  # no claim to refute (ε = ∞), no leak
    d = fast_run / "audit"
    for name in ("canary_audit.json", "canary_roc.png", "canary_scores.png"):
        assert (d / name).is_file() and (d / name).stat().st_size > 0
    r = json.loads((d / "canary_audit.json").read_text())
    assert r["accounted"]["epsilon"] == "inf" and not r["contradiction"]
    # without record-level DP the run routes: alice answers with two adapters (phase 1's near
    # her data, the end-of-round one elsewhere); both are attacked, the stronger reported, and
    # each attack of each adapter tested at 1 − β/6 so the maximum holds at 1 − β
    assert set(r["adapters"]) == {"trained-1", f"end-{r['round']}"}
    assert r["adapter"] in r["adapters"]
    bounds = {t: a["epsilon_lower_bound"] for t, a in r["adapters"].items()}
    assert r["one_run"]["epsilon_lower_bound"] == max(bounds.values()) == bounds[r["adapter"]]
    assert r["one_run"]["per_attack_confidence"] == pytest.approx(1 - 0.05 / 6)
    assert r["attacks"]["loss"]["auc"] == pytest.approx(r["adapters"][r["adapter"]]["auc"]["loss"])
    # the non-private model memorised its canaries (observed AUC ≈ 0.95-1.0 for all three)
    assert r["attacks"]["loss"]["auc"] > 0.8 and r["attacks"]["reference"]["auc"] > 0.8
    assert r["one_run"]["epsilon_lower_bound"] > 0.05
    v = r["verbatim"]
    assert v["pseudo_labels"]["clean"] and v["persisted_files"]["clean"]
    assert v["pseudo_labels"]["texts_checked"] > 0
    assert "ledger.jsonl" in v["persisted_files"]["files_checked"]
    assert len(r["exposure"]["per_canary"]) == 32
    assert "one-run empirical ε lower bound" in out and "accounted record-level ε" in out
    assert f"adapter {r['adapter']} (the stronger of trained-1, end-{r['round']})" in out
    # the report has the audit section and never a canary
    md, page = (fast_run / "report.md").read_text(), (fast_run / "report.html").read_text()
    assert "## Audits" in md and 'id="audits"' in page and "### Canary audit" in md
    assert "Empirical ε lower bound" in md
    assert f"the stronger attack's, `{r['adapter']}`" in md  # which adapter the figures are of
    for c in planting.load_planted(fast_run).canaries:
        assert c.secret not in md and c.text not in page


def test_T43_audit_fails_loudly_when_the_ledger_claims_less_than_the_model_shows(
        fast_run, tmp_path, capsys):
    run = _copy(fast_run, tmp_path)
    # TEST-ONLY LEDGER: it claims DP-SGD at σ = 1000 for the non-private model of this run, a
    # contradiction the audit must catch. Nothing in privsem ever writes such a ledger.
    (run / "ledger.jsonl").unlink()
    (run / "ledger.jsonl.head").unlink()
    claim = dpsgd_event(noise_multiplier=1000.0, sample_rate=0.13, steps=240)
    eps = epsilon([claim], delta=1e-5)
    Ledger(run / "ledger.jsonl").charge(
        client="alice", round=1, unit="record", mechanism="dp_sgd", event=claim, delta=1e-5,
        budget=math.inf, detail={"test_only": "claims an ε the run never had"})
    assert eps < 0.01  # below the bound the non-private model gives (> 0.05, tested above)
    code = main(["audit", "canaries", str(run), "--exposure-samples", "0"])
    err = capsys.readouterr().err
    assert code == 3
    assert "PRIVACY AUDIT FAILED" in err and "T43" in err and "bug signal" in err
    res = json.loads((run / "audit" / "canary_audit.json").read_text())
    assert res["contradiction"] and res["accounted"]["epsilon"] == pytest.approx(eps)


def test_T34_a_canary_in_a_pseudo_label_is_a_leak(fast_run, tmp_path):
    from privsem.audits.canary_audit import verbatim_checks
    from privsem.audits.folder import open_run

    run = _copy(fast_run, tmp_path)
    planted = planting.load_planted(run)
    labels = run / "state" / "bob" / "labels-1.json"
    rows = json.loads(labels.read_text()) or [{"prompt_id": "x", "response": ""}]
    rows[0]["response"] = f"Sure. {planted.canaries[5].text}"
    labels.write_text(json.dumps(rows))
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text() + json.dumps(
        {"note": planted.canaries[7].text}) + "\n")
    v = verbatim_checks(open_run(run), planted)
    assert not v["pseudo_labels"]["clean"] and not v["persisted_files"]["clean"]
    assert v["pseudo_labels"]["hits"][0] == {"canary_index": 5, "matched": "canary",
                                             "member": bool(planted.included[5]),
                                             "where": "state/bob/labels-1.json"}
    assert [h["canary_index"] for h in v["persisted_files"]["hits"]] == [7]


def test_canary_audit_errors_name_the_problem(tmp_path, capsys):
    assert main(["audit", "canaries", str(tmp_path)]) == 2
    assert "config.yaml" in capsys.readouterr().err


# ----------------------------------------------------------------------- mia and inversion


def test_T43_mia_audit_uses_fresh_same_distribution_non_members(fast_run, capsys):
    from privsem.audits.mia_audit import demo_nonmembers

    non = demo_nonmembers("demo:alice.train.jsonl")
    train = {e.response for e in load_examples_("demo:alice.train.jsonl")}
    assert len(non) == 16 and not {e.response for e in non} & train
    assert demo_nonmembers("/some/file.jsonl") is None
    assert main(["audit", "mia", str(fast_run), "--client", "alice"]) == 0
    r = json.loads((fast_run / "audit" / "mia-alice.json").read_text())
    assert (r["members"], r["nonmembers"]) == (48, 16)
    assert set(r["attacks"]) == {"loss", "zlib", "reference"}
    # routed: both adapters attacked, the one with the larger best AUC reported
    aucs = r["adapters"]
    assert set(aucs) == {"trained-1", f"end-{r['round']}"}
    assert max(aucs[r["adapter"]].values()) == max(max(a.values()) for a in aucs.values())
    assert r["attacks"]["reference"]["auc"] == pytest.approx(aucs[r["adapter"]]["reference"])
    assert (fast_run / "audit" / "mia-alice-roc.png").is_file()
    assert "### Membership inference: `alice`" in (fast_run / "report.md").read_text()
    capsys.readouterr()
    assert main(["audit", "mia", str(fast_run), "--client", "bob"]) == 2  # bob: no non-members
    assert "--nonmembers" in capsys.readouterr().err


def load_examples_(path):
    from privsem.data import load_examples

    return load_examples(path)


def test_T44_inversion_audit_attacks_the_real_upload(fast_run, capsys):
    assert main(["audit", "inversion", str(fast_run), "--client", "alice"]) == 0
    out = capsys.readouterr().out
    r = json.loads((fast_run / "audit" / "inversion-alice.json").read_text())
    (x,) = r["rounds"]
    # the cached release minus the recomputed clean matrix is the noise the ledger recorded
    # (4 × 384 entries: the std estimate is within 5 % with overwhelming probability)
    assert x["residual_std"] == pytest.approx(x["noise_std"], rel=0.05)
    assert r["backend"] == "plaintext" and "server sees each upload" in r["who_could_attack"]
    assert x["curve"]["noise_std"][0] == 0.0 and x["noise_std"] in x["curve"]["noise_std"]
    assert "at chance" in out or "ABOVE CHANCE" in out
    assert (fast_run / "audit" / "inversion-alice.png").is_file()
    assert "### Embedding inversion: `alice`" in (fast_run / "report.md").read_text()


def test_decode_words_inverts_the_masked_encoding():
    from privsem.audits.inversion_audit import decode_words

    values = np.array([-5, -1, 0, 1, 2**30, -(2**31)], dtype=np.int64)
    for bits in (16, 32, 63, 64):
        v = values[(values >= -(2 ** (bits - 1))) & (values < 2 ** (bits - 1))]
        words = v.astype(np.uint64) & np.uint64((1 << bits) - 1 if bits < 64 else 2**64 - 1)
        assert np.array_equal(decode_words(words, bits), v)


# --------------------------------------------------------------------------- slow: DP run


@pytest.mark.slow
def test_T43_T44_dp_run_is_not_refuted_and_masked_uploads_decode(tmp_path):
    """Three clients on the masked back-end, DP at record-level ε = 8: the canary audit's bound
    stays below the accounted ε, and the inversion audit reads the masked release exactly."""
    cfg = _config(tmp_path, rounds=2, privacy={
        "randomness": "seeded", "record": {"epsilon": 8.0}, "client": {"epsilon": 8.0}},
        aggregation={"backend": "masked"},
        audit={"canaries": {"client": "alice", "count": 64}},
        training={"batch_size": 8, "epochs_per_round": 4.0, "learning_rate": 0.01})
    data = yaml.safe_load(cfg.read_text())
    data["clients"].append({"id": "carol", "model": {"name": "tiny-llama", "max_length": 96},
                            "train": data["clients"][1]["train"]})
    # 12 prompts: with 4, a single retrieval by chance (about 1 in 8 at this pool size) already
    # lifts a round's token F1 above the audit's margin, whatever the noise
    data["max_prompts"] = 12
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    # the script in audits/, as a privacy team runs it
    proc = subprocess.run([sys.executable, str(ROOT / "audits" / "canary_audit.py"), str(out),
                           "--exposure-samples", "20"], check=False, capture_output=True,
                          text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((out / "audit" / "canary_audit.json").read_text())
    assert r["accounted"]["epsilon"] == pytest.approx(8.0, abs=1e-3)
    assert r["adapter"] == "end-2"  # record-level DP: no routing, the last round's adapter
    assert list(r["adapters"]) == ["end-2"]
    assert r["one_run"]["per_attack_confidence"] == pytest.approx(1 - 0.05 / 3)
    assert r["one_run"]["epsilon_lower_bound"] <= 8.0 and not r["contradiction"]
    assert r["verbatim"]["pseudo_labels"]["clean"]
    assert main(["audit", "inversion", str(out), "--client", "alice", "--no-report"]) == 0
    inv = json.loads((out / "audit" / "inversion-alice.json").read_text())
    assert inv["backend"] == "masked" and "secure aggregation is broken" in inv[
        "who_could_attack"]
    for x in inv["rounds"]:  # decoded words minus the clean matrix: the discrete Gaussian
        assert x["residual_std"] == pytest.approx(x["noise_std"], rel=0.05)
        assert x["at_chance"]
