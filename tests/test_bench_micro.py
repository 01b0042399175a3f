"""privsem.bench.micro: the micro-benchmarks return what they document, their ratios are the
ratios of the times they report, and bad input fails with a message naming the fix.

Tiny models and sizes only; no assertion on speed (the goals are verdicts of `privsem bench`).
"""

from __future__ import annotations

import json
import math
import statistics

import pytest

from privsem.bench import micro


def _finite_positive(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _check_summary(s: dict, times: list[float], reps: int) -> None:
    assert s["reps"] == reps == len(times)
    assert s["median_s"] == statistics.median(times) and s["min_s"] == min(times)
    assert all(_finite_positive(t) for t in times)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread for this module, restored after: on a shared 2-core machine, two
    threads competing with another process make the tiny models several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    """One smoke federation (3 tiny clients, 2 rounds), evaluation cut to one question each."""
    from privsem.config import load_config
    from privsem.runtime.inprocess import run

    cfg = load_config(preset="smoke", overrides=["evaluation.max_questions=1",
                                                 "max_prompts=4", "threads=1"])
    return run(cfg, tmp_path_factory.mktemp("micro") / "run", show_progress=False)


@pytest.fixture(scope="module")
def dp_result():
    return micro.dp_sgd_step("tiny-llama", quick=True, batch_size=4, reps=3, max_length=48)


@pytest.fixture(scope="module")
def gen_result():
    return micro.generation_speed("tiny-gemma3", quick=True, prompts=3, k=2, max_new_tokens=5,
                                  batch_size=2, reps=2)


@pytest.fixture(scope="module")
def embed_result(embedder):
    return micro.embedding_throughput(True, n_texts=24, reps=3, embedder=embedder)


def test_dp_sgd_step_keys_and_ratios(dp_result):
    r = dp_result
    t = r["times_s"]
    assert r["model"] == "tiny-llama" and r["batch_size"] == 4 and 1 <= r["seq_len"] <= 48
    assert r["lora"]["rank"] == 8 and r["lora"]["targets"] == ["q_proj", "v_proj"]
    assert r["lora"]["trainable_parameters"] > 0 and r["lora"]["trainable_tensors"] > 0
    assert "Poisson" in r["batching"] and r["grad_sample_mode"] == "hooks"
    for side in ("plain", "dp"):
        _check_summary(r[side], t[side], 3)
        assert _finite_positive(r[side]["forward_backward_median_s"])
        assert _finite_positive(r[side]["optimizer_step_median_s"])
        # the split is measured inside the timed call, so each part is below the median total
        assert r[side]["forward_backward_median_s"] <= max(t[side])
    assert _finite_positive(r["dp_setup_s"])
    paired = statistics.median(d / p for d, p in zip(t["dp"], t["plain"]))
    assert r["ratio"] == r["ratio_median_paired"] == pytest.approx(paired, rel=1e-12)
    assert r["ratio_of_medians"] == pytest.approx(
        statistics.median(t["dp"]) / statistics.median(t["plain"]), rel=1e-12)
    assert r["ratio_min"] == pytest.approx(min(t["dp"]) / min(t["plain"]), rel=1e-12)
    assert r["within_goal"] == (r["ratio_median_paired"] <= r["goal_max_ratio"] == 1.3)
    assert r["goal_applies"] is False and r["verdict"] == "n/a"  # tiny model: no verdict
    json.dumps(r, allow_nan=False)


def test_embedding_throughput_keys_and_ratios(embed_result):
    r = embed_result
    t = r["times_s"]
    assert r["texts"] == 24 and r["dim"] == 384 and r["batch_size"] == 64
    assert 1 < r["distinct_texts"] <= 24
    for side in ("privsem", "raw"):
        _check_summary(r[side], t[side], 3)
        assert r[side]["texts_per_s_median"] == pytest.approx(
            statistics.median(24 / x for x in t[side]), rel=1e-12)
    assert r["ratio"] == r["ratio_median_paired"] == pytest.approx(
        statistics.median(raw / mine for mine, raw in zip(t["privsem"], t["raw"])), rel=1e-12)
    assert r["ratio_of_medians"] == pytest.approx(
        r["privsem"]["texts_per_s_median"] / r["raw"]["texts_per_s_median"], rel=1e-12)
    assert r["max_abs_diff"] <= 1e-6  # the same model, texts and settings: the same vectors
    assert r["verdict"] == ("PASS" if r["ratio_median_paired"] >= 0.9 else "FAIL")
    json.dumps(r, allow_nan=False)


def test_generation_speed_counts_tokens(gen_result):
    r = gen_result
    assert r["model"] == "tiny-gemma3" and r["sequences"] == 6 and r["max_new_tokens"] == 5
    _check_summary(r["seconds"], r["times_s"], 2)
    for tokens, slots in zip(r["new_tokens"], r["token_slots"]):
        # every sequence makes at least one token and at most max_new_tokens
        assert 6 <= tokens <= slots <= 6 * 5
    assert r["new_tokens"][0] == r["new_tokens"][1]  # same seed, same tokens
    assert r["tokens_per_second"] == r["tokens_per_s_median"] == pytest.approx(
        statistics.median(n / s for n, s in zip(r["new_tokens"], r["times_s"])), rel=1e-12)
    assert r["prompts_per_s_median"] == pytest.approx(3 / r["seconds"]["median_s"], rel=1e-12)
    assert r["mean_new_tokens_per_sequence"] == pytest.approx(r["new_tokens"][0] / 6)
    json.dumps(r, allow_nan=False)


def test_generation_counter_stops_at_eos():
    import torch

    class Fake:
        def eval(self):
            return self

        def generate(self, *, input_ids, **kwargs):
            new = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]])  # eos = 2, pad = 0
            return torch.cat([input_ids, new], dim=1)

    c = micro._CountingModel(Fake(), {2})
    c.generate(input_ids=torch.zeros((3, 7), dtype=torch.long))
    assert (c.new_tokens, c.slots, c.sequences) == (2 + 4 + 1, 12, 3)


def test_round_phases_sums_match_the_rows(smoke_dir):
    r = micro.round_phases(smoke_dir)
    rows = [json.loads(x) for x in (smoke_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [x for x in rows if x["round"] > 0]
    assert r["rows"] == len(rows) == 3 * 2 and r["rounds"] == [1, 2]
    assert r["clients"] == ["alice", "bob", "carol"]
    assert set(r["by_model"]) == {"tiny-llama", "tiny-gemma3"}
    assert r["by_model"]["tiny-llama"]["clients"] == ["alice", "carol"]
    assert {"train_private", "generate", "confidence", "embed_release", "train_final"} <= set(
        r["phases"])
    # every phase the client times is a known one, listed in round order
    assert r["phases"] == [p for p in micro.PHASE_ORDER if p in r["phases"]]
    for p in r["phases"]:
        values = [x["phase_seconds"].get(p, 0.0) for x in rows]
        assert r["totals_s"][p] == pytest.approx(math.fsum(values), abs=1e-9)
        per_model = sum(m["phases"][p]["total_s"] for m in r["by_model"].values())
        assert per_model == pytest.approx(r["totals_s"][p], abs=1e-9)
        for m in r["by_model"].values():
            s = m["phases"][p]
            assert s["min_s"] <= s["mean_s"] <= s["max_s"]
            assert s["mean_s"] == pytest.approx(s["total_s"] / m["rows"])
    assert r["phase_total_s"] == pytest.approx(sum(r["totals_s"].values()))
    # phase_seconds are rounded to ms; a row's "seconds" is their unrounded sum
    assert r["rows_seconds_total_s"] == pytest.approx(
        sum(x["seconds"] for x in rows), abs=1e-9)
    assert abs(r["rows_seconds_total_s"] - r["phase_total_s"]) <= 0.0005 * len(rows) * len(
        r["phases"])
    assert r["eval_total_s"] == pytest.approx(sum(x["eval_seconds"] for x in rows))
    assert sum(r["share"].values()) == pytest.approx(1.0)
    assert sum(r["share_with_eval"].values()) == pytest.approx(1.0)
    assert r["totals_s"]["train_private"] > 0 and r["eval_total_s"] > 0
    json.dumps(r, allow_nan=False)
    text = micro.format_markdown(r)
    assert "train_private" in text and "share of round" in text


def test_run_all_and_markdown(smoke_dir, embedder):
    r = micro.run_all(True, ["tiny-llama", "tiny-gemma3"], run_dir=smoke_dir,
                      embedder=embedder, options={
        "dp_sgd_step": {"reps": 2, "batch_size": 2, "max_length": 32},
        "embedding_throughput": {"n_texts": 16, "reps": 2},
        "generation_speed": {"prompts": 2, "max_new_tokens": 4, "reps": 1}})
    assert r["mode"] == "quick" and r["models"] == ["tiny-llama", "tiny-gemma3"]
    assert r["machine"]["torch_threads"] >= 1 and r["machine"]["load_average_at_end"]
    # the headline is the first model's (what `privsem bench` reads); the others follow
    assert r["dp_sgd_step"]["model"] == r["generation"]["model"] == "tiny-llama"
    assert math.isfinite(r["dp_sgd_step"]["ratio"]) and r["embedding"]["ratio"] > 0
    assert r["generation"]["tokens_per_second"] > 0
    [more] = r["more_models"]
    assert more["model"] == more["dp_sgd_step"]["model"] == more["generation"]["model"] == (
        "tiny-gemma3")
    assert r["round_phases"]["rows"] == 6
    assert r["failures"] == ([] if r["embedding"]["verdict"] == "PASS" else
                             ["embedding_throughput all-MiniLM-L6-v2"])
    json.dumps(r, allow_nan=False)
    text = micro.format_markdown(r)
    for needle in ("DP-SGD LoRA step", "Embedding throughput", "Generation", "Round time",
                   "tiny-llama", "tiny-gemma3", "n/a", "Goals:"):
        assert needle in text


def test_bad_input_names_the_value_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"'no-such-model'.*built-in.*tiny-llama"):
        micro.dp_sgd_step("no-such-model", quick=True)
    with pytest.raises(ValueError, match=r"'no-such-model'.*built-in"):
        micro.generation_speed("no-such-model", quick=True)
    with pytest.raises(ValueError, match=r"'no-such-model'"):
        micro.run_all(True, models=["no-such-model"])
    with pytest.raises(ValueError, match=r"options for \['dp_sgd'\] are not known"):
        micro.run_all(True, options={"dp_sgd": {}})
    with pytest.raises(ValueError, match=r"reps=0 .*integer >= 1"):
        micro.dp_sgd_step("tiny-llama", quick=True, reps=0)
    with pytest.raises(FileNotFoundError, match=r"does not exist.*privsem run"):
        micro.round_phases(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl not found.*privsem run"):
        micro.round_phases(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"round": 0, "client": "a", "phase_seconds": {}}) + "\n")
    with pytest.raises(ValueError, match=r"no completed training round.*rounds >= 1"):
        micro.round_phases(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl:1: not a JSON line"):
        micro.round_phases(tmp_path)
    with pytest.raises(ValueError, match=r"benchmark 'other' is not known"):
        micro.format_markdown({"benchmark": "other"})


def test_the_grid_phase_table_shows_every_timed_phase():
    """bench.md's time-by-phase table has a column for each phase a client times, the
    confidence and the mixed schedule's final phase included, with their mean seconds."""
    from privsem.bench.suite import PHASES, phase_table

    assert PHASES == micro.PHASE_ORDER
    phases = {"train_private": 4.0, "generate": 2.0, "confidence": 1.5, "embed_release": 0.1,
              "aggregate": 0.0, "train_final": 3.0}
    run = {"method": "semantic", "summary": {"wall_s_per_round": 11.0},
           "rounds": [{"phase_s": {"a": phases, "b": {**phases, "confidence": 2.5}}}]}
    cell = {"task": "knowledge", "federation": "homogeneous", "privacy": "none",
            "models": {"a": "m", "b": "m"}, "methods": {"semantic": run}}
    header, _, row = phase_table({"cells": [cell]}).splitlines()
    cols = [c.strip() for c in header.strip("|").split("|")]
    vals = [c.strip() for c in row.strip("|").split("|")]
    assert dict(zip(cols, vals, strict=True))["confidence"] == "2.0"
    assert dict(zip(cols, vals, strict=True))["train_final"] == "3.0"
