"""Slow: a real round on SmolLM2-135M-Instruct (GGUF from PyPI, de-quantised by transformers)."""

import json

import pytest
from browser import check_report_html
from test_report import FIGURES, SECTIONS

from privsem.cli import main


@pytest.mark.slow
def test_real_round_on_smollm2_via_cli(tmp_path):
    out = tmp_path / "real"
    code = main(["run", "--preset", "demo", "--out", str(out), "--quiet",
                 "--set", "rounds=1", "--set", "max_prompts=4",
                 "--set", "clients.1.model.name=smollm2-135m-instruct",
                 "--set", "evaluation.max_questions=2", "--set", "generation.candidates=2",
                 "--set", "generation.max_new_tokens=16", "--set", "evaluation.max_new_tokens=16",
                 "--set", "training.epochs_per_round=0.35"])
    assert code == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    r1 = [r for r in rows if r["round"] == 1]
    assert len(r1) == 3 and all(r["architecture"] == "LlamaForCausalLM" for r in r1)
    assert all(r["dp_steps"] >= 1 and r["train_loss"] is not None for r in r1)
    assert all(r["contributors"] == 3 for r in r1)
    # a real instruct model answers in words: similarity to references is clearly positive
    assert all(r["own_similarity"] > 0.2 for r in r1)
    report = (out / "report.md").read_text()
    per_client = report.split("## Per client and round")[1].split("\n## ")[0]
    assert per_client.count("| 1 |") == 3
    per_stage = report.split("## Bytes per client per round, by stage")[1].split("\n## ")[0]
    assert per_stage.count("| 1 |") == 3
    # `privsem report` on this (shrunk) demo run, and its HTML as a reader's browser shows it
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    check_report_html(out / "report.html", title="privsem run demo", sections=SECTIONS,
                      figures=FIGURES, screenshot=tmp_path / "report.png")


def test_cli_reports_config_errors_with_field(capsys):
    code = main(["run", "--preset", "smoke", "--set", "privacy.client.epsilon=0"])
    assert code == 2
    err = capsys.readouterr().err
    assert "privacy.client.epsilon" in err and "> 0" in err


def test_cli_reports_missing_model(capsys, tmp_path):
    code = main(["run", "--preset", "smoke", "--out", str(tmp_path / "x"), "--quiet",
                 "--set", "clients.0.model.name=no-such-model"])
    assert code == 2
    assert "no-such-model" in capsys.readouterr().err
