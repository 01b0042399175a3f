"""Configuration: every error names the field, the bad value and the fix."""

import pytest

from privsem.config import (
    ConsensusConfig,
    RunConfig,
    TrainingConfig,
    build,
    dump_yaml,
    load_config,
    resolved,
    to_dict,
)
from privsem.errors import ConfigError


def test_presets_load_and_round_trip(tmp_path):
    for name in ("demo", "smoke"):
        cfg = load_config(preset=name)
        p = tmp_path / f"{name}.yaml"
        p.write_text(dump_yaml(cfg))
        assert load_config(str(p)) == cfg


def test_set_overrides_any_field():
    cfg = load_config(preset="smoke", overrides=["privacy.client.epsilon=4", "rounds=3",
                                                 "clients.1.model.lora.rank=2",
                                                 "clients.0.model.lora.targets=[q_proj]"])
    assert cfg.privacy.client.epsilon == 4.0 and isinstance(cfg.privacy.client.epsilon, float)
    assert cfg.rounds == 3 and cfg.clients[1].model.lora.rank == 2
    assert cfg.clients[0].model.lora.targets == ("q_proj",)


@pytest.mark.parametrize("override,field,fix", [
    ("privacy.client.epsilon=-1", "privacy.client.epsilon", "> 0"),
    ("privacy.record.delta=2", "privacy.record.delta", "(0, 1)"),
    ("rounds=2.5", "rounds", "integer"),
    ("rounds=true", "rounds", "integer"),
    ("privacy.record.enabled=1", "privacy.record.enabled", "true or false"),
    ("aggregation.backend=magic", "aggregation.backend", "plaintext"),
    ("privacy.clent.epsilon=1", "privacy.clent", "unknown field"),
    ("clients.7.id=x", "clients.7", "index below 3"),
    ("clients.0.id=a b", "clients.0.id", "letters"),
    ("privacy.client.placement=everywhere", "privacy.client.placement", "distributed"),
        ("aggregation.masked.threshold=0.5", "aggregation.masked.threshold", "security floor"),
    ("consensus.operator=median", "consensus.operator", "trimmed_mean"),
])
def test_errors_name_field_value_and_fix(override, field, fix):
    with pytest.raises(ConfigError) as ei:
        load_config(preset="smoke", overrides=[override])
    assert ei.value.field == field
    assert fix in str(ei.value)
    assert repr(ei.value.value) in str(ei.value)


def test_cross_field_rules_fail_closed():
    with pytest.raises(ConfigError, match="shared selection sends texts"):
        load_config(preset="smoke", overrides=["consensus.selection=shared",
                                               "privacy.record.enabled=false"])
    ok = load_config(preset="smoke", overrides=["consensus.selection=shared",
                                                "privacy.record.enabled=false",
                                                "consensus.server_trusted_with_texts=true"])
    assert ok.consensus.selection == "shared"


def test_missing_required_field_and_duplicate_ids():
    data = to_dict(load_config(preset="smoke"))
    del data["prompts"]
    with pytest.raises(ConfigError, match="prompts.*required"):
        build(RunConfig, data)
    data = to_dict(load_config(preset="smoke"))
    data["clients"][1]["id"] = data["clients"][0]["id"]
    with pytest.raises(ConfigError, match="distinct"):
        build(RunConfig, data)


def test_privacy_fields_are_keyword_only():
    from privsem.config import ClientPrivacyConfig

    with pytest.raises(TypeError):
        ClientPrivacyConfig(True, 1.0)  # type: ignore[misc]


def test_toml_and_yaml_files(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('name = "t"\nprompts = "demo:prompts.jsonl"\nrounds = 1\n'
                    '[[clients]]\nid = "a"\ntrain = "demo:alice.train.jsonl"\n'
                    '[clients.model]\nname = "tiny-llama"\n'
                    '[[clients]]\nid = "b"\ntrain = "b.jsonl"\n[clients.model]\nname = "tiny-gemma3"\n'
                    '[[clients]]\nid = "c"\ntrain = "c.jsonl"\n[clients.model]\nname = "tiny-llama"\n')
    cfg = load_config(str(toml))
    assert cfg.name == "t" and cfg.clients[1].train == str(tmp_path / "b.jsonl")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: [\n")
    with pytest.raises(ConfigError, match="does not parse"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="existing"):
        load_config(str(tmp_path / "missing.yaml"))


def test_shipped_example_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "configs"
    files = sorted(root.glob("*.yaml")) + sorted(root.glob("*.toml"))
    assert files
    for f in files:
        cfg = load_config(str(f))
        assert cfg.clients


def test_auto_confidence_and_route_resolve_to_what_the_regime_allows(tmp_path):
    """The default (``auto``) is proximity confidence and routing without record-level DP, the
    model-only ``gain`` and no routing with it (proximity reads the private prompts), and no
    routing under the sequential schedule (it keeps no phase-1 adapter). An explicit choice is
    kept as given, and the config written to the run folder is the resolved one."""
    off = ["privacy.record.enabled=false", "privacy.client.enabled=false"]
    cfg = load_config(preset="smoke", overrides=off)
    assert (cfg.consensus.confidence, cfg.consensus.route) == ("proximity", "proximity")
    dp = load_config(preset="smoke", overrides=["privacy.record.enabled=true"])
    assert (dp.consensus.confidence, dp.consensus.route) == ("gain", "none")
    seq = load_config(preset="smoke", overrides=[*off, "training.schedule=sequential"])
    assert (seq.consensus.confidence, seq.consensus.route) == ("proximity", "none")
    mine = load_config(preset="smoke", overrides=[*off, "consensus.confidence=likelihood",
                                                  "consensus.route=none"])
    assert (mine.consensus.confidence, mine.consensus.route) == ("likelihood", "none")
    p = tmp_path / "resolved.yaml"
    p.write_text(dump_yaml(cfg))
    text = p.read_text()
    assert "confidence: proximity" in text and "route: proximity" in text
    assert load_config(str(p)) == cfg
    # an explicit data-reading choice under record-level DP still fails closed
    for override in ("consensus.route=proximity", "consensus.confidence=proximity"):
        with pytest.raises(ConfigError, match="post-processing"):
            load_config(preset="smoke", overrides=["privacy.record.enabled=true", override])
    with pytest.raises(ConfigError, match="auto"):
        load_config(preset="smoke", overrides=["consensus.route=sometimes"])


def _recipe(cfg):
    t, c = cfg.training, cfg.consensus
    return (t.first_phase_share, t.pseudo_label_epochs, t.pseudo_label_learning_rate,
            c.accept_margin, c.own_answer)


def test_auto_label_recipe_follows_the_route(tmp_path):
    """``auto`` label settings resolve by whether the run routes: eight passes at 2e-3 with the
    whole budget in phase 1 where the client answers its own topics with its phase-1 adapter;
    the gentle earlier recipe (¾ split, 2 passes at 1e-3, margin 0.5, no own answer) where the
    labels reach the adapter that answers everything: always under record-level DP. An explicit
    value is kept; a bad word or an impossible pair of shares is refused by name; a field read
    before resolution fails instead of acting as if ``auto`` were a value."""
    off = ["privacy.record.enabled=false", "privacy.client.enabled=false"]
    routed = (1.0, 8, 2e-3, None, True)
    gentle = (0.75, 2, 1e-3, 0.5, False)
    assert _recipe(load_config(preset="smoke", overrides=off)) == routed
    assert _recipe(load_config(preset="smoke", overrides=["privacy.record.enabled=true"])) == gentle
    assert _recipe(load_config(preset="smoke", overrides=[*off, "consensus.route=none"])) == gentle
    assert _recipe(load_config(preset="smoke",
                               overrides=[*off, "training.schedule=sequential"])) == gentle
    mine = load_config(preset="smoke", overrides=[
        "privacy.record.enabled=true", "training.pseudo_label_epochs=5",
        "consensus.own_answer=true", "training.first_phase_share=null"])
    assert _recipe(mine) == (None, 5, 1e-3, 0.5, True)
    p = tmp_path / "resolved.yaml"
    p.write_text(dump_yaml(mine))
    text = p.read_text()
    for line in ("first_phase_share: null", "pseudo_label_epochs: 5",
                 "pseudo_label_learning_rate: 0.001", "accept_margin: 0.5", "own_answer: true"):
        assert line in text
    assert load_config(str(p)) == mine
    for override, field in (("consensus.own_answer=maybe", "consensus.own_answer"),
                            ("training.pseudo_label_epochs=many", "pseudo_label_epochs"),
                            ("consensus.accept_margin=wide", "accept_margin"),
                            ("training.pseudo_label_learning_rate=-1", "learning_rate")):
        with pytest.raises(ConfigError, match=field):
            load_config(preset="smoke", overrides=[override])
    # auto resolves first_phase_share to 1 when routed: no room for a final share
    with pytest.raises(ConfigError, match="training.final_phase_share"):
        load_config(preset="smoke", overrides=[*off, "training.final_phase_share=0.25"])
    assert load_config(preset="smoke", overrides=[
        "privacy.record.enabled=true", "training.final_phase_share=0.25"]
    ).training.first_phase_share == 0.75
    with pytest.raises(ConfigError, match="auto"):
        resolved(TrainingConfig().pseudo_label_epochs, "training.pseudo_label_epochs")
    with pytest.raises(ConfigError, match="auto"):
        _ = ConsensusConfig().routes
    assert load_config(preset="smoke", overrides=off).consensus.routes
