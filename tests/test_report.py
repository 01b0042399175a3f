"""`privsem report`: report.md and report.html from a run folder, ε recomputed from the ledger,
loud failures on a damaged folder, and the HTML checked in a real headless Chromium."""

import json
import re
import shutil
from pathlib import Path

import pytest
from browser import check_report_html

from privsem.cli import main
from privsem.config import load_config
from privsem.privacy.analysis import epsilon
from privsem.privacy.ledger import Ledger
from privsem.reports.document import Heading, Paragraph, Table, to_html, to_markdown
from privsem.reports.model import load_run

SECTIONS = {"promises": "What this run promises", "per-client": "Per client and round",
            "spent": "Privacy: what was spent", "parties": "What each party saw",
            "mechanisms": "Privacy: mechanisms and targets", "utility": "Utility per round",
            "agreement": "Agreement per prompt",
            "bytes": "Bytes per client per round, by stage"}
FIGURES = 5  # ε, budget left, utility, agreement, bytes


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One smoke run for the whole module (about 20 s on an idle 2-core machine)."""
    out = tmp_path_factory.mktemp("report") / "run"
    assert main(["run", "--preset", "smoke", "--out", str(out), "--quiet"]) == 0
    return out


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(run_dir, dst)
    return dst


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x]


def test_run_writes_both_reports_self_contained(run_dir):
    page = (run_dir / "report.html").read_text()
    md = (run_dir / "report.md").read_text()
    for anchor, title in SECTIONS.items():
        assert f'id="{anchor}"' in page and f"## {title}" in md
    imgs = re.findall(r'<img src="([^"]+)"', page)
    assert len(imgs) == FIGURES and all(s.startswith("data:image/png;base64,") for s in imgs)
    # one file: nothing loaded from anywhere, no script
    assert "<script" not in page.lower() and not re.search(r'(src|href)="(?!data:|#)', page)
    # markdown keeps what the round tests read
    assert "learns **only the noisy sum over the survivors**" in md
    assert "round 2: sum over 3 survivors" in md


def test_agreement_per_prompt_is_in_the_metrics(run_dir):
    cfg = load_config(str(run_dir / "config.yaml"))
    for r in _rows(run_dir / "metrics.jsonl"):
        if r["round"] == 0:
            assert r["agreement"] is None
            continue
        assert len(r["agreement"]) == cfg.max_prompts
        assert sum(r["agreement"]) / len(r["agreement"]) == pytest.approx(r["mean_agreement"])


def test_report_epsilon_is_recomputed_from_the_ledger(run_dir, tmp_path, capsys):
    run = _copy(run_dir, tmp_path)
    (run / "report.md").unlink()
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert str(run / "report.html") in capsys.readouterr().out
    cfg = load_config(str(run / "config.yaml"))
    ledger = Ledger(run / "ledger.jsonl", accountant=cfg.privacy.accountant)
    data = load_run(run)
    md = (run / "report.md").read_text()
    for unit, dp in (("record", cfg.privacy.record), ("client", cfg.privacy.client)):
        for c in cfg.clients:
            # ε after each round from that client's events of the unit, independently of the model
            mine = [e for e in ledger.entries if e.client == c.id and e.unit == unit]
            want = [epsilon([e.dp_event() for e in mine if e.round <= r], delta=dp.delta,
                            accountant=cfg.privacy.accountant) for r in range(cfg.rounds + 1)]
            assert list(data.spend[unit].by_client[c.id]) == want
            assert want[-1] == ledger.spent(c.id, unit, delta=dp.delta)
            assert want[-1] == pytest.approx(8.0, abs=1e-3)  # the smoke preset's target
            row = f"| {c.id} | {unit} | " + " | ".join(f"{v:.3f}" for v in want[1:])
            assert row in md, row


def test_tampered_ledger_fails_loudly_and_writes_nothing(run_dir, tmp_path, capsys):
    run = _copy(run_dir, tmp_path)
    lines = (run / "ledger.jsonl").read_text().splitlines(keepends=True)
    entry = json.loads(lines[1])
    entry["event"] = {"type": "no_op"}  # pretend the second release cost nothing
    lines[1] = json.dumps(entry, sort_keys=True) + "\n"
    (run / "ledger.jsonl").write_text("".join(lines))
    before = {n: (run / n).read_bytes() for n in ("report.md", "report.html")}
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "ledger.jsonl" in err and "integrity" in err
    assert {n: (run / n).read_bytes() for n in before} == before  # no partial report


def test_rolled_back_ledger_is_caught_against_the_metrics(run_dir, tmp_path, capsys):
    # Cut round 2 off the ledger and its head file together. Without the ledger's key the new
    # head is refused outright; with it (whoever holds the run folder's key file), the chain
    # and the head agree, but the metrics recorded more ε than the ledger now accounts.
    from privsem.privacy.ledger import head_mac

    run = _copy(run_dir, tmp_path)
    kept = [x for x in (run / "ledger.jsonl").read_text().splitlines(keepends=True)
            if json.loads(x)["round"] == 1]
    (run / "ledger.jsonl").write_text("".join(kept))
    last = json.loads(kept[-1])
    (run / "ledger.jsonl.head").write_text(json.dumps({"seq": last["seq"], "hash": last["hash"]}))
    assert main(["report", str(run)]) == 2
    assert "hash and mac" in capsys.readouterr().err
    key = bytes.fromhex((run / "ledger.jsonl.key").read_text())
    (run / "ledger.jsonl.head").write_text(json.dumps({
        "seq": last["seq"], "hash": last["hash"],
        "mac": head_mac(key, last["seq"], last["hash"])}))
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "ledger.jsonl" in err and "metrics.jsonl recorded" in err and "lost entries" in err


def test_missing_metrics_is_named(run_dir, tmp_path, capsys):
    run = _copy(run_dir, tmp_path)
    (run / "metrics.jsonl").unlink()
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl" in err and "missing" in err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_text_from_files_is_escaped():
    evil = "<script>alert(1)</script> & `<b>` **<i>x</i>**"
    blocks = [Heading(1, evil), Paragraph(evil), Table(("a", "b"), ((evil, "1"),))]
    page = to_html(blocks, title=evil, figures={})
    assert "<script" not in page and "<i>" not in page and "<b>" not in page
    assert "&lt;script&gt;" in page and "<code>&lt;b&gt;</code>" in page
    assert "<strong>&lt;i&gt;x&lt;/i&gt;</strong>" in page
    assert "a \\| b" in to_markdown([Table(("h",), (("a | b",),))])


def test_html_renders_in_headless_chromium(run_dir, tmp_path):
    check_report_html(run_dir / "report.html", title="privsem run smoke", sections=SECTIONS,
                      figures=FIGURES, screenshot=tmp_path / "report.png")
