"""``privsem bench --quick`` end to end (issue 8): the whole grid on tiny models, in CI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from privsem.bench.suite import FEDERATIONS, PRIVACY, TASKS, methods_for
from privsem.bench.tasks import TASK_CLIENTS
from privsem.cli import main


@pytest.mark.slow
def test_privsem_bench_quick_writes_every_cell_table_and_plot(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture
                                                              ) -> None:
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "bench.json").read_text("utf-8"))
    assert result["quick"] is True
    m = result["machine"]
    assert m["logical_cores"] >= 1 and m["cpu_model"] and m["torch"] and m["date_utc"]
    cells = {(c["task"], c["federation"], c["privacy"]): c for c in result["cells"]}
    assert set(cells) == {(t, f, p) for t in TASKS for f in FEDERATIONS for p in PRIVACY}
    for (task, fed, priv), cell in cells.items():
        assert list(cell["methods"]) == methods_for(fed, priv)
        for name, run in cell["methods"].items():
            s = run["summary"]
            assert set(run["scores"]) == set(TASK_CLIENTS[task])
            for scope in ("own", "other"):
                assert 0.0 <= s[f"{scope}_rouge_l"] <= 1.0
                assert s[f"{scope}_perplexity"] > 1.0
                # per-question scores give every mean its 95 % interval
                lo, hi = s[f"{scope}_rouge_l_ci"]
                assert lo <= s[f"{scope}_rouge_l"] + 1e-9 and s[f"{scope}_rouge_l"] <= hi + 1e-9
            if name == "zero_shot":
                assert run["rounds"] == []
                continue
            assert len(run["rounds"]) == 2
            assert s["wall_s_per_round"] > 0 and s["cpu_s_per_round"] > 0
            up = s["bytes_up_per_client_round"]
            if name == "local":
                assert up == 0
            else:
                assert up > 0
            if priv == "dp":
                assert 0 < s["epsilon_record"] <= 8.0 + 1e-6
            else:
                assert s["epsilon_record"] is None
            if name == "semantic+client":
                assert 0 < s["epsilon_client"] <= 8.0 + 1e-6
            else:
                assert s["epsilon_client"] is None
        # every method of a cell shares the zero-shot floor's questions: same seeds, same data
        zs = cell["methods"]["zero_shot"]["scores"]
        assert zs == cells[(task, fed, "dp")]["methods"]["zero_shot"]["scores"]
    # the communication model reproduces the seed paper's factor within 1%
    comm = result["communication"]
    assert abs(comm["reconstruction_factor"] / 1006 - 1) < 0.01
    # micro-benchmarks: ratios measured in this run
    micro = result["micro"]
    assert math.isfinite(micro["dp_sgd_step"]["ratio"]) and micro["dp_sgd_step"]["ratio"] > 0
    assert micro["embedding"]["ratio"] > 0
    assert micro["generation"]["tokens_per_second"] > 0
    for task in TASKS:
        assert (out / "plots" / f"{task}-utility.png").stat().st_size > 1000
    assert (out / "plots" / "traffic.png").exists()
    md = (out / "bench.md").read_text("utf-8")
    assert "### Task: knowledge" in md and "### Task: instructions" in md
    assert "### Task: overlap" in md
    assert "| homogeneous | dp | fedavg |" in md
    assert "| heterogeneous | dp | fedavg |" not in md
    assert md in printed


def test_privsem_bench_refuses_a_used_folder_and_unknown_names(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture
                                                               ) -> None:
    used = tmp_path / "used"
    used.mkdir()
    (used / "bench.json").write_text("{}")
    assert main(["bench", "--quick", "--out", str(used)]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert (used / "bench.json").read_text() == "{}"
    for flag, bad in (("--task", "poetry"), ("--federation", "mixed"), ("--privacy", "some")):
        assert main(["bench", "--quick", "--out", str(tmp_path / "new"), flag, bad]) == 2
        assert f"{flag} '{bad}' is not known" in capsys.readouterr().err
        assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_privsem_bench_resume_keeps_finished_methods_and_reruns_the_rest(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench"
    slice_ = ["--task", "knowledge", "--federation", "homogeneous", "--privacy", "none",
              "--no-micro"]
    assert main(["bench", "--quick", "--out", str(out), *slice_]) == 0
    capsys.readouterr()
    first = json.loads((out / "bench.json").read_text("utf-8"))
    before = first["cells"][0]["methods"]
    assert first["provenance"]["method_runs"] == 5 and first["provenance"]["kept"] == 0
    results = out / "results"
    # an interruption during semantic: its run folder exists, its result was never written
    (results / "knowledge-homogeneous-none-semantic.json").unlink()
    # a result computed from other inputs (another configuration, other data)
    local = results / "knowledge-homogeneous-none-local.json"
    stale = json.loads(local.read_text("utf-8"))
    stale["inputs"]["config_sha256"] = "0" * 64
    local.write_text(json.dumps(stale), encoding="utf-8")
    # refused: nothing to resume, or the folder named twice
    assert main(["bench", "--quick", "--resume", str(tmp_path / "none"), *slice_]) == 2
    assert "no benchmark to resume" in capsys.readouterr().err
    assert main(["bench", "--quick", "--resume", str(out), "--out", str(out), *slice_]) == 2
    assert "give one" in capsys.readouterr().err

    assert main(["bench", "--quick", "--resume", str(out), *slice_]) == 0
    err = capsys.readouterr().err
    again = json.loads((out / "bench.json").read_text("utf-8"))
    after = again["cells"][0]["methods"]
    assert list(after) == list(before)
    for name in ("zero_shot", "fedavg", "centralised"):  # kept as they were, not run again
        assert after[name]["kept"] is True
        assert after[name]["ran"] == before[name]["ran"]
        assert after[name]["seconds"] == before[name]["seconds"]
        assert after[name]["summary"] == before[name]["summary"]
    for name in ("local", "semantic"):
        assert after[name]["kept"] is False
        assert after[name]["ran"]["started_utc"] >= before[name]["ran"]["finished_utc"]
        # seeded: the re-run reproduces the figures
        assert after[name]["scores"] == before[name]["scores"]
        assert f"/ none / {name}\n" in err
    # nothing deleted: the stale result and both unfinished run folders moved aside
    assert json.loads((results / "knowledge-homogeneous-none-local.json.aside-1")
                      .read_text("utf-8")) == stale
    runs = out / "runs" / "knowledge" / "homogeneous" / "none"
    assert (runs / "semantic.aside-1" / "ledger.jsonl").exists()
    assert (runs / "local.aside-1").is_dir()
    assert "moved to knowledge-homogeneous-none-local.json.aside-1" in err
    p = again["provenance"]
    assert (p["method_runs"], p["kept"]) == (5, 3)
    assert p["first_started_utc"] == first["provenance"]["first_started_utc"]
    md = (out / "bench.md").read_text("utf-8")
    assert "5 method runs, 3 of them kept from earlier invocations" in md
