"""Threat models as configuration checks: the catalogue, `privsem check`, and `privsem run`
refusing a configuration that claims a protection it does not have."""

import json
import re
from pathlib import Path

import pytest

from privsem.cli import main
from privsem.config import PRESETS, load_config
from privsem.errors import ConfigError
from privsem.threats import CATALOGUE, REQUIREMENTS, assess, load_catalogue

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def _suite_ids() -> set[str]:
    """Catalogue ids named in the suite's test function names (test_T6_..., test_T2_T37_...)."""
    ids: set[str] = set()
    for f in TESTS.glob("test_*.py"):
        for name in re.findall(r"def (test_\w+)", f.read_text(encoding="utf-8")):
            ids.update(re.findall(r"(?<=_)(T\d+)(?=_|$)", name))
    return ids


def test_every_test_id_a_threat_model_names_exists_in_the_suite():
    suite = _suite_ids()
    catalogue = load_catalogue()
    for tm in catalogue.values():
        missing = [t for t in tm.tests if t not in suite]
        assert not missing, f"{tm.id} names tests {missing} that the suite lacks"
        assert not set(tm.pending) & suite, f"{tm.id}: pending ids that now exist: move them"
    pending_of = {tm.document: set(tm.pending) for tm in catalogue.values()}
    for doc in (ROOT / "threat_models").glob("*.md"):
        named = set(re.findall(r"\bT(\d+)\b", doc.read_text(encoding="utf-8")))
        unknown = {f"T{n}" for n in named} - suite - pending_of.get(doc.name, set())
        assert not unknown, f"{doc.name} names {sorted(unknown)}, which no test implements"


def test_catalogue_is_complete_and_each_model_has_its_document():
    catalogue = load_catalogue()
    assert set(catalogue) == {
        "honest-but-curious-server", "malicious-server", "server-colluding-clients",
        "poisoning-clients", "network-adversary", "ckks-aggregator-key-holder",
        "pseudo-label-recipients"}
    for tm in catalogue.values():
        doc = (CATALOGUE.parent / tm.document).read_text(encoding="utf-8")
        for t in tm.tests:
            assert re.search(rf"\b{t}\b", doc), f"{tm.document} does not link {t}"
    used = {r for tm in catalogue.values() for r in tm.requires}
    assert used == set(REQUIREMENTS)  # no requirement defined and never used


def test_a_malformed_catalogue_is_refused(tmp_path):
    (tmp_path / "a.md").write_text("doc")
    bad = tmp_path / "catalogue.yaml"
    bad.write_text("- {id: a, title: A, document: a.md, adversary: x, promise: y, "
                   "requires: [telepathy], tests: []}\n")
    with pytest.raises(ConfigError, match="requirements defined in privsem/threats.py"):
        load_catalogue(bad)
    bad.write_text("- {id: a, title: A, document: missing.md, adversary: x, promise: y, "
                   "requires: [], tests: []}\n")
    with pytest.raises(ConfigError, match="name a file in threat_models/"):
        load_catalogue(bad)


@pytest.mark.parametrize("preset", PRESETS)
def test_check_prints_the_guarantees_of_every_shipped_preset(preset, capsys):
    assert main(["check", "--preset", preset]) == 0
    out = capsys.readouterr().out
    for tm in load_catalogue():
        assert tm in out
    # the presets draw seeded noise: what they would defend holds in simulation only
    assert "[SIMULATION ONLY] honest-but-curious-server" in out
    assert "privacy.randomness: os" in out


def test_deployment_settings_defend_what_the_documents_say(capsys):
    sets = ["--set", "privacy.randomness=os"]
    assert main(["check", "--preset", "demo", *sets, "--threat-model", "malicious-server",
                 "--threat-model", "honest-but-curious-server"]) == 0
    out = capsys.readouterr().out
    assert "[DEFENDED] malicious-server" in out
    assert "[NOT DEFENDED] poisoning-clients" in out  # the mean is not robust
    assert "[NOT DEFENDED] ckks-aggregator-key-holder" in out
    assert main(["check", "--preset", "demo", *sets, "--set", "aggregation.backend=ckks",
                 "--json"]) == 0
    status = {m["id"]: m["status"] for m in json.loads(capsys.readouterr().out)[
        "threat_models"]}
    assert status["ckks-aggregator-key-holder"] == "defended"
    assert status["malicious-server"] == "not defended"


# Deliberately wrong configurations: (overrides, exit code, text naming the fix). Exit 1: a
# claimed threat model does not hold; exit 2: the configuration itself is refused at load.
WRONG = {
    "malicious server claimed under plaintext": (
        ["aggregation.backend=plaintext", "privacy.randomness=os",
         "threat_models=[malicious-server]"], 1, "set aggregation.backend: masked"),
    "ckks model claimed where the aggregator would see uploads": (
        ["privacy.randomness=os", "threat_models=[ckks-aggregator-key-holder]"], 1,
        "set aggregation.backend: ckks"),
    "a protection claimed with seeded noise": (
        ["threat_models=[honest-but-curious-server]"], 1, "set privacy.randomness: os"),
    "collusion claimed with distributed noise": (
        ["privacy.randomness=os", "privacy.client.placement=distributed",
         "threat_models=[server-colluding-clients]"], 1, "set privacy.client.placement: local"),
    "shared texts from models without DP-SGD": (
        ["privacy.randomness=os", "privacy.record.enabled=false",
         "consensus.selection=shared", "consensus.server_trusted_with_texts=true",
         "threat_models=[pseudo-label-recipients]"], 1, "set consensus.selection: local"),
    "a threat model that does not exist": (
        ["threat_models=[quantum-adversary]"], 1, "name threat models of"),
    "distributed noise without secure aggregation": (
        ["aggregation.backend=plaintext", "privacy.client.placement=distributed"], 2,
        "use aggregation.backend: masked"),
    "distributed noise under ckks": (
        ["aggregation.backend=ckks", "privacy.client.placement=distributed"], 2,
        "use aggregation.backend: masked, or placement: local"),
    "a cohort below the minimum for secure aggregation": (
        [("clients=[{id: a, model: {name: tiny-llama}, train: demo:alice.train.jsonl}, "
          "{id: b, model: {name: tiny-llama}, train: demo:bob.train.jsonl}]")], 2,
        "needs at least 3 clients"),
}


@pytest.mark.parametrize("case", sorted(WRONG))
def test_deliberately_wrong_configurations_are_refused_naming_the_fix(case, capsys):
    overrides, code, fix = WRONG[case]
    args = ["check", "--preset", "smoke"]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == code
    assert fix in capsys.readouterr().err


def test_run_refuses_a_false_claim_before_touching_anything(tmp_path):
    from privsem.runtime.inprocess import run

    cfg = load_config(preset="smoke", overrides=["threat_models=[malicious-server]",
                                                 "aggregation.backend=plaintext"])
    with pytest.raises(ConfigError, match="does not defend it: set aggregation.backend: "
                                          "masked.*privacy.randomness: os"):
        run(cfg, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


def test_assessment_follows_each_requirement():
    """Removing any one requirement of a defended model turns it to not defended."""
    cfg = load_config(preset="smoke", overrides=["privacy.randomness=os"])
    base = {a.model.id: a.status for a in assess(cfg)}
    assert base["malicious-server"] == "defended"
    for override, model in [("privacy.client.enabled=false", "malicious-server"),
                            ("aggregation.masked.consistency_check=false", "malicious-server"),
                            ("privacy.record.enabled=false", "honest-but-curious-server")]:
        changed = load_config(preset="smoke", overrides=["privacy.randomness=os", override])
        assert {a.model.id: a.status for a in assess(changed)}[model] == "not defended"


def test_the_example_configuration_defends_what_it_claims(capsys):
    example = ROOT / "configs" / "example.yaml"
    cfg = load_config(str(example))
    assert cfg.threat_models and cfg.privacy.randomness == "os"
    assert main(["check", str(example)]) == 0
    out = capsys.readouterr().out
    for tm in cfg.threat_models:
        assert f"[DEFENDED] {tm} (claimed)" in out
