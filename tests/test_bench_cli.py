"""``privsem bench --quick`` end to end (issue 8): the whole grid on tiny models, in CI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from privsem.bench.suite import FEDERATIONS, PRIVACY, TASKS, methods_for
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
            assert set(run["scores"]) == {"alice", "bob", "carol"}
            for scope in ("own", "other"):
                assert 0.0 <= s[f"{scope}_rouge_l"] <= 1.0
                assert s[f"{scope}_perplexity"] > 1.0
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
