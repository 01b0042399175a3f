"""privsem's round on Flower's simulation engine (Ray actors, virtual SuperNodes): parity with
the in-process runtime (T42), a hung client (T41), and 50 clients with dropouts whose sum is
exact for the survivors."""

import json
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from privsem.aggregation.masked.encoding import decode_sum
from privsem.config import load_config
from privsem.protocol.server import Server
from privsem.runtime.flower.simulation import from_run_config, simulate
from privsem.runtime.inprocess import run

SMOKE = ["evaluation.max_questions=2", "max_prompts=4"]


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x]


@pytest.fixture
def aggregates(monkeypatch):
    """Every round's released aggregate, as the server computed it: (round, contributors,
    total)."""
    seen = []
    close = Server.close_uploads

    def spy(self):
        out = close(self)
        if self.result is not None:
            seen.append((self.spec.round, self.result.contributors, self.result.total.copy()))
        return out

    monkeypatch.setattr(Server, "close_uploads", spy)
    return seen


def _ledger_by_client(path):
    out = {}
    for e in _rows(path):
        out.setdefault(e["client"], []).append(
            {k: v for k, v in e.items() if k not in ("time", "hash", "prev", "seq")})
    return out


def test_T42_parity_in_process_and_flower(tmp_path, aggregates):
    cfg = load_config(preset="smoke", overrides=SMOKE)
    a = run(cfg, tmp_path / "inprocess", show_progress=False)
    in_process = list(aggregates)
    aggregates.clear()
    b = simulate(cfg, tmp_path / "flower", show_progress=False)
    flower = list(aggregates)
    assert [(r, c) for r, c, _ in in_process] == [(r, c) for r, c, _ in flower]
    assert len(flower) == cfg.rounds
    for (_, _, x), (_, _, y) in zip(in_process, flower, strict=True):
        assert np.array_equal(x, y)  # the same quantised aggregate, bit for bit
    assert _ledger_by_client(a / "ledger.jsonl") == _ledger_by_client(b / "ledger.jsonl")
    ra, rb = _rows(a / "metrics.jsonl"), _rows(b / "metrics.jsonl")
    key = ("round", "client", "bytes_up", "bytes_down", "counted", "epsilon_client",
           "own_similarity", "status")
    assert [{k: r[k] for k in key} for r in ra] == [{k: r[k] for k in key} for r in rb]
    for r in rb:
        if r["round"] > 0:  # Flower's messages carry privsem's frames plus their envelopes
            assert r["wire_bytes_up"] > r["bytes_up"] > 0
            assert r["wire_bytes_down"] > r["bytes_down"] > 0
        else:
            assert r["wire_bytes_up"] is None
    assert all(r["wire_bytes_up"] is None for r in ra)
    assert "round 2: sum over 3 survivors" in (b / "report.md").read_text()


def test_T41_hung_client_the_server_proceeds_at_its_timeout(tmp_path, aggregates):
    # One of three clients hangs in the masked input stage of every round; the server waits
    # 4 s, goes on with the other two, and never blocks.
    cfg = load_config(preset="smoke", overrides=[
        *SMOKE, "rounds=1", "flower.hang=0.34", "flower.dropout_stages=[input]",
        "flower.timeout=4", "flower.notice_timeout=2"])
    t0 = time.monotonic()
    out = simulate(cfg, tmp_path / "hang", show_progress=False)
    assert time.monotonic() - t0 < 120
    plan = json.loads((out / "flower-faults.json").read_text())["1"]
    (victim, (stage, how)), = plan.items()
    assert (stage, how) == ("input", "hang")
    (rnd, contributors, _), = aggregates
    assert rnd == 1 and victim not in contributors and len(contributors) == 2
    rows = {r["client"]: r for r in _rows(out / "metrics.jsonl") if r["round"] == 1}
    assert not rows[victim]["counted"]
    assert any("no answer in stage input after 4 s of 4 s (timeout)" in s
               for s in rows[victim]["status"])
    assert all(rows[c]["counted"] for c in contributors)
    # the hung client was charged for the release it computed, before anything left it
    ledger = _ledger_by_client(out / "ledger.jsonl")
    assert any(e["mechanism"] == "embedding_discrete_gaussian" for e in ledger[victim])


@pytest.mark.slow
def test_fifty_clients_with_dropouts_sum_exact_for_the_survivors(tmp_path, aggregates):
    cfg = from_run_config({"preset": "smoke", "clients": 50, "flower.dropout": 0.1,
                           "evaluation.max_questions": 1, "max_prompts": 4})
    t0 = time.monotonic()
    out = simulate(cfg, tmp_path / "fifty", show_progress=False)
    seconds = time.monotonic() - t0
    plans = json.loads((out / "flower-faults.json").read_text())
    rows = _rows(out / "metrics.jsonl")
    assert len(aggregates) == cfg.rounds == 2
    for rnd, contributors, total in aggregates:
        plan = plans[str(rnd)]
        assert len(plan) == 5  # 10 % of 50 go silent each round
        # silent before their masked input: not counted; silent at unmask: counted (T2, T3)
        excluded = {c for c, (stage, _) in plan.items() if stage in ("spec", "share", "input")}
        assert set(contributors) == {c.id for c in cfg.clients} - excluded
        detail = next(r for r in rows if r["round"] == rnd and r["counted"])["aggregate_detail"]
        bits, scale = detail["modulus_bits"], detail["scale"]
        words = sum(load_file(str(out / "state" / c / f"release-{rnd}.safetensors"))[
            "release"].astype(np.uint64) for c in contributors) % np.uint64(2 ** bits)

        class P:
            modulus, modulus_bits = 2 ** bits, bits

        expect = (decode_sum(words, P).astype(np.float64) / scale).reshape(total.shape)
        assert np.array_equal(expect, total)  # exact for the survivors
        for c in cfg.clients:
            r = next(x for x in rows if x["round"] == rnd and x["client"] == c.id)
            assert r["counted"] == (c.id in contributors)
            assert r["wire_bytes_up"] >= r["bytes_up"]
    # every client that computed a release was charged for it, even if it then went silent
    ledger = _ledger_by_client(out / "ledger.jsonl")
    for rnd in (1, 2):
        spec_silent = {c for c, (stage, _) in plans[str(rnd)].items() if stage == "spec"}
        charged = {c for c, es in ledger.items()
                   if any(e["round"] == rnd and e["mechanism"] == "embedding_discrete_gaussian"
                          for e in es)}
        assert charged == {c.id for c in cfg.clients} - spec_silent
    print(f"\n50 clients, 2 rounds, dropout 0.1: {seconds:.0f} s")


def test_privsem_simulate_command(tmp_path, capsys):
    from privsem.cli import main

    out = tmp_path / "cli"
    assert main(["simulate", "--clients", "4", "--set", "rounds=1", "--set", "max_prompts=3",
                 "--set", "evaluation.enabled=false", "--out", str(out), "--quiet"]) == 0
    assert f"run folder: {out}" in capsys.readouterr().out
    rows = _rows(out / "metrics.jsonl")
    assert sorted(r["client"] for r in rows) == ["alice-0", "alice-3", "bob-1", "carol-2"]
    assert all(r["counted"] and r["wire_bytes_up"] > r["bytes_up"] for r in rows)
    assert (out / "report.md").is_file()
    # a folder holding a run is never overwritten; resume takes only the folder
    assert main(["simulate", "--out", str(out), "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["simulate", "--resume", str(out), "--clients", "5"]) == 2
